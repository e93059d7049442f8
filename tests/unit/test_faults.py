"""Faults never change an outcome: store outages, lost workers, failed publishes, bad values."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import update

from celery_saga import (
    SagaCompensated,
    SagaStatus,
    SagaStoreError,
    StepStatus,
    _heartbeat,
    recover,
    signals,
)
from celery_saga import worker as worker_module
from celery_saga._runtime import get_store
from celery_saga.dispatch import COMPENSATE_TASK, step_signatures
from celery_saga.machine import IN_DOUBT
from celery_saga.store.schema import sagas
from celery_saga.worker import check_store
from tests.scenarios import new_id
from tests.support.envs import SagaEnv, sqlite_thread_env

TIMEOUT = 30


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEnv]:
    folder = tmp_path_factory.mktemp("faults")
    with sqlite_thread_env(folder, "faults", saga_step_lease=1.0) as env:
        yield env


@pytest.fixture
def outage(env: SagaEnv, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, int], list[int]]:
    """Make the store's ``method`` raise SagaStoreError on its first ``times`` calls."""

    def cut(method: str, times: int) -> list[int]:
        store = get_store(env.app)
        real = getattr(store, method)
        calls: list[int] = []

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) <= times:
                raise SagaStoreError(f"saga store is down ({method})")
            return real(*args, **kwargs)

        monkeypatch.setattr(store, method, failing)
        return calls

    return cut


def _lose_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Saga.apply_async stores the saga but sends nothing (as if the producer died)."""
    from celery_saga import canvas

    monkeypatch.setattr(canvas, "publish_stage", lambda *a, **kw: None)


def test_store_outage_does_not_spend_the_retry_policy(
    env: SagaEnv, outage: Callable[[str, int], list[int]]
) -> None:
    """Claims retried while the store is down leave a step's RetryPolicy its full attempts."""
    calls = outage("claim_step", 3)
    result = env.saga(env.sig("insist", tag="i", fail_times=2)).apply_async(saga_id=new_id())
    assert result.get(timeout=TIMEOUT) == "i"
    assert len(calls) >= 6  # 3 refused claims, then attempts 1, 2 and 3
    assert env.ledger.count("do", "i", result.id) == 3
    assert result.steps[0].attempts == 3


def test_store_outage_when_recording_does_not_run_the_body_again(
    env: SagaEnv, outage: Callable[[str, int], list[int]]
) -> None:
    """A result the store could not take is recorded by the next delivery; the body ran once."""
    outage("complete_step", 2)
    result = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b")).apply_async(
        saga_id=new_id()
    )
    value = result.get(timeout=TIMEOUT)
    assert value["args"][0] == {"tag": "a", "args": []}
    assert env.ledger.count("do", "a", result.id) == 1
    assert [s.attempts for s in result.steps] == [1, 1]


def test_compensated_saga_keeps_its_own_steps_error(
    env: SagaEnv, outage: Callable[[str, int], list[int]]
) -> None:
    """With the store down while a failure is recorded, the saga's error is the step's own."""
    outage("fail_step", 1)
    result = env.saga(env.sig("act", tag="a"), env.sig("insist", tag="i", fatal=True)).apply_async(
        saga_id=new_id()
    )
    with pytest.raises(SagaCompensated) as raised:
        result.get(timeout=TIMEOUT)
    assert raised.value.step_index == 1
    assert raised.value.error["type"] == "ValueError"
    assert raised.value.error["message"] == "i: bad input"
    record = result.record
    assert record is not None
    assert (record.failed_step, record.error["type"]) == (1, "ValueError")  # type: ignore[index]
    assert env.ledger.count("do", "i", result.id) == 1
    assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["a"]


def test_sweep_goes_on_past_a_saga_it_cannot_send(
    env: SagaEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saga whose message cannot be built is compensated with that error; the rest recover."""
    _lose_messages(monkeypatch)
    broken = env.saga(env.sig("echo", tag="x")).apply_async(saga_id=new_id())
    store = get_store(env.app)
    plan = dict(store.get_saga(broken.id).plan)  # type: ignore[union-attr]
    plan["steps"] = [{**plan["steps"][0], "task": "shop.two_args"}]  # a task it does not fit
    with store.engine.begin() as connection:
        connection.execute(update(sagas).where(sagas.c.id == broken.id).values(plan=plan))
    healthy = [env.saga(env.sig("act", tag=f"h{n}")).apply_async(saga_id=new_id()) for n in (1, 2)]
    monkeypatch.undo()
    reports = {r.saga_id: r for r in recover(env.app, stalled_after=0)}
    assert reports[broken.id].action == "error"
    assert "cannot be built" in (reports[broken.id].error or "")
    assert all(reports[h.id].action == "forward" for h in healthy)
    for h in healthy:
        assert h.get(timeout=TIMEOUT)["tag"].startswith("h")
    with pytest.raises(SagaCompensated, match="TypeError"):
        broken.get(timeout=TIMEOUT)


def test_lost_worker_during_a_cancel_is_in_doubt_and_undone(env: SagaEnv) -> None:
    """A step whose worker died while the saga was cancelled is in doubt, undone, never RUNNING."""
    result = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b", sleep=3)).apply_async(
        saga_id=new_id()
    )
    _wait(lambda: env.ledger.count("do", "b", result.id) == 1)
    store = get_store(env.app)
    # the worker running step 1 dies: its claim stays, its heartbeat stops
    _heartbeat.forget(env.app, result.id)
    assert result.cancel("stop it")
    store.expire_leases(result.id)
    (report,) = recover(env.app, result.id, stalled_after=3600)
    assert report.action == "in doubt"
    with pytest.raises(SagaCompensated, match="stop it"):
        result.get(timeout=TIMEOUT)
    steps = result.steps
    assert [s.status for s in steps] == [StepStatus.COMPENSATED, StepStatus.COMPENSATED]
    assert steps[1].error is not None
    assert steps[1].error["type"] == IN_DOUBT
    assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["b", "a"]


def test_lease_is_renewed_while_a_long_step_runs(env: SagaEnv) -> None:
    """A step running three times its lease is not taken over by the sweep: it runs once."""
    result = env.saga(env.sig("act", tag="long", sleep=3.0)).apply_async(saga_id=new_id())
    stop = threading.Event()

    def sweep() -> None:
        while not stop.is_set():
            recover(env.app, result.id, stalled_after=0)
            time.sleep(0.2)

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    try:
        assert result.get(timeout=TIMEOUT)["tag"] == "long"
    finally:
        stop.set()
        sweeper.join()
    assert env.ledger.count("do", "long", result.id) == 1
    assert result.steps[0].attempts == 1


def test_resume_force_takes_over_a_step_whose_owner_is_dead(
    env: SagaEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resume() leaves a live claim alone; resume(force=True) sends the step again."""
    _lose_messages(monkeypatch)
    result = env.saga(env.sig("act", tag="f")).apply_async(saga_id=new_id())
    claim = get_store(env.app).claim_step(
        result.id, 0, uuid.uuid4().hex, (), {"tag": "f"}, 600,
        stage=0, task="shop.act", compensate="shop.undo",
    )  # fmt: skip
    assert claim.attempt == 1
    assert result.resume().action == "none"
    report = result.resume(force=True)
    assert (report.action, report.steps) == ("forward", (0,))
    assert result.get(timeout=TIMEOUT)["tag"] == "f"
    assert result.steps[0].attempts == 2


@pytest.mark.parametrize("poison", ["nul", "surrogate"])
def test_result_the_store_cannot_keep_fails_the_step(env: SagaEnv, poison: str) -> None:
    """A step returning text the store refuses fails (the saga compensates), never a store error."""
    result = env.saga(env.sig("act", tag="a"), env.sig("echo", tag="e", poison=poison)).apply_async(
        saga_id=new_id()
    )
    with pytest.raises(SagaCompensated, match="SagaValidationError") as raised:
        result.get(timeout=TIMEOUT)
    assert raised.value.step_index == 1
    assert env.ledger.count("do", "e", result.id) == 1
    assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["a"]


def test_failed_publish_after_a_recorded_success_waits_for_the_sweep(
    env: SagaEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the next step cannot be sent, nothing is compensated: the sweep sends it."""
    real = worker_module.send_next
    failures: list[str] = []

    def broken_broker(task: Any, result: Any) -> None:
        if not failures:
            failures.append(task.name)
            raise OperationalError("broker is down")
        real(task, result)

    monkeypatch.setattr(worker_module, "send_next", broken_broker)
    result = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b")).apply_async(
        saga_id=new_id()
    )
    _wait(lambda: failures and result.steps[0].status is StepStatus.SUCCEEDED)
    time.sleep(0.3)
    assert result.status is SagaStatus.RUNNING
    assert [s.status for s in result.steps] == [StepStatus.SUCCEEDED, StepStatus.PENDING]
    assert env.ledger.entries(result.id, "undo") == []
    (report,) = recover(env.app, result.id, stalled_after=0)
    assert report.action == "forward"
    assert result.get(timeout=TIMEOUT)["tag"] == "b"


def test_errback_fired_by_celery_for_a_running_saga_is_ignored(env: SagaEnv) -> None:
    """A compensation message for a saga whose failure was never recorded undoes nothing."""
    result = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b", sleep=0.5)).apply_async(
        saga_id=new_id()
    )
    _wait(lambda: result.steps[0].status is StepStatus.SUCCEEDED)
    env.app.signature(COMPENSATE_TASK, args=(result.id, 0), kwargs={"last": True}).apply_async()
    assert result.get(timeout=TIMEOUT)["tag"] == "b"
    assert env.ledger.entries(result.id, "undo") == []


def test_step_for_a_saga_the_store_does_not_know_is_reported(
    env: SagaEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """A step message of a saga missing from the worker's store is logged at ERROR and signalled."""
    seen: list[signals.StepEvent] = []

    def receiver(sender: Any = None, event: Any = None, **_: Any) -> None:
        seen.append(event)

    signals.saga_not_found.connect(receiver, weak=False)
    logger = logging.getLogger("celery_saga.execution")
    logger.addHandler(caplog.handler)
    try:
        plan = {"name": "elsewhere", "steps": [_plan_step("shop.act", {"tag": "z"})]}
        saga_id = new_id()
        step_signatures(env.app, saga_id, plan)[0].apply_async()
        _wait(lambda: bool(seen))
    finally:
        logger.removeHandler(caplog.handler)
        signals.saga_not_found.disconnect(receiver)
    assert seen[0].saga_id == saga_id
    assert "sqlite:///" in (seen[0].reason or "")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any(saga_id in r.getMessage() and "sqlite:///" in r.getMessage() for r in errors)
    assert env.ledger.count("do", "z", saga_id) == 0


def test_worker_says_when_its_store_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    """The start-up check logs an ERROR naming the store (password hidden) it cannot reach."""
    app = Celery("unreachable", broker="memory://", set_as_current=False)
    app.conf.saga_store_url = "postgresql+psycopg://saga:s3cret@127.0.0.1:1/shop"
    app.conf.saga_store_engine_options = {"connect_args": {"connect_timeout": 2}}
    logger = logging.getLogger("celery_saga.execution")
    logger.addHandler(caplog.handler)
    try:
        assert check_store(app) is False
    finally:
        logger.removeHandler(caplog.handler)
    message = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR][-1]
    assert "postgresql+psycopg://saga:***@127.0.0.1:1/shop" in message
    assert "s3cret" not in message


def _plan_step(task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"index": 0, "stage": 0, "task": task, "args": [], "kwargs": kwargs, "options": {},
            "immutable": True, "compensate": "shop.undo"}  # fmt: skip


def _wait(condition: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_retry_the_broker_refuses_is_left_to_the_sweep(
    env: SagaEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A RetryPolicy retry that cannot be published is dropped, not failed: the sweep resends it."""
    from celery.app.task import Task

    real = Task.retry
    refused: list[str] = []

    def broker_down(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name != "shop.insist" or refused:
            return real(self, *args, **kwargs)
        refused.append(self.request.id)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Task, "apply_async", _refuse_publish)
            return real(self, *args, **kwargs)

    monkeypatch.setattr(Task, "retry", broker_down)
    logger = logging.getLogger("celery_saga.execution")
    logger.addHandler(caplog.handler)
    try:
        result = env.saga(
            env.sig("act", tag="a"), env.sig("insist", tag="i", fail_times=1)
        ).apply_async(saga_id=new_id())
        _wait(lambda: bool(refused) and result.steps[1].status is StepStatus.PENDING)
        _wait(lambda: "could not be sent again" in caplog.text)
    finally:
        logger.removeHandler(caplog.handler)
    assert result.status is SagaStatus.RUNNING
    assert env.ledger.entries(result.id, "undo") == []
    time.sleep(0.1)  # its retry is due 0.02-0.05 s after the attempt: the sweep waits for that
    (report,) = recover(env.app, result.id, stalled_after=0)
    assert report.action == "forward", (report, result.steps)
    assert result.get(timeout=TIMEOUT) == "i"
    assert result.steps[1].attempts == 2


def _refuse_publish(*args: Any, **kwargs: Any) -> Any:
    raise OperationalError("broker is down")


def test_sweep_finds_a_young_saga_whose_worker_died(
    env: SagaEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep looks at a saga younger than saga_recovery_stall when its step's lease ran out."""
    _lose_messages(monkeypatch)
    result = env.saga(env.sig("act", tag="y")).apply_async(saga_id=new_id())
    get_store(env.app).claim_step(
        result.id, 0, uuid.uuid4().hex, (), {"tag": "y"}, 0.01,
        stage=0, task="shop.act", compensate="shop.undo",
    )  # fmt: skip
    time.sleep(0.05)
    reports = {r.saga_id: r for r in recover(env.app, stalled_after=3600)}
    assert reports[result.id].action == "forward"
    assert result.get(timeout=TIMEOUT)["tag"] == "y"
