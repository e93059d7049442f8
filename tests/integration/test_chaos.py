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
from sqlalchemy import func, make_url, select

from celery_saga import SagaResult, SagaStatus, SagaStoreError, recover
from celery_saga._runtime import get_store
from celery_saga.store.schema import sagas
from tests.scenarios import new_id
from tests.support.envs import SagaEnv, broker_env, worker_process
from tests.support.proxy import TcpProxy
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
    return env.saga(*steps, name=env.name), count, failing


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


def _wait_until_all_end(planned: list[Planned], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        running = [p.result.id for p in planned if not p.result.status.is_terminal]
        if not running:
            return
        assert time.monotonic() < deadline, f"{len(running)} sagas did not end: {running[:5]}"
        time.sleep(0.5)


def _check(env: SagaEnv, planned: list[Planned]) -> Counter[str]:
    """Each saga as planned: all applied, or what applied undone once; no effect twice."""
    by_saga: dict[str, Counter[tuple[str, str]]] = {}
    for entry in env.ledger.entries():
        by_saga.setdefault(entry.saga_id, Counter())[(entry.action, entry.tag)] += 1
    figures: Counter[str] = Counter()
    for p in planned:
        seen = by_saga.get(p.result.id, Counter())
        done = {tag for (action, tag) in seen if action == "do"}
        undone = {tag for (action, tag) in seen if action == "undo"}
        effects = [n for (action, _), n in seen.items() if action in ("do", "undo")]
        assert all(n == 1 for n in effects), f"{p.result.id}: an effect twice: {seen}"
        figures["step bodies re-run"] += sum(
            n - 1 for (action, _), n in seen.items() if action == "attempt"
        )
        figures["compensation attempts failed and retried"] += sum(
            n for (action, _), n in seen.items() if action == "undo-attempt"
        ) - len(undone)
        if p.failing is None:  # every step applied, nothing undone
            expected = (SagaStatus.COMPLETED, set(map(str, range(p.steps))), set())
        else:  # the steps before the failing one applied, and each undone once
            applied = set(map(str, range(p.failing)))
            expected = (SagaStatus.COMPENSATED, applied, applied)
        status = p.result.status
        if (status, done, undone) != expected:
            _dump(env, p)
        figures[status.value.lower()] += 1
    return figures


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
        _wait_until_all_end(planned)
        elapsed = time.monotonic() - started
    figures = _check(env, planned)
    assert figures["completed"] + figures["compensated"] == SAGAS
    print(f"\nchaos on {broker}: {SAGAS} sagas, {KILLS} kill -9, {dict(figures)}, "
          f"{sum(moved)} recoveries by the sweep, {elapsed:.1f} s")  # fmt: skip


@pytest.mark.redis
def test_store_outage(postgres_url: str, worker_logs: Path) -> None:
    """The store unreachable for 4 s mid-run: no saga lost or stuck, nothing half-written."""
    require("redis")
    queue = f"outage-{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    target = make_url(postgres_url)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    store_url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    extra = {"SAGA_TEST_CONF": json.dumps(CONF)}
    planned: list[Planned] = []
    refused = 0
    log = worker_logs / "outage.log"
    with (
        proxy.running(),
        # the steps' own ledger stays reachable: only the saga store goes away
        broker_env("outage", REDIS_URL, store_url, postgres_url, queue, **CONF) as env,
        worker_process(REDIS_URL, store_url, postgres_url, queue, log, extra_env=extra),
        _sweeper(env) as moved,
    ):
        for number in range(SAGAS // 3):
            if number == SAGAS // 6:
                proxy.cut()
                threading.Timer(4.0, proxy.restore).start()
            saga, count, failing = _plan(env, rng)
            saga_id = new_id()
            while True:  # what a caller does when the store is down: try again, same id
                try:
                    planned.append(Planned(saga.apply_async(saga_id=saga_id), count, failing))
                    break
                except SagaStoreError:
                    refused += 1
                    time.sleep(0.5)
            time.sleep(1.0 / RATE)
        _wait_until_all_end(planned)
        figures = _check(env, planned)  # the store is reached through the proxy
        with get_store(env.app).engine.connect() as connection:
            stored = connection.execute(
                select(func.count()).select_from(sagas).where(sagas.c.name == "outage")
            ).scalar()
    assert refused > 0  # the outage did reach the producer
    assert stored == len(planned)  # no saga stored that the caller gave up on
    print(f"\nstore outage: {len(planned)} sagas, {refused} starts refused, {dict(figures)}, "
          f"{sum(moved)} recoveries by the sweep")  # fmt: skip
