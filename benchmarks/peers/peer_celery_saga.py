# mypy: ignore-errors
# (it runs in a venv of its own, against celery-saga 0.1.1: not this project's types)
"""The peer ``celery-saga`` 0.1.1 (PyPI), for ``throughput.py --peers``: its app and driver.

Runs from a virtual environment of its own (it imports as ``celery_saga`` too), never
with this project on the path. ``python -m celery -A peer_celery_saga worker ...`` is its
worker; ``python peer_celery_saga.py`` its driver, which reads commands on stdin (``run
N``: start N sagas at once and wait for them; ``lat N``: N one at a time) and answers a
JSON line each. Its saga state lives in Redis (``RedisSagaBackend``, not durable).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from celery import Celery
from celery_saga.backends.redis import RedisSagaBackend

from celery_saga import Saga, saga_step, set_default_backend

STATE_URL = "redis://127.0.0.1:6379/7"
STEPS = int(os.environ.get("BENCH_STEPS", "3"))
FAILURE = os.environ.get("BENCH_FAILURE") == "1"

app = Celery("peer", broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/5"))
app.conf.update(task_default_queue="bench-peer", worker_prefetch_multiplier=4)
backend = RedisSagaBackend(url=STATE_URL)
set_default_backend(backend)


@app.task(name="peer.undo")
def undo(*args: Any, **kwargs: Any) -> None:
    """The compensation (runs on the failure path only)."""


@saga_step(compensate=undo)
@app.task(name="peer.step")
def step(**kwargs: Any) -> int:
    """The no-op step."""
    return 1


@saga_step(compensate=undo)
@app.task(name="peer.failing")
def failing(**kwargs: Any) -> int:
    """The step that fails: the steps before it are compensated."""
    raise RuntimeError("boom")


def bench_saga() -> Saga:
    built = Saga("bench")
    for index in range(STEPS):
        built.add_step(failing if FAILURE and index == STEPS - 1 else step)
    return built


OUTCOME = "compensated" if FAILURE else "completed"


def wait(ids: list[str], interval: float) -> None:
    pending = list(ids)
    client = backend._client
    deadline = time.monotonic() + 300
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit("peer celery-saga: timed out")
        values = client.mget([backend._key(saga_id) for saga_id in pending])
        pending = [
            saga_id
            for saga_id, value in zip(pending, values, strict=True)
            if value is None or json.loads(value)["status"] != OUTCOME
        ]
        if pending:
            time.sleep(interval)


def main() -> None:
    built = bench_saga()
    for line in sys.stdin:
        command, count = line.split()
        if command == "run":
            started = time.perf_counter()
            wait([built.run().saga_id for _ in range(int(count))], 0.05)
            print(json.dumps({"elapsed": time.perf_counter() - started}), flush=True)
        elif command == "lat":
            latencies = []
            for _ in range(int(count)):
                started = time.perf_counter()
                wait([built.run().saga_id], 0.001)
                latencies.append(time.perf_counter() - started)
            print(json.dumps({"latencies": latencies}), flush=True)


if __name__ == "__main__":
    main()
