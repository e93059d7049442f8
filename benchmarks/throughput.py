"""3-step saga vs plain 3-task Celery chain: same no-op tasks, same worker, one run.

    python benchmarks/throughput.py [--count 2000] [--rounds 10] [--latency 200]
    python benchmarks/throughput.py --shape group [--failure] [...]
    python benchmarks/throughput.py --steps 10 [--concurrency 4] [--store sqlite]
                                    [--broker rabbitmq] [--failure] [--json FILE] [...]

``--steps N``: a saga of N steps against an N-task chain (with ``--failure`` the last
fails and the N - 1 before it are compensated; the plain chain's last task fails and a
hand-written ``link_error`` chain of N - 1 tasks runs). ``--concurrency``: the worker's
prefork processes. ``--store sqlite``: the saga store is a SQLite file (WAL) instead of
PostgreSQL. ``--broker rabbitmq``: both kinds go through RabbitMQ on 127.0.0.1:5672
(the plain chains still keep their results in Redis). The bytes of the first message
of each kind (its body and headers as JSON: what the broker carries) are printed too.

``--json FILE`` also writes the run's figures (each kind's rate, ratio and median of the
rounds' ratios, p50/p95, CPU per item by role, first message bytes; the latency hops;
what the sagas did) as JSON, which ``matrix.py`` reads.

``--peers`` runs two other libraries in the same rounds, each from a virtual environment
of its own under /tmp (made on first use with pip): ``celery-saga`` 0.1.1 (it imports
as ``celery_saga`` too, so never in this project's venv; its own worker, the same
broker, its state in Redis) and DBOS (a workflow of the same no-op steps on the same
PostgreSQL, called directly: no broker, no worker); see ``peers/``. Line shape only.

``--shape group`` compares the saga ``a -> group(b, c, d) -> e`` with the same shape in
plain Celery, ``chain(a, chord(group(b, c, d), e))`` (the chord joined in the Redis
result backend); with ``--failure`` member c fails for good: the saga compensates b, d
(those that ran) and a; the plain chord's body carries a hand-written errback
(``bench_app.undo_group``) that does the same from the members' stored states.

Needs Redis (broker, and result backend for the plain chains) and PostgreSQL (the saga
store): it creates the database ``celery_saga_bench``. It starts one worker (prefork,
2 processes unless ``--concurrency``) serving both kinds, warms it up with a burst of
each kind (every process then has its connections), then alternates rounds of plain
chains and sagas (``count / rounds`` of each per round); each round is submitted at once
and waited for.

Throughput: items finished per second of wall time, first submit to last finish, over
all rounds; the median of the per-round ratios is printed too (this box is a VM whose
speed drifts, which alternating rounds cancel out). CPU: seconds of CPU per item, by
process (this script, the worker and its children, PostgreSQL, Redis, RabbitMQ), from
/proc.
Latency: one item at a time, from ``apply_async`` until its outcome is visible where
each kind keeps it (the chain's last result in the Redis result backend, the saga's
status in the saga table, read as ``SagaResult.get`` reads it), both polled every
millisecond. On the success path of a line, the saga's latency is then split by hop
from the steps' timestamps (:func:`latency_hops`).

Both kinds are waited for by polling their stores rather than with
``AsyncResult.get()``: the Redis result backend's pub/sub wait can miss a result that
is already stored and hang (seen here in one 4 x 500 run). A poll asks only about the
items not seen finished yet, so that waiting costs little and alike for both.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text

HERE = Path(__file__).resolve().parent
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASE = "celery_saga_bench"
STORE_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}"
SQLITE_FILE = Path("/tmp/celery_saga_bench.sqlite3")
SQLITE_URL = f"sqlite:///{SQLITE_FILE}"
BROKERS = {
    "redis": "redis://127.0.0.1:6379/5",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}


PEERS = Path("/tmp/celery_saga_bench_peers")
PEER_APPS = HERE / "peers"


class Peer:
    """Another library, driven from its own venv: ``run N`` and ``lat N`` on its stdin."""

    def __init__(self, name: str, packages: list[str], script: str, worker: bool) -> None:
        self.name = name
        self.packages = packages
        self.script = script
        self.worker = worker
        self.venv = PEERS / name.replace(" ", "-")
        self.processes: list[subprocess.Popen[Any]] = []
        self.driver: subprocess.Popen[str] | None = None

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def install(self) -> None:
        if not (self.venv / "installed").exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
            subprocess.run([self.python, "-m", "pip", "install", "-q", *self.packages], check=True)
            (self.venv / "installed").write_text("\n".join(self.packages))

    def env(self, options: argparse.Namespace) -> dict[str, str]:
        # never this project on its path: the peer may import as celery_saga too
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return {**env, "BENCH_STEPS": str(options.steps),
                "BENCH_FAILURE": "1" if options.failure else "0"}  # fmt: skip

    def start(self, options: argparse.Namespace) -> None:
        env = self.env(options)
        if self.worker:
            command = [self.python, "-m", "celery", "-A", self.script, "worker", "-P",
                       "prefork", "-c", str(options.concurrency), "-Q", "bench-peer",
                       "-l", "WARNING", "--without-gossip", "--without-mingle",
                       "--without-heartbeat"]  # fmt: skip
            with Path(f"/tmp/celery_saga_bench_{self.script}.log").open("wb") as log:
                self.processes.append(
                    subprocess.Popen(command, env=env, cwd=PEER_APPS, stdout=log, stderr=log)
                )
        self.driver = subprocess.Popen(
            [self.python, f"{self.script}.py"], env=env, cwd=PEER_APPS, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        self.processes.append(self.driver)

    def ask(self, command: str) -> Any:
        assert self.driver is not None
        assert self.driver.stdin is not None
        assert self.driver.stdout is not None
        self.driver.stdin.write(command + "\n")
        self.driver.stdin.flush()
        while True:
            line = self.driver.stdout.readline()
            if not line:
                raise SystemExit(f"peer {self.name} stopped (see /tmp/celery_saga_bench_*.log)")
            answer = json.loads(line)
            if "ready" not in answer:
                return answer

    def run(self, count: int) -> None:
        self.ask(f"run {count}")

    def latencies(self, count: int) -> list[float]:
        return list(self.ask(f"lat {count}")["latencies"])

    def stop(self) -> None:
        driver = self.driver
        for process in reversed(self.processes):
            if driver is not None and process is driver and driver.stdin is not None:
                driver.stdin.close()  # the driver's end: it stops DBOS, or just exits
            else:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(timeout=60)


def make_peers() -> list[Peer]:
    import celery

    return [
        Peer("celery-saga 0.1.1", ["celery-saga==0.1.1", f"celery[redis]=={celery.__version__}"],
             "peer_celery_saga", worker=True),
        Peer("DBOS 3.4.0", ["dbos==3.4.0", "psycopg[binary]"], "peer_dbos", worker=False),
    ]  # fmt: skip


def fresh_database(store: str) -> str:
    """A new, empty saga store; its URL."""
    if store == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{SQLITE_FILE}{suffix}").unlink(missing_ok=True)
        return SQLITE_URL
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("DROP DATABASE IF EXISTS celery_saga_bench WITH (FORCE)"))
        connection.execute(text("CREATE DATABASE celery_saga_bench"))
        # the DBOS peer's (it creates it again)
        connection.execute(text("DROP DATABASE IF EXISTS celery_saga_bench_dbos WITH (FORCE)"))
    admin.dispose()
    return STORE_URL


def other_workers() -> list[str]:
    """The pids of benchmark workers already running (they would take this run's messages)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"bench_app" in command and b"worker" in command:
            found.append(pid)
    return found


def start_worker(log: Path, concurrency: int) -> subprocess.Popen[bytes]:
    # The worker imports the library the client does: the same PYTHONPATH after this
    # directory, and a working directory (first on a `python -m`'s path) with no other.
    # (BENCH_STORE and BENCH_BROKER are in the environment, set by main.)
    path = os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "PYTHONPATH": path}
    command = [sys.executable, "-m", "celery", "-A", "bench_app", "worker", "-P", "prefork",
               "-c", str(concurrency), "-Q", "bench", "-l", "WARNING", "--without-gossip",
               "--without-mingle", "--without-heartbeat"]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=HERE, stdout=out, stderr=subprocess.STDOUT)


def wait_until(done: Callable[[], bool], interval: float, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for results: is the worker running?")
        time.sleep(interval)


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by the processes that do the work, grouped by role."""
    groups: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(pid) == os.getpid():
            role = "client"
        elif "bench_app" in command:
            role = "worker"
        elif command.startswith("postgres"):
            # A client backend's title is "postgres: <cluster>: <user> <database> <host>
            # <state>": leave out those of other databases (another engineer's tests on
            # the same server; one that exits mid-round would make the sum negative).
            title = command.split(": ", 2)[-1].split()
            client = len(title) >= 3 and (title[2].endswith(")") or title[2] == "[local]")
            if client and title[1] not in (DATABASE, f"{DATABASE}_dbos"):
                continue
            role = "postgres"
        elif "redis-server" in command:
            role = "redis"
        elif "beam.smp" in command and "rabbit" in command:
            role = "rabbitmq"
        elif "peer_celery_saga" in command:  # a peer's worker, or its driver
            role = "worker" if " worker " in command else "client"
        elif "peer_dbos" in command:  # runs its workflows in its own threads
            role = "worker"
        else:
            continue
        groups[role] = groups.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return groups


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class FirstMessage:
    """The bytes of the first task message published while connected (body + headers).

    Measured as kombu's JSON serializer writes them, in the client, before the broker.
    """

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, body: Any = None, headers: Any = None, **_: Any) -> None:
        from kombu.utils.json import dumps

        self.sizes.append(len(dumps(body)) + len(dumps(headers)))

    def of(self, start: Callable[[], object]) -> int:
        from celery.signals import before_task_publish

        self.sizes.clear()
        before_task_publish.connect(self, weak=False)
        try:
            start()
        finally:
            before_task_publish.disconnect(self)
        return self.sizes[0]


def latency_hops(
    engine: Any, steps: Any, timed: list[tuple[str, float, float]]
) -> dict[str, float]:
    """Where the latency runs' time went, from the step rows' timestamps (one clock).

    A step's ``started_at`` is taken as its claim is sent, its ``finished_at`` as its
    result's record is: "to the first claim" is the saga's insert, its first message and
    the worker's pick-up; "claim to record" the claim's round trip, the body and the
    step's own work; "record to the next claim" the record's round trip, the next
    message and its pick-up; "last record to seen" the commit and the poll.
    """
    c = steps.c
    ids = [saga_id for saga_id, _, _ in timed]
    query = select(c.saga_id, c.idx, c.started_at, c.finished_at).where(c.saga_id.in_(ids))
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(c.saga_id, c.idx)).all()
    by_saga: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        by_saga.setdefault(row.saga_id, []).append(  # (naive UTC, as stored)
            (row.started_at.replace(tzinfo=UTC).timestamp(),
             row.finished_at.replace(tzinfo=UTC).timestamp())
        )  # fmt: skip
    first, run, between, last = [], [], [], []
    for saga_id, submitted, seen in timed:
        times = by_saga[saga_id]
        first.append(times[0][0] - submitted)
        run += [end - start for start, end in times]
        between += [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(times)]
        last.append(seen - times[-1][1])
    hops = {"to the first claim": statistics.median(first),
            "claim to record": statistics.median(run)}  # fmt: skip
    if between:
        hops["record to the next claim"] = statistics.median(between)
    hops["last record to seen"] = statistics.median(last)
    return hops


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="items of each kind")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds")
    parser.add_argument("--latency", type=int, default=200, help="sequential items of each")
    parser.add_argument(
        "--failure",
        action="store_true",
        help="the failure path: the 3rd step fails, the 2 before are compensated (the "
        "plain chain's 3rd task fails and a hand-written link_error chain of 2 tasks runs); "
        "with --shape group: member c fails, b, d and a are compensated",
    )
    parser.add_argument(
        "--shape",
        choices=("line", "group"),
        default="line",
        help="line: a -> b -> c (a plain chain); group: a -> group(b, c, d) -> e (plain: "
        "chain(a, chord(group(b, c, d), e)), the chord joined in the Redis result backend)",
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="line: steps per saga and tasks per chain"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--store", choices=("postgres", "sqlite"), default="postgres", help="the saga store"
    )
    parser.add_argument(
        "--broker", choices=tuple(BROKERS), default="redis", help="the broker of both kinds"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run celery-saga 0.1.1 and DBOS in the same rounds, each from a venv of "
        f"its own under {PEERS} (made with pip on first use)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the run's figures to FILE as JSON (what matrix.py reads)",
    )
    options = parser.parse_args()
    grouped = options.shape == "group"
    if options.steps < 1 or (options.failure and options.steps < 2):
        parser.error("--steps takes 1 or more (2 or more with --failure)")
    if grouped and (options.steps != 3 or options.peers):
        parser.error("--steps and --peers are for --shape line")
    peers = make_peers() if options.peers else []
    for peer in peers:
        peer.install()

    running = other_workers()
    if running:  # (a profiler's leftover, or a run cut short: they would skew this one)
        raise SystemExit(
            f"benchmark workers already running (pids {', '.join(running)}): "
            "stop them first, e.g. pkill -f 'bench_app worker'"
        )
    os.environ["BENCH_STORE"] = fresh_database(options.store)
    os.environ["BENCH_BROKER"] = BROKERS[options.broker]
    sys.path.insert(0, str(HERE))
    from bench_app import app, boom, failing, noop, step, undo_group, undo_plain
    from celery import chain, chord, group, uuid

    import celery_saga
    from celery_saga import saga
    from celery_saga._runtime import get_store
    from celery_saga.store.schema import saga_steps, sagas

    print(f"celery_saga from {Path(celery_saga.__file__).parent}", flush=True)

    # (RabbitMQ: no such queue yet, nothing to purge)
    with app.connection_for_write() as connection, contextlib.suppress(Exception):
        connection.default_channel.queue_purge("bench")  # type: ignore[attr-defined]
    store = get_store(app)
    store.ensure_schema()
    backend: Any = app.backend  # the Redis result backend: .client, .get_key_for_task
    redis = backend.client

    length = options.steps

    def start_line() -> str:
        if not options.failure:
            tasks = [noop.s(0), *(noop.s() for _ in range(length - 1))]
            return str((chain(*tasks) if length > 1 else tasks[0]).apply_async().id)
        last = undo_plain.si().set(task_id=uuid())  # its result says the undoing is over
        plain = chain(noop.s(0), *(noop.s() for _ in range(length - 2)), boom.s())
        undos = [*(undo_plain.si() for _ in range(length - 2)), last]
        plain.link_error(chain(*undos) if len(undos) > 1 else last)
        plain.apply_async()
        return str(last.id)

    def start_chord() -> str:
        members = [noop.s(), boom.s() if options.failure else noop.s(), noop.s()]
        ids = [uuid() for _ in members]
        body = noop.s().set(task_id=uuid())
        finished = str(body.id)
        if options.failure:  # the undo of a: its result says the undoing is over
            finished = uuid()
            body.link_error(undo_group.s(members=ids, last=finished))
        header = [member.set(task_id=task_id) for member, task_id in zip(members, ids, strict=True)]
        chain(noop.s(0), chord(header, body)).apply_async()
        return finished

    outcome = "COMPENSATED" if options.failure else "COMPLETED"
    middle = failing if options.failure else step

    def start_line_saga() -> str:
        steps = [step.s(0), *(step.s() for _ in range(length - 2))]
        if length > 1:
            steps.append(middle.s())
        return saga(*steps, name="bench").apply_async().id

    def start_group_saga() -> str:
        members = group(step.s(), middle.s(), step.s())
        return saga(step.s(0), members, step.s(), name="bench").apply_async().id

    start_chain = start_chord if grouped else start_line
    start_saga = start_group_saga if grouped else start_line_saga

    def chains_done(ids: list[str]) -> Callable[[], bool]:
        pending = {backend.get_key_for_task(task_id) for task_id in ids}

        def done() -> bool:
            keys = list(pending)
            pipeline = redis.pipeline()
            for key in keys:
                pipeline.exists(key)
            pending.difference_update(
                k for k, found in zip(keys, pipeline.execute(), strict=True) if found
            )
            return not pending

        return done

    def sagas_done(ids: list[str]) -> Callable[[], bool]:
        pending = set(ids)

        def done() -> bool:
            query = select(sagas.c.id).where(
                sagas.c.id.in_(list(pending)), sagas.c.status == outcome
            )
            with store.engine.connect() as connection:
                pending.difference_update(connection.execute(query).scalars())
            return not pending

        return done

    def saga_seen(saga_id: str) -> Callable[[], bool]:
        """One saga's end, polled as ``SagaResult.get`` polls: one autocommit statement."""
        return lambda: store.get_status(saga_id) == outcome

    if peers:  # the celery-saga peer's state, and queue
        import redis as redis_module

        redis_module.Redis.from_url("redis://127.0.0.1:6379/7").flushdb()
        with app.connection_for_write() as connection, contextlib.suppress(Exception):
            connection.default_channel.queue_purge("bench-peer")  # type: ignore[attr-defined]
    worker = start_worker(Path("/tmp/celery_saga_bench_worker.log"), options.concurrency)
    for peer in peers:
        peer.start(options)
    try:
        for peer in peers:  # warm up, and wait for its worker
            peer.run(1)
        measure = FirstMessage()
        first_id = ""

        def first_chain() -> None:
            nonlocal first_id
            first_id = start_chain()

        def first_saga() -> None:
            nonlocal first_id
            first_id = start_saga()

        # warm up, wait for the worker, and measure the first message of each kind
        chain_bytes = measure.of(first_chain)
        wait_until(chains_done([first_id]), 0.1)
        saga_bytes = measure.of(first_saga)
        wait_until(sagas_done([first_id]), 0.1)
        # then a burst of each, so that every worker process has made its connections
        # (a child's first saga step makes its store: ~0.2 s, once)
        burst = 10 * options.concurrency
        wait_until(chains_done([start_chain() for _ in range(burst)]), 0.05)
        wait_until(sagas_done([start_saga() for _ in range(burst)]), 0.05)

        per_round = options.count // options.rounds
        plain_time = saga_time = 0.0
        ratios: list[float] = []
        cpu: dict[str, dict[str, float]] = {"plain": {}, "saga": {}}
        cpu.update({peer.name: {} for peer in peers})
        peer_time = {peer.name: 0.0 for peer in peers}
        peer_ratios: dict[str, list[float]] = {peer.name: [] for peer in peers}
        peer_lat: dict[str, list[float]] = {peer.name: [] for peer in peers}

        def timed(kind: str, run: Callable[[], None]) -> float:
            before = cpu_seconds()
            started = time.perf_counter()
            run()
            elapsed = time.perf_counter() - started
            for role, seconds in cpu_seconds().items():
                cpu[kind][role] = cpu[kind].get(role, 0.0) + seconds - before.get(role, 0.0)
            return elapsed

        for number in range(1, options.rounds + 1):
            plain = timed("plain", lambda: wait_until(
                chains_done([start_chain() for _ in range(per_round)]), 0.05))  # fmt: skip
            sagas_ = timed("saga", lambda: wait_until(
                sagas_done([start_saga() for _ in range(per_round)]), 0.05))  # fmt: skip
            plain_time += plain
            saga_time += sagas_
            ratios.append(plain / sagas_)
            said = ""
            for peer in peers:
                took = timed(peer.name, lambda peer=peer: peer.run(per_round))  # type: ignore[misc]
                peer_time[peer.name] += took
                peer_ratios[peer.name].append(plain / took)
                said += f", {peer.name} {per_round / took:.1f}/s"
            print(f"round {number}: plain {per_round / plain:.1f}/s, "
                  f"saga {per_round / sagas_:.1f}/s, ratio {plain / sagas_:.2f}{said}",
                  flush=True)  # fmt: skip

        plain_lat: list[float] = []
        saga_lat: list[float] = []
        timed_sagas: list[tuple[str, float, float]] = []  # id, submitted, seen (time.time)
        for _ in range(options.latency):
            started = time.perf_counter()
            wait_until(chains_done([start_chain()]), 0.001, timeout=60)
            plain_lat.append(time.perf_counter() - started)
            started, submitted = time.perf_counter(), time.time()
            saga_id = start_saga()
            wait_until(saga_seen(saga_id), 0.001, timeout=60)
            saga_lat.append(time.perf_counter() - started)
            timed_sagas.append((saga_id, submitted, time.time()))
        for peer in peers:
            peer_lat[peer.name] = peer.latencies(options.latency)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        for peer in peers:
            peer.stop()

    total = per_round * options.rounds
    print()
    if grouped:
        what = "a -> group(b, c, d) -> e, no-op steps"
        path = "c failing, b, d and a compensated" if options.failure else "all succeeding"
        plain_label = "plain chord"
    else:
        what = f"{length} no-op step{'s' if length > 1 else ''} each"
        undone = f"{length - 1} compensation{'s' if length > 2 else ''}"
        path = f"the last failing, {undone}" if options.failure else "all succeeding"
        plain_label = "plain chain"
    broker = {"redis": "Redis", "rabbitmq": "RabbitMQ"}[options.broker]
    store_name = {"postgres": "PostgreSQL", "sqlite": "SQLite"}[options.store]
    print(f"{total} of each kind, {what} ({path}); one worker, prefork "
          f"x{options.concurrency}; {broker} broker; saga store {store_name}; "
          f"plain results in Redis")  # fmt: skip
    roles = ["client", "worker", "postgres", "redis"]
    if options.broker == "rabbitmq":
        roles.append("rabbitmq")
    # each kind's figures: what is printed here, and what --json writes
    measured: list[tuple[str, str, float, list[float], list[float] | None, int | None]] = [
        ("plain", plain_label, plain_time, plain_lat, None, chain_bytes),
        ("saga", "saga", saga_time, saga_lat, ratios, saga_bytes),
    ]
    measured += [
        (peer.name, peer.name, peer_time[peer.name], peer_lat[peer.name],
         peer_ratios[peer.name], None)
        for peer in peers
    ]  # fmt: skip
    kinds = {
        kind: {
            "label": label,
            "per_second": total / took,
            "ratio": plain_time / took,  # (its rate over the plain chain's)
            "median_ratio": None if rounds is None else statistics.median(rounds),
            "round_ratios": rounds,
            "p50_ms": statistics.median(lat) * 1000,
            "p95_ms": percentile(lat, 0.95) * 1000,
            "cpu_ms": {role: cpu[kind].get(role, 0.0) / total * 1000 for role in roles},
            "first_message_bytes": size,
        }
        for kind, label, took, lat, rounds, size in measured
    }
    print(f"{'':18}{'per s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for seen in kinds.values():
        print(f"{seen['label']:18}{seen['per_second']:>10.1f}{seen['p50_ms']:>10.1f}"
              f"{seen['p95_ms']:>10.1f}")  # fmt: skip
    for kind, seen in kinds.items():
        if kind != "plain":
            of = f" of {len(ratios)} rounds" if kind == "saga" else ""
            print(f"{kind} / plain throughput: {seen['ratio']:.2f}x overall, "
                  f"{seen['median_ratio']:.2f}x median{of}")  # fmt: skip
    print("CPU ms per item: " + ", ".join(
        f"{kind} " + " ".join(f"{role} {ms:.1f}" for role, ms in seen["cpu_ms"].items())
        + f" = {sum(seen['cpu_ms'].values()):.1f}"
        for kind, seen in kinds.items()))  # fmt: skip
    print(f"bytes of the first message: {plain_label} {chain_bytes}, saga {saga_bytes}")
    hops: dict[str, float] = {}
    if not grouped and not options.failure and timed_sagas:
        hops = latency_hops(store.engine, saga_steps, timed_sagas)
        print("saga latency by hop, median ms: " + ", ".join(
            f"{name} {value * 1000:.2f}" for name, value in hops.items()))  # fmt: skip
    # What the sagas did, from the store: a step the saga refused to start (it was
    # compensating already) has no started_at, and so nothing to compensate.
    with store.engine.connect() as db:
        count = db.execute(select(func.count()).select_from(sagas)).scalar_one()
        ran, undone = db.execute(
            select(
                func.count(saga_steps.c.started_at), func.sum(saga_steps.c.compensation_attempts)
            )
        ).one()
    print(f"sagas' work (all {count} of the run, from the store): {ran / count:.2f} steps "
          f"started and {(undone or 0) / count:.2f} compensations run per saga")  # fmt: skip
    if options.json is not None:
        figures = {
            "arguments": {
                k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()
            },
            "items": total,
            "kinds": kinds,
            "hops_ms": {name: value * 1000 for name, value in hops.items()},
            "steps_started_per_saga": ran / count,
            "compensations_per_saga": (undone or 0) / count,
        }
        options.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
