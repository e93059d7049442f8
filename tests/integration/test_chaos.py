"""Chaos: hundreds of sagas, random step failures, flaky compensations, ``kill -9`` of the
worker mid-run; afterwards every saga ended and the ledger shows each effect once, undone
exactly once where the saga was compensated."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from celery_saga import SagaResult, SagaStatus, recover
from tests.scenarios import new_id
from tests.support.envs import SagaEnv, broker_env, worker_process
from tests.support.services import RABBITMQ_URL, REDIS_URL, require

pytestmark = pytest.mark.postgres

SAGAS = 300
KILLS = 3
RATE = 25.0  # sagas started per second
LEASE = 3.0
STALL = 5.0
CONF = {"saga_step_lease": LEASE}


@dataclass
class Planned:
    result: SagaResult
    steps: int
    failing: int | None  # index of the step that fails, if one does


def _plan(env: SagaEnv, rng: random.Random) -> tuple[Any, int, int | None]:
    """3-5 steps, each failing with probability 1/4 (the first failure ends the saga)."""
    count = rng.randint(3, 5)
    fails = [rng.random() < 0.25 for _ in range(count)]
    failing = fails.index(True) if any(fails) else None
    steps = [
        env.app.signature(
            "chaos.step",
            kwargs={
                "index": index,
                "fail": fails[index],
                "pause": rng.uniform(0.0, 0.03),
                "undo_fails": rng.choice((0, 0, 1)),  # a third fail once, transiently
            },
            immutable=True,
        )
        for index in range(count)
    ]
    return env.saga(*steps, name="chaos"), count, failing


@contextmanager
def _sweeper(env: SagaEnv) -> Iterator[list[int]]:
    """recover() every second, as the beat task would; yields how many sagas it moved."""
    moved: list[int] = []
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(Exception):  # the next sweep tries again
                moved.append(sum(r.action != "none" for r in recover(env.app, stalled_after=STALL)))

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    try:
        yield moved
    finally:
        stop.set()
        thread.join()


def _dump(env: SagaEnv, p: Planned) -> None:
    """Fail with what the store and the ledger hold of one saga."""
    saga = p.result.record
    steps = [
        (s.index, s.status.value, s.attempts, s.compensation_attempts, s.error)
        for s in p.result.steps
    ]
    ledger = [(e.action, e.tag) for e in env.ledger.entries(p.result.id)]
    raise AssertionError(
        f"saga {p.result.id} (failing step {p.failing}): "
        f"{saga.status if saga else None}, error {saga.error if saga else None}\n"
        f"steps (index, status, attempts, compensation attempts, error): {steps}\n"
        f"ledger: {ledger}"
    )


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def test_chaos(broker: str, postgres_url: str, worker_logs: Path) -> None:
    """300 sagas, 1/4 of steps failing, flaky undos, 3 kill -9s: all end, effects exactly once."""
    require(broker)
    url = REDIS_URL if broker == "redis" else RABBITMQ_URL
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    rng = random.Random(20261121)
    extra = {"SAGA_TEST_CONF": json.dumps(CONF)}
    planned: list[Planned] = []
    started = time.monotonic()
    with ExitStack() as stack:
        env = stack.enter_context(
            broker_env("chaos", url, postgres_url, postgres_url, queue, **CONF)
        )

        def start_worker(number: int) -> Any:
            log = worker_logs / f"chaos-{broker}-{number}.log"
            return stack.enter_context(
                worker_process(url, postgres_url, postgres_url, queue, log, extra_env=extra)
            )

        worker = start_worker(0)
        moved = stack.enter_context(_sweeper(env))
        kill_at = {SAGAS * (k + 1) // (KILLS + 1) for k in range(KILLS)}
        for number in range(SAGAS):
            if number in kill_at:  # mid-run: steps and compensations are in flight
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
                worker = start_worker(number)
            saga, count, failing = _plan(env, rng)
            planned.append(Planned(saga.apply_async(saga_id=new_id()), count, failing))
            time.sleep(1.0 / RATE)
        deadline = time.monotonic() + 240
        store_statuses = {}
        while time.monotonic() < deadline:
            store_statuses = {p.result.id: p.result.status for p in planned}
            if all(status.is_terminal for status in store_statuses.values()):
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        ledger = env.ledger.entries()

    unfinished = [i for i, s in store_statuses.items() if not s.is_terminal]
    assert not unfinished, f"{len(unfinished)} sagas did not end: {unfinished[:5]}"
    by_saga: dict[str, Counter[tuple[str, str]]] = {}
    for entry in ledger:
        by_saga.setdefault(entry.saga_id, Counter())[(entry.action, entry.tag)] += 1
    completed = compensated = reran = undo_failures = 0
    for p in planned:
        seen = by_saga.get(p.result.id, Counter())
        done = {tag for (action, tag), n in seen.items() if action == "do"}
        undone = {tag for (action, tag), n in seen.items() if action == "undo"}
        effects = [n for (action, _), n in seen.items() if action in ("do", "undo")]
        assert all(n == 1 for n in effects), f"{p.result.id}: an effect twice: {seen}"
        reran += sum(n - 1 for (action, _), n in seen.items() if action == "attempt")
        undo_failures += sum(n for (a, _), n in seen.items() if a == "undo-attempt") - len(undone)
        if p.failing is None:  # every step applied, nothing undone
            expected = (SagaStatus.COMPLETED, set(map(str, range(p.steps))), set())
            completed += 1
        else:  # the steps before the failing one applied, and each undone once
            applied = set(map(str, range(p.failing)))
            expected = (SagaStatus.COMPENSATED, applied, applied)
            compensated += 1
        if (store_statuses[p.result.id], done, undone) != expected:
            _dump(env, p)
    print(
        f"\nchaos on {broker}: {SAGAS} sagas ({completed} completed, {compensated} "
        f"compensated), {KILLS} kill -9, {reran} step bodies re-run after a kill, "
        f"{undo_failures} compensation attempts failed and were retried, "
        f"{sum(moved)} recoveries by the sweep, {elapsed:.1f} s"
    )
