"""Lifecycle signals: the right events, in order, with their payloads; receivers can't hurt."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import group

import celery_saga
from celery_saga import SagaCompensated, SagaStatus, signals
from celery_saga.dispatch import publish
from celery_saga.signals import SagaEvent, StepEvent
from tests.scenarios import new_id
from tests.support.envs import SagaEnv, sqlite_thread_env

ALL = [name for name in signals.__all__ if not name[0].isupper()]


@dataclass
class Seen:
    signal: str
    sender: str
    event: Any


class Capture:
    """Every lifecycle signal sent in this process, in order."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._receivers = {name: self._receiver(name) for name in ALL}

    def _receiver(self, name: str) -> Any:
        def receive(sender: Any = None, event: Any = None, **_: Any) -> None:
            with self._lock:
                self.seen.append(Seen(name, sender, event))

        return receive

    def connect(self) -> None:
        for name, receiver in self._receivers.items():
            getattr(signals, name).connect(receiver, weak=False)

    def disconnect(self) -> None:
        for name, receiver in self._receivers.items():
            getattr(signals, name).disconnect(receiver)

    def of(self, saga_id: str, wait_for: str | None = None) -> list[Seen]:
        deadline = time.monotonic() + 10
        while True:
            with self._lock:
                mine = [s for s in self.seen if s.event.saga_id == saga_id]
            if wait_for is None or any(s.signal == wait_for for s in mine):
                # saga_started is sent by the producer after it published the first step:
                # a worker thread can send step_started before it. Order across threads is
                # not defined, so it is put first; each thread's own order is kept.
                return sorted(mine, key=lambda s: s.signal != "saga_started")
            assert time.monotonic() < deadline, f"no {wait_for}: {[s.signal for s in mine]}"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEnv]:
    with sqlite_thread_env(tmp_path_factory.mktemp("signals"), "signals") as env:
        yield env


@pytest.fixture
def capture() -> Iterator[Capture]:
    capture = Capture()
    capture.connect()
    yield capture
    capture.disconnect()


def test_completed_saga_events(env: SagaEnv, capture: Capture) -> None:
    """A completed saga sends started, each step's start and success, then completed."""
    result = env.saga(env.sig("act", 1, tag="a"), env.sig("act", tag="b"), name="order")
    saga_id = result.apply_async(saga_id=new_id()).id
    seen = capture.of(saga_id, wait_for="saga_completed")
    assert [s.signal for s in seen] == [
        "saga_started",
        "step_started", "step_succeeded",
        "step_started", "step_succeeded",
        "saga_completed",
    ]  # fmt: skip
    assert {s.sender for s in seen if s.signal.startswith("saga")} == {"order"}
    assert {s.sender for s in seen if s.signal.startswith("step")} == {"shop.act"}
    steps = [s.event for s in seen if s.signal == "step_succeeded"]
    assert [(e.step_index, e.step_name, e.attempt) for e in steps] == [
        (0, "shop.act", 1), (1, "shop.act", 1),
    ]  # fmt: skip
    assert all(isinstance(e, StepEvent) and e.saga_name == "order" for e in steps)
    assert all(e.duration is not None and e.duration >= 0 for e in steps)
    end = seen[-1].event
    assert isinstance(end, SagaEvent)
    assert end.status is SagaStatus.COMPLETED
    assert end.duration is not None
    assert end.duration > 0


def test_compensated_saga_events(env: SagaEnv, capture: Capture) -> None:
    """A failing step is reported, then each compensation, newest first, then compensated."""
    steps = (env.sig("act", tag="a"), env.sig("act", tag="b"), env.sig("act", tag="c", fail=True))
    saga_id = env.saga(*steps, name="order").apply_async(saga_id=new_id()).id
    seen = capture.of(saga_id, wait_for="saga_compensated")
    assert [s.signal for s in seen] == [
        "saga_started",
        "step_started", "step_succeeded",
        "step_started", "step_succeeded",
        "step_started", "step_failed",
        "compensation_started", "compensation_succeeded",
        "compensation_started", "compensation_succeeded",
        "saga_compensated",
    ]  # fmt: skip
    failed = next(s.event for s in seen if s.signal == "step_failed")
    assert failed.step_index == 2
    assert failed.reason == "error"
    assert failed.error["message"] == "c failed"
    undone = [s for s in seen if s.signal == "compensation_succeeded"]
    assert [s.event.step_index for s in undone] == [1, 0]
    assert {s.sender for s in undone} == {"shop.undo"}
    assert all(s.event.saga_name == "order" for s in undone)
    end = seen[-1].event
    assert end.status is SagaStatus.COMPENSATED
    assert end.failed_step == 2
    assert end.error["type"] == "tests.support.app.StepFailure"


def test_first_step_failure_ends_with_compensated(env: SagaEnv, capture: Capture) -> None:
    """With nothing to undo, the failing step's worker sends saga_compensated itself."""
    saga_id = env.saga(env.sig("act", tag="a", fail=True)).apply_async(saga_id=new_id()).id
    seen = capture.of(saga_id, wait_for="saga_compensated")
    names = [s.signal for s in seen]
    assert names == ["saga_started", "step_started", "step_failed", "saga_compensated"]


def test_gave_up_compensation_events(env: SagaEnv, capture: Capture) -> None:
    """Each failed attempt is reported (retry, then gave up) and the saga ends failed."""
    steps = (env.sig("act", tag="a", fail_undo=-1), env.sig("act", tag="b", fail=True))
    saga_id = env.saga(*steps).apply_async(saga_id=new_id()).id
    seen = capture.of(saga_id, wait_for="saga_failed")
    failures = [s.event for s in seen if s.signal == "compensation_failed"]
    assert [(e.attempt, e.reason) for e in failures] == [(1, "retry"), (2, "retry"), (3, "gave up")]
    assert seen[-1].event.status is SagaStatus.FAILED


def test_retried_and_skipped_steps(env: SagaEnv, capture: Capture) -> None:
    """A Celery retry is reported as step_retried; a replayed step as step_skipped (done)."""
    result = env.saga(env.sig("flaky", tag="f", fail_times=1)).apply_async(saga_id=new_id())
    capture.of(result.id, wait_for="saga_completed")
    publish(env.app, result.id, result.record.plan)  # type: ignore[union-attr]
    seen = capture.of(result.id, wait_for="step_skipped")
    retried = [s.event for s in seen if s.signal == "step_retried"]
    assert [(e.attempt, e.reason) for e in retried] == [(1, "retry")]
    skipped = next(s.event for s in seen if s.signal == "step_skipped")
    assert skipped.reason == "done"


def test_soft_time_limit_is_reported_as_timed_out(env: SagaEnv, capture: Capture) -> None:
    """A step stopped by its soft time limit sends step_timed_out, then step_failed."""
    saga_id = env.saga(env.sig("act", tag="t", soft_timeout=True)).apply_async(saga_id=new_id()).id
    seen = capture.of(saga_id, wait_for="saga_compensated")
    names = [s.signal for s in seen]
    assert names[names.index("step_timed_out") + 1] == "step_failed"
    assert next(s.event for s in seen if s.signal == "step_timed_out").reason == "timeout"


def test_broken_receivers_change_nothing(env: SagaEnv) -> None:
    """Receivers that raise on every signal are logged and the sagas end as they would."""

    def broken(**_: Any) -> None:
        raise RuntimeError("receiver bug")

    for name in ALL:
        getattr(signals, name).connect(broken, weak=False)
    try:
        done = env.saga(env.sig("act", 1, tag="a"), env.sig("act", tag="b")).apply_async()
        assert done.get(timeout=20) == {"tag": "b", "args": [{"tag": "a", "args": [1]}]}
        undone = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b", fail=True))
        result = undone.apply_async()
        with pytest.raises(SagaCompensated):
            result.get(timeout=20)
        assert env.ledger.count("undo", "a", result.id) == 1
    finally:
        for name in ALL:
            getattr(signals, name).disconnect(broken)


def test_group_members_report_like_steps(env: SagaEnv, capture: Capture) -> None:
    """Each member of a group sends its own start and success; the saga completes once."""
    result = env.saga(
        env.sig("act", tag="a"), group(env.sig("act", tag="b"), env.sig("act", tag="c")),
        name="order",
    )  # fmt: skip
    saga_id = result.apply_async(saga_id=new_id()).id
    seen = capture.of(saga_id, wait_for="saga_completed")
    succeeded = sorted(s.event.step_index for s in seen if s.signal == "step_succeeded")
    assert succeeded == [0, 1, 2]
    assert sum(s.signal == "step_started" for s in seen) == 3
    assert [s.signal for s in seen if s.signal.startswith("saga")] == [
        "saga_started", "saga_completed"
    ]  # fmt: skip


def test_a_wait_reports_waiting_the_signal_and_its_end(env: SagaEnv, capture: Capture) -> None:
    """A saga at a wait sends saga_waiting, then signal_received and wait_ended."""
    result = env.saga(env.sig("act", tag="a"), celery_saga.wait_for("ok"), name="order")
    started = result.apply_async(saga_id=new_id())
    capture.of(started.id, wait_for="saga_waiting")
    started.signal("ok", {"x": 1})
    seen = capture.of(started.id, wait_for="saga_completed")
    names = [s.signal for s in seen]
    assert names.index("saga_waiting") < names.index("signal_received")
    ended = next(s.event for s in seen if s.signal == "wait_ended")
    assert (ended.step_index, ended.reason) == (1, "signal")
    assert ended.duration is not None
