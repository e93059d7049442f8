"""3-step saga vs plain 3-task Celery chain: same no-op tasks, same worker, one run.

    python benchmarks/throughput.py [--count 2000] [--rounds 4] [--latency 200]

Needs Redis (broker, and result backend for the plain chains) and PostgreSQL (the saga
store): it creates the database ``celery_saga_bench``. It starts one worker
(prefork, 2 processes) serving both kinds, then alternates rounds of plain chains and
sagas (``count / rounds`` of each per round), each round submitted at once and waited
for. Throughput is items finished per second of wall time, from first submit to last
finish. Latency is measured separately, one item at a time, from ``apply_async`` to
``get()`` returning.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

HERE = Path(__file__).resolve().parent
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
STORE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/celery_saga_bench"


def fresh_database() -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("DROP DATABASE IF EXISTS celery_saga_bench WITH (FORCE)"))
        connection.execute(text("CREATE DATABASE celery_saga_bench"))
    admin.dispose()


def start_worker(log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(HERE), "BENCH_STORE": STORE_URL}
    command = [sys.executable, "-m", "celery", "-A", "bench_app", "worker", "-P", "prefork",
               "-c", "2", "-Q", "bench", "-l", "WARNING", "--without-gossip",
               "--without-mingle", "--without-heartbeat"]  # fmt: skip
    with log.open("wb") as out:
        worker = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    return worker


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="items of each kind")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument("--latency", type=int, default=200, help="sequential items of each")
    options = parser.parse_args()

    fresh_database()
    os.environ["BENCH_STORE"] = STORE_URL
    sys.path.insert(0, str(HERE))
    from bench_app import app, noop, step  # noqa: PLC0415

    from celery import chain
    from celery_saga import saga
    from celery_saga._runtime import get_store
    from celery_saga.store.schema import sagas

    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge("bench")
    store = get_store(app)
    store.ensure_schema()
    log = Path("/tmp/celery_saga_bench_worker.log")
    worker = start_worker(log)
    try:
        # Warm up both paths (and wait for the worker to be up).
        chain(noop.s(0), noop.s(), noop.s()).apply_async().get(timeout=120)
        saga(step.s(0), step.s(), step.s(), name="bench").apply_async().get(timeout=120)

        per_round = options.count // options.rounds
        plain_time = saga_time = 0.0
        plain_lat: list[float] = []
        saga_lat: list[float] = []
        for number in range(options.rounds):
            started = time.perf_counter()
            results = [chain(noop.s(0), noop.s(), noop.s()).apply_async()
                       for _ in range(per_round)]  # fmt: skip
            for result in results:
                result.get(timeout=300)
            plain_time += time.perf_counter() - started

            started = time.perf_counter()
            ids = [saga(step.s(0), step.s(), step.s(), name="bench").apply_async().id
                   for _ in range(per_round)]  # fmt: skip
            query = select(func.count()).where(sagas.c.id.in_(ids),
                                               sagas.c.status == "COMPLETED")  # fmt: skip
            while True:
                with store.engine.connect() as connection:
                    if connection.execute(query).scalar() == len(ids):
                        break
                time.sleep(0.02)
            saga_time += time.perf_counter() - started
            print(f"round {number + 1}: plain {per_round / plain_time * (number + 1):.1f}/s "
                  f"saga {per_round / saga_time * (number + 1):.1f}/s (running means)",
                  flush=True)  # fmt: skip

        for _ in range(options.latency):
            started = time.perf_counter()
            chain(noop.s(0), noop.s(), noop.s()).apply_async().get(timeout=60)
            plain_lat.append(time.perf_counter() - started)
            started = time.perf_counter()
            saga(step.s(0), step.s(), step.s(), name="bench").apply_async().get(timeout=60)
            saga_lat.append(time.perf_counter() - started)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)

    total = per_round * options.rounds
    plain_rate = total / plain_time
    saga_rate = total / saga_time
    print()
    print(f"items of each kind: {total} (3 no-op steps each), worker prefork x2, Redis broker, "
          f"PostgreSQL saga store, Redis result backend for the plain chains")  # fmt: skip
    print(f"{'':14}{'per s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for label, rate, lat in (("plain chain", plain_rate, plain_lat), ("saga", saga_rate, saga_lat)):
        print(f"{label:14}{rate:>10.1f}{statistics.median(lat) * 1000:>10.1f}"
              f"{percentile(lat, 0.95) * 1000:>10.1f}")  # fmt: skip
    print(f"saga / plain throughput: {saga_rate / plain_rate:.2f}x")


if __name__ == "__main__":
    main()
