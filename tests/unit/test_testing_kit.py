"""The test kit (celery_saga.testing) through the plugin's own fixtures."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from celery import Celery, current_app, group

import celery_saga
from celery_saga import SagaCompensated, SagaFailed, SagaResult, SagaStatus, StepStatus
from celery_saga.config import get_config
from celery_saga.testing import (
    Faults,
    InjectedFault,
    SagaEvents,
    configured,
    memory_settings,
)
from tests.support import kit_tasks
from tests.support.kit_tasks import DONE


@pytest.fixture
def saga_includes() -> Sequence[str]:
    return ["tests.support.kit_tasks"]


@pytest.fixture(autouse=True)
def _forget_what_was_done() -> Iterator[None]:
    DONE.clear()
    yield
    DONE.clear()


def run(app: Celery, *tags: str, task: str = "kit.act") -> SagaResult:
    steps = [app.signature(task, args=(tag,), immutable=True) for tag in tags]
    return celery_saga.saga(*steps, name="kit", app=app).apply_async()


def actions() -> list[tuple[str, str]]:
    return [(action, tag) for action, tag, _ in DONE]


def test_saga_app_is_current_and_binds_shared_task_steps(saga_app: Celery) -> None:
    """saga_app is current, runs on memory:// and a SQLite store, and has the shared steps."""
    assert current_app._get_current_object() is saga_app
    assert saga_app.conf.broker_url.startswith("memory://")
    assert get_config(saga_app).store_url.startswith("sqlite:///")
    assert "kit.act" in saga_app.tasks
    assert kit_tasks.act.app is saga_app


@pytest.mark.parametrize("saga_config", [{"saga_step_lease": 42}])
def test_saga_config_adds_settings(saga_app: Celery) -> None:
    """Settings from the saga_config fixture reach the app."""
    assert get_config(saga_app).step_lease == 42


def test_a_step_failure_compensates_with_injected_fault(
    saga_app: Celery, saga_worker: Any, saga_faults: Faults, saga_events: SagaEvents
) -> None:
    """A fault on step 1 fails it with InjectedFault and the step before it is undone."""
    fault = saga_faults.fail("kit.act", index=1)

    result = run(saga_app, "a", "b")
    outcome = result.get(timeout=10, propagate=False)

    assert isinstance(outcome, SagaCompensated)
    assert outcome.error["type"] == "celery_saga.testing.InjectedFault"
    assert outcome.error["message"] == "injected fault: kit.act failed (attempt 1)"
    assert actions() == [("do", "a"), ("undo", "a")]
    assert fault.fired == 1
    assert fault.wait().step_index == 1
    saga_events.wait_for("saga_compensated", saga_id=result.id)
    assert saga_events.names(result.id) == [
        "saga_started",
        "step_started", "step_succeeded",
        "step_started", "step_failed",
        "compensation_started", "compensation_succeeded",
        "saga_compensated",
    ]  # fmt: skip


def test_faults_strike_the_given_number_of_attempts(
    saga_app: Celery, saga_worker: Any, saga_faults: Faults
) -> None:
    """times=2 fails two attempts; the retry policy's third attempt succeeds."""
    fault = saga_faults.fail(kit_tasks.insist, times=2, error=ValueError("flaky"))

    result = run(saga_app, "a", task="kit.insist")

    assert result.get(timeout=10) == "a"
    assert fault.fired == 2
    assert [s.attempt for s in fault.struck] == [1, 2]
    step = result.steps[0]
    assert step.attempts == 3
    assert [(e["type"], e["message"]) for e in step.attempt_errors] == [("ValueError", "flaky")] * 2


def test_error_instance_is_raised_as_given(
    saga_app: Celery, saga_worker: Any, saga_faults: Faults
) -> None:
    """An exception instance given as error= is what the step fails with."""
    saga_faults.fail("kit.act", error=KeyError("sku-1"))

    outcome = run(saga_app, "a").get(timeout=10, propagate=False)

    assert isinstance(outcome, SagaCompensated)
    assert outcome.error["type"] == "KeyError"


def test_compensation_failing_every_time_fails_the_saga(
    saga_app: Celery, saga_worker: Any, saga_faults: Faults
) -> None:
    """A compensation fault with times=None gives up; cleared, retry_compensation() undoes."""
    saga_faults.fail("kit.act", index=1)
    fault = saga_faults.fail_compensation("kit.undo", times=None)

    result = run(saga_app, "a", "b")

    assert isinstance(result.get(timeout=10, propagate=False), SagaFailed)
    assert fault.fired == 6  # the first attempt and saga_compensation_max_retries (5)
    assert actions() == [("do", "a")]
    saga_faults.clear()
    assert result.retry_compensation() == [0]
    assert isinstance(result.get(timeout=10, propagate=False), SagaCompensated)
    assert actions() == [("do", "a"), ("undo", "a")]


def test_crash_before_the_body_runs_it_once_after_recovery(
    saga_app: Celery, saga_worker: Any, saga_faults: Faults
) -> None:
    """A crash before the body holds the claim; recovery re-sends the step, which runs once."""
    crash = saga_faults.crash("kit.act", index=1)

    result = run(saga_app, "a", "b")
    crash.wait()

    assert result.steps[1].status is StepStatus.RUNNING
    assert actions() == [("do", "a")]
    plans = saga_faults.recover(result.id)
    assert [(p.action, p.steps) for p in plans] == [("forward", (1,))]
    assert result.get(timeout=10) == "b"
    assert actions() == [("do", "a"), ("do", "b")]
    assert result.steps[1].attempts == 2


def test_crash_after_the_body_reruns_it_with_the_same_key(
    saga_app: Celery, saga_worker: Any, saga_faults: Faults
) -> None:
    """A crash after the body loses its result; the re-run has the same idempotency key."""
    crash = saga_faults.crash("kit.act", at="after")

    result = run(saga_app, "a")
    crash.wait()
    assert actions() == [("do", "a")]
    saga_faults.recover()

    assert result.get(timeout=10) == "a"
    assert actions() == [("do", "a"), ("do", "a")]
    assert DONE[0][2] == DONE[1][2]


def test_crash_in_a_compensation_is_recovered(
    saga_app: Celery, saga_worker: Any, saga_faults: Faults
) -> None:
    """A compensation whose worker died is run again by recovery, and the saga ends."""
    saga_faults.fail("kit.act", index=2)
    crash = saga_faults.crash("kit.act", compensation=True, index=1)

    result = run(saga_app, "a", "b", "c")
    crash.wait()
    assert result.status is SagaStatus.COMPENSATING

    plans = saga_faults.recover(result.id)

    assert [(p.action, p.steps) for p in plans] == [("compensate", (1, 0))]
    assert isinstance(result.get(timeout=10, propagate=False), SagaCompensated)
    assert actions() == [("do", "a"), ("do", "b"), ("undo", "b"), ("undo", "a")]


def test_bad_fault_arguments_are_refused(saga_faults: Faults) -> None:
    """Nonsense times=, error= or at= is refused when the fault is made."""
    with pytest.raises(ValueError, match="times= takes a number >= 1"):
        saga_faults.fail("kit.act", times=0)
    with pytest.raises(TypeError, match="error= takes an exception"):
        saga_faults.fail("kit.act", error="boom")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at= is 'before' or 'after'"):
        saga_faults.crash("kit.act", at="during")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a Celery task or a task name"):
        saga_faults.fail(42)


def test_waiting_for_what_does_not_come_says_so(
    saga_events: SagaEvents, saga_faults: Faults
) -> None:
    """wait() and wait_for() time out with what they waited for; unknown signals are refused."""
    with pytest.raises(TimeoutError, match=r"no saga_completed signal within 0.05 s; recorded"):
        saga_events.wait_for("saga_completed", timeout=0.05)
    with pytest.raises(ValueError, match="unknown signal 'saga_done'"):
        saga_events.of("saga_done")
    with pytest.raises(TimeoutError, match=r"did not strike within 0\.05 s"):
        saga_faults.fail("kit.act").wait(timeout=0.05)


def test_injected_fault_is_an_ordinary_exception() -> None:
    """InjectedFault is an Exception, so retry policies and except clauses see it."""
    assert issubclass(InjectedFault, Exception)


def test_configured_restores_an_existing_apps_settings(tmp_path: Any) -> None:
    """configured() runs a project app on test settings and gives its own back afterwards."""
    app = Celery("proj", broker="redis://broker.internal:6379/0")
    app.conf.saga_store_url = "postgresql+psycopg://db.internal/proj"
    celery_saga.install(app)
    url = f"sqlite:///{tmp_path / 'sagas.sqlite3'}"

    with configured(app, memory_settings(url)):
        assert app.conf.broker_url == "memory://localhost/"
        assert get_config(app).store_url == url

    assert app.conf.broker_url == "redis://broker.internal:6379/0"
    assert get_config(app).store_url == "postgresql+psycopg://db.internal/proj"
    assert "saga_compensation_retry_delay" not in app.conf


def test_crash_on_a_group_member_is_recovered_while_its_sibling_finishes(
    saga_app: Celery, saga_worker: Any, saga_faults: Faults
) -> None:
    """A member that crashes is sent again by recovery; its sibling's result is kept, the
    group joins and the saga completes with both members run once."""
    crash = saga_faults.crash("kit.act", index=1)
    steps = [saga_app.signature("kit.act", args=(tag,), immutable=True) for tag in "bc"]
    result = celery_saga.saga(group(*steps), name="kit", app=saga_app).apply_async()
    crash.wait()
    deadline = time.monotonic() + 10
    while result.steps[0].status is not StepStatus.SUCCEEDED:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert result.steps[1].status is StepStatus.RUNNING
    plans = saga_faults.recover(result.id)
    assert [(p.action, p.steps) for p in plans] == [("forward", (1,))]
    assert result.get(timeout=10) == ["b", "c"]
    assert sorted(actions()) == [("do", "b"), ("do", "c")]


def test_fault_on_a_group_member_undoes_its_siblings(
    saga_app: Celery, saga_worker: Any, saga_faults: Faults
) -> None:
    """An injected failure of one member compensates the member that succeeded."""
    # The member fails only once its sibling has succeeded: held by a crash, it is sent
    # again by recovery and fails then (failing at once, it could beat b to the worker).
    crash = saga_faults.crash("kit.act", index=1)
    steps = [saga_app.signature("kit.act", args=(tag,), immutable=True) for tag in "bc"]
    result = celery_saga.saga(group(*steps), name="kit", app=saga_app).apply_async()
    crash.wait()
    deadline = time.monotonic() + 10
    while result.steps[0].status is not StepStatus.SUCCEEDED:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    saga_faults.fail("kit.act", index=1)
    assert [p.action for p in saga_faults.recover(result.id)] == ["forward"]
    with pytest.raises(SagaCompensated):
        result.get(timeout=10)
    assert sorted(actions()) == [("do", "b"), ("undo", "b")]


def test_fast_forward_ends_a_long_sleep_and_a_wait_timeout(
    saga_app: Celery, saga_worker: Any, saga_faults: Faults
) -> None:
    """fast_forward() wakes an hour's sleep and times out a day's wait at once."""
    act = saga_app.signature("kit.act", args=("a",), immutable=True)
    sleeping = celery_saga.saga(act, celery_saga.sleep(3600), name="kit", app=saga_app)
    waiting = celery_saga.saga(
        act, celery_saga.wait_for("ok", timeout=86400), name="kit", app=saga_app
    )
    slept, waited = sleeping.apply_async(), waiting.apply_async()
    deadline = time.monotonic() + 10
    while {slept.status, waited.status} != {SagaStatus.WAITING}:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    plans = saga_faults.fast_forward()
    assert {(p.saga_id, p.action) for p in plans} >= {(slept.id, "wake"), (waited.id, "timeout")}
    assert slept.get(timeout=10) == "a"
    with pytest.raises(SagaCompensated, match="no signal 'ok'"):
        waited.get(timeout=10)
