"""Chaos: 1,000 sagas over Redis and RabbitMQ with the faults we know of, all at once.

Steps fail for good (1 in 4) or transiently (retried by their ``RetryPolicy``),
compensations fail once, the worker and its pool processes are ``kill -9``ed, the
PostgreSQL store is cut off for 10 s (a TCP proxy the test controls), and on Redis the
broker, a ``redis-server`` of the test's own, is restarted empty. Afterwards every saga
must have ended as its plan says, checked against the ledger the steps write themselves
(not only the saga tables): a fault delays a saga, it never changes how it ends.
"""

from __future__ import annotations

import contextlib
import json
import random
import resource
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import make_url

from celery_saga import (
    SagaRecord,
    SagaResult,
    SagaStatus,
    SagaStoreError,
    StepRecord,
    StepStatus,
    recover,
)
from tests.scenarios import new_id
from tests.support.app import StepFailure
from tests.support.chaos import (
    RETRY,
    RedisServer,
    WorkerProcess,
    register_chaos_tasks,
    require_binary,
)
from tests.support.envs import SagaEnv, broker_env
from tests.support.proxy import TcpProxy
from tests.support.services import RABBITMQ_URL, require

pytestmark = pytest.mark.postgres

SAGAS = 500  # per broker: 1,000 over the two
RATE = 15.0  # sagas started per second (while the store and the broker let us): the worker
# (2 processes on 2 cores) keeps up with it with room to spare, so that what the faults
# cost shows, not an overload
LEASE = 3.0  # saga_step_lease
# saga_recovery_stall: longer than the store retries a 10 s cut makes (a message whose
# first try fails as the cut begins comes back 1, 2, 4, 8 s later: 15 s after it), as in
# production (300 s against at most 30 s); shorter, and the sweep re-sends every saga the
# cut caught before its own retry comes back, and the store-retry path goes untested
STALL = 20.0
SWEEP_EVERY = 1.0  # seconds between two recover(app) calls of the test's sweep thread
VISIBILITY = 10.0  # Redis visibility_timeout: a kill -9'd unacked message comes back
RESTORE = {"unacked_restore_interval": 1, "unacked_restore_throttle": 2}  # ...within 2 s more
STORE_CUT = 10.0  # seconds the proxy refuses and drops every store connection
BROKER_DOWN = 2.0  # seconds the test's redis-server is down when it restarts it
WAIT = 120.0  # seconds, after the last start and the last fault, for every saga to end
PLAIN, RETRYING = "chaos.step", "chaos.retry_step"
STEP_FAILURE = f"{StepFailure.__module__}.{StepFailure.__qualname__}"

#: (seconds after the first start, fault); each broker gets all that apply to it. The
#: starts take about SAGAS / RATE + STORE_CUT = 43 s: the last fault comes near their end.
SCHEDULE: list[tuple[float, str]] = [
    (3.0, "kill worker"),
    (8.0, "kill pool process"),
    (11.0, "cut store"),
    (15.0, "kill pool process"),  # while the store is cut off
    (11.0 + STORE_CUT, "restore store"),
    (28.0, "restart broker"),  # Redis: the test's own redis-server
    (38.0, "kill worker"),
]


@dataclass(frozen=True)
class PlannedStep:
    index: int
    task: str  # PLAIN or RETRYING
    fail: bool  # fails for good (a RETRYING step: on every attempt)
    flakes: int = 0  # RETRYING: its first attempts that fail transiently

    @property
    def runs(self) -> int:
        """How often its body runs when nothing else goes wrong."""
        if self.task == PLAIN:
            return 1
        return RETRY.attempts if self.fail else self.flakes + 1


@dataclass
class Planned:
    saga_id: str
    steps: list[PlannedStep]

    @property
    def failing(self) -> int | None:
        """The index of the step that fails for good (the saga is then compensated)."""
        return next((s.index for s in self.steps if s.fail), None)

    @property
    def kind(self) -> str:
        retrying = any(s.task == RETRYING and s.flakes for s in self.steps[: self.ran])
        flaky = " with a transiently failing retry step" if retrying else ""
        if self.failing is None:
            return f"completes{flaky}"
        how = "retry step" if self.steps[self.failing].task == RETRYING else "step"
        return f"compensated ({how} {self.failing} fails){flaky}"

    @property
    def ran(self) -> int:
        """How many of its steps run."""
        return len(self.steps) if self.failing is None else self.failing + 1


def _plan(env: SagaEnv, rng: random.Random) -> tuple[Any, Planned]:
    """3-5 steps; 3 in 10 with a retry policy, most of those failing once or twice first;
    a plain step fails with probability 1/4, a retry step for good with 1/10."""
    steps: list[PlannedStep] = []
    signatures = []
    for index in range(rng.randint(3, 5)):
        if rng.random() < 0.3:
            step = PlannedStep(index, RETRYING, rng.random() < 0.1, rng.choice((1, 2)))
            extra: dict[str, Any] = {"flakes": step.flakes}
        else:
            step = PlannedStep(index, PLAIN, rng.random() < 0.25)
            extra = {}
        steps.append(step)
        kwargs = {
            "index": index,
            "fail": step.fail,
            "pause": rng.uniform(0.0, 0.03),  # a window to be killed in
            "undo_fails": rng.choice((0, 0, 1)),  # a third of the undos fail once
            **extra,
        }
        signatures.append(env.app.signature(step.task, kwargs=kwargs, immutable=True))
    return env.saga(*signatures, name=env.name), Planned(new_id(), steps)


def _start(saga: Any, planned: Planned, refused: Counter[str]) -> None:
    """What a caller does when the store or the broker is away: try again, same saga id."""
    deadline = time.monotonic() + 60
    while True:
        try:
            saga.apply_async(saga_id=planned.saga_id)
            return
        except SagaStoreError:
            refused["starts refused: store unreachable"] += 1
        except (BrokerError, redis.exceptions.ConnectionError):
            refused["starts refused: broker unreachable"] += 1
        assert time.monotonic() < deadline, f"saga {planned.saga_id} not started in 60 s"
        time.sleep(0.5)


@contextmanager
def _sweeper(env: SagaEnv) -> Iterator[Counter[str]]:
    """recover(app) every SWEEP_EVERY seconds, as the beat task would; counts what it did."""
    counts: Counter[str] = Counter()
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(SWEEP_EVERY):
            try:
                counts.update(r.action for r in recover(env.app) if r.action != "none")
            except Exception:  # the store or the broker is away: the next sweep tries again
                counts["sweeps failed"] += 1

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join()


@dataclass
class Fault:
    what: str
    at: float  # seconds after the first start
    over: float  # when it was over: the kill itself, the store back, the broker answering


@dataclass
class Chaos:
    """Runs the schedule in a thread of its own, while the test starts sagas."""

    schedule: list[tuple[float, str]]
    began: float  # time.monotonic() of the first start
    worker: WorkerProcess
    proxy: TcpProxy
    broker: RedisServer | None
    faults: list[Fault] = field(default_factory=list)
    worker_back: list[float] = field(default_factory=list)  # a new worker ready, after a kill
    error: BaseException | None = None
    stopped: threading.Event = field(default_factory=threading.Event)

    def now(self) -> float:
        return time.monotonic() - self.began

    def run(self) -> None:
        try:
            for at, what in self.schedule:
                if self.stopped.wait(max(0.0, at - self.now())):
                    return  # the test is over (it failed)
                self.do(what)
        except BaseException as exc:  # re-raised by the test
            self.error = exc

    @contextmanager
    def running(self) -> Iterator[Chaos]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stopped.set()
            thread.join()

    def do(self, what: str) -> None:
        at = self.now()
        if what == "kill worker":
            self.worker.kill()
            self.faults.append(Fault(what, at, at))
            self.worker.start()
            self.worker_back.append(self.now())
        elif what == "kill pool process":
            child = self.worker.kill_child()
            self.faults.append(Fault(f"{what} {child}", at, at))
        elif what == "cut store":
            self.proxy.cut()
            self.faults.append(Fault(what, at, at))  # over: when "restore store" runs
        elif what == "restore store":
            self.proxy.restore()
            cut = next(f for f in reversed(self.faults) if f.what == "cut store")
            cut.over = at
        elif what == "restart broker":
            assert self.broker is not None
            self.broker.restart(BROKER_DOWN)
            self.faults.append(Fault(what, at, self.now()))
        else:
            raise AssertionError(f"unknown fault {what!r}")

    @property
    def kills(self) -> int:
        return sum(f.what.startswith("kill") for f in self.faults)


def _wait_until_all_end(env: SagaEnv, planned: list[Planned], timeout: float) -> list[str]:
    """Wait for every saga to be terminal; the ids of those that are not after ``timeout``."""
    deadline = time.monotonic() + timeout
    running = [p.saga_id for p in planned]
    while running and time.monotonic() < deadline:
        with contextlib.suppress(SagaStoreError):
            running = [i for i in running if not SagaResult(i, app=env.app).status.is_terminal]
        time.sleep(0.5)
    return running


@dataclass
class Seen:
    """One saga as the store and the ledger hold it after the run."""

    planned: Planned
    record: SagaRecord | None
    steps: list[StepRecord]
    ledger: Counter[tuple[str, str]]

    @property
    def status(self) -> SagaStatus | None:
        return None if self.record is None else self.record.status

    def describe(self) -> str:
        record = self.record
        plan = [
            (s.index, s.task, "fails" if s.fail else f"flakes {s.flakes}" if s.flakes else "ok")
            for s in self.planned.steps
        ]
        steps = [
            (s.index, s.status.value, s.attempts, s.compensation_attempts,
             s.error and f"{s.error['type']}: {s.error['message']}")
            for s in self.steps
        ]  # fmt: skip
        error = record and record.error and f"{record.error['type']}: {record.error['message']}"
        return (
            f"saga {self.planned.saga_id}: plan (index, task, what it does) {plan}\n"
            f"    stored: {record.status if record else None}, error {error}, "
            f"failed_step {record.failed_step if record else None}\n"
            f"    steps (index, status, attempts, compensation attempts, error): {steps}\n"
            f"    ledger: {dict(self.ledger)}"
        )


def _violations(seen: Seen) -> list[str]:
    """What is wrong with one saga, against its plan (nothing: an empty list)."""
    planned, record = seen.planned, seen.record
    if record is None or not record.status.is_terminal:
        return ["not terminal"]
    wrong = []
    failing = planned.failing
    if failing is None:
        expected, applied = SagaStatus.COMPLETED, set(range(len(planned.steps)))
    else:
        expected, applied = SagaStatus.COMPENSATED, set(range(failing))
    if record.status is not expected:
        wrong.append(f"planned {expected.value}, ended {record.status.value}")
    if failing is not None:
        error = record.error or {}
        if (error.get("type"), error.get("message")) != (STEP_FAILURE, f"step {failing} failed"):
            wrong.append("error is not the failing step's own")
        if record.failed_step != failing:
            wrong.append("failed_step is not the failing step")
    effects = {key: n for key, n in seen.ledger.items() if key[0] in ("do", "undo")}
    if any(n != 1 for n in effects.values()):
        wrong.append("an effect applied or undone more than once")
    done = {int(tag) for (action, tag) in effects if action == "do"}
    undone = {int(tag) for (action, tag) in effects if action == "undo"}
    if done != applied:
        wrong.append("effects applied not as planned")
    if undone != (applied if failing is not None else set()):
        wrong.append("effects undone not as planned")
    if any(s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING) for s in seen.steps):
        wrong.append("a step RUNNING or COMPENSATING in a finished saga")
    return wrong


def _collect(env: SagaEnv, planned: list[Planned]) -> list[Seen]:
    ids = {p.saga_id for p in planned}
    ledgers: dict[str, Counter[tuple[str, str]]] = {i: Counter() for i in ids}
    for entry in env.ledger.entries():
        if entry.saga_id in ids:
            ledgers[entry.saga_id][(entry.action, entry.tag)] += 1
    seen = []
    for p in planned:
        result = SagaResult(p.saga_id, app=env.app)
        seen.append(Seen(p, result.record, result.steps, ledgers[p.saga_id]))
    return seen


def _figures(seen: list[Seen]) -> Counter[str]:
    figures: Counter[str] = Counter(str(s.status.value if s.status else None).lower() for s in seen)
    for s in seen:
        for step in s.planned.steps[: s.planned.ran]:
            runs = s.ledger[("attempt", str(step.index))]
            figures["step bodies run"] += runs
            figures["of them more than planned"] += max(0, runs - step.runs)
            if step.task == RETRYING and not step.fail:
                figures["transient failures retried"] += min(runs - 1, step.flakes)
        undone = sum(n for (action, _), n in s.ledger.items() if action == "undo")
        tries = sum(n for (action, _), n in s.ledger.items() if action == "undo-attempt")
        figures["compensation attempts failed and retried"] += tries - undone
    return figures


def _report(seen: list[Seen]) -> str:
    """Every violation: how many sagas of which kind, and examples with their step rows."""
    by_violation: dict[str, list[Seen]] = {}
    for s in seen:
        for violation in _violations(s):
            by_violation.setdefault(violation, []).append(s)
    lines, examples = [], {}
    for violation, sagas in sorted(by_violation.items(), key=lambda item: -len(item[1])):
        kinds = dict(Counter(s.planned.kind for s in sagas))
        named = ", ".join(s.planned.saga_id for s in sagas[:3])
        lines.append(f"- {violation}: {len(sagas)} sagas {kinds}; for example {named}")
        examples.update((s.planned.saga_id, s) for s in sagas[:3])
    if examples:
        wrong = sum(1 for s in seen if _violations(s))
        lines.insert(0, f"{wrong} of {len(seen)} sagas not as planned:")
        lines += ["the sagas named above:", *(s.describe() for s in examples.values())]
    return "\n".join(lines)


def _settings(broker: str) -> str:
    redis = f", visibility_timeout {VISIBILITY:g} s, {RESTORE}" if broker == "redis" else ""
    return (
        f"saga_step_lease {LEASE:g} s, saga_recovery_stall {STALL:g} s, "
        f"recover(app) every {SWEEP_EVERY:g} s{redis}; one prefork worker of 2 processes"
    )


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def test_chaos(broker: str, postgres_url: str, worker_logs: Path) -> None:
    """Through transient step failures, kill -9s, a 10 s store cut and a broker restart,
    every saga ends as planned, each effect applied once and undone once."""
    if broker == "redis":  # a redis-server of the test's own, to restart
        server: RedisServer | None = RedisServer(
            require_binary("redis-server"), worker_logs / "chaos-redis-server.log"
        )
    else:
        require("rabbitmq")
        server = None
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    rng = random.Random(20261121)
    conf: dict[str, Any] = {"saga_step_lease": LEASE, "saga_recovery_stall": STALL}
    if server is not None:
        conf["broker_transport_options"] = {"visibility_timeout": VISIBILITY, **RESTORE}
    target = make_url(postgres_url)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    store_url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    schedule = [(at, what) for at, what in SCHEDULE if server or what != "restart broker"]
    planned: list[Planned] = []
    refused: Counter[str] = Counter()
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    with ExitStack() as stack:
        if server is not None:
            server.start()
            stack.callback(server.stop)
        url = server.url if server is not None else RABBITMQ_URL
        stack.enter_context(proxy.running())
        # the saga store goes through the proxy; the steps' own ledger does not
        env = stack.enter_context(
            broker_env(f"chaos-{broker}", url, store_url, postgres_url, queue, **conf)
        )
        register_chaos_tasks(env.app)
        worker = WorkerProcess(
            url, store_url, postgres_url, queue, worker_logs, f"chaos-{broker}",
            extra_env={"SAGA_TEST_CONF": json.dumps(conf)},
        )  # fmt: skip
        worker.start()
        stack.callback(worker.stop)
        swept = stack.enter_context(_sweeper(env))
        began = time.monotonic()
        with Chaos(schedule, began, worker, proxy, server).running() as chaos:
            for _ in range(SAGAS):  # at RATE, or slower while starts are refused (no catching up)
                saga, plan = _plan(env, rng)
                _start(saga, plan, refused)
                planned.append(plan)
                time.sleep(1.0 / RATE)
            started = time.monotonic() - began
            while chaos.schedule[-1][0] > chaos.now() and chaos.error is None:
                time.sleep(0.1)  # the rest of the schedule
        if chaos.error is not None:
            raise chaos.error
        running = _wait_until_all_end(env, planned, WAIT)
        waited = time.monotonic() - began
        seen = _collect(env, planned)
    figures = _figures(seen)
    ends = [s.record.finished_at for s in seen if s.record and s.record.finished_at]
    last = max(chaos.faults, key=lambda f: f.over)
    wall = time.time() - (time.monotonic() - began)  # time.time() at the first start
    if running:
        ended = f"{len(running)} sagas not terminal {waited - last.over:.1f} s after it"
    else:
        at = max(ends, default=datetime.now(UTC)).timestamp() - wall
        ended = f"all terminal at {at:.1f} s, {at - last.over:.1f} s after it"
    faults = ", ".join(f"{f.what} at {f.at:.1f}-{f.over:.1f} s" for f in chaos.faults)
    print(
        f"\nchaos on {broker}: {SAGAS} sagas started in {started:.1f} s; {_settings(broker)}\n"
        f"faults: {faults}; a new worker ready at "
        f"{', '.join(f'{t:.1f}' for t in chaos.worker_back)} s\n"
        f"last fault over at {last.over:.1f} s ({last.what}); {ended}\n"
        f"{dict(figures)}\n{dict(refused)}, sweep: {dict(swept)}; "
        f"test process CPU {sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu:.1f} s"
    )
    assert chaos.kills == sum(what.startswith("kill") for _, what in schedule)
    assert refused["starts refused: store unreachable"] > 0  # the cut did reach the producer
    report = _report(seen)
    assert not report, f"chaos on {broker}: sagas not as planned\n{report}"
