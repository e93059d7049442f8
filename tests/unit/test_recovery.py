"""The recovery sweep drives on, from the store, sagas whose messages were lost."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import celery_saga
from celery_saga import (
    SagaCompensated,
    SagaNotFound,
    SagaResult,
    SagaStatus,
    SagaValidationError,
    StepStatus,
    _drive,
    dispatch,
    recover,
    signals,
    wait_for,
)
from celery_saga import canvas as canvas_module
from celery_saga import recovery as recovery_module
from celery_saga._drive import state_of
from celery_saga._runtime import get_store
from celery_saga.config import get_config
from celery_saga.machine import Sweep, decide
from celery_saga.recovery import RECOVER_TASK
from celery_saga.store import Completion, EncodedJSON
from tests.scenarios import new_id
from tests.support.envs import SagaEnv, sqlite_thread_env

TIMEOUT = 30


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEnv]:
    with sqlite_thread_env(tmp_path_factory.mktemp("recovery"), "recovery") as env:
        yield env


@pytest.fixture
def lose_messages(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make Saga.apply_async send nothing ("none") or only its first step ("first");
    "all" puts it back."""

    def lose(what: str) -> None:
        if what == "all":  # send everything again
            monkeypatch.undo()
            return

        def publish(app: Any, saga_id: str, plan: Any, start: int = 0, **kw: Any) -> None:
            if what == "first":  # the first step's message, without the rest of the chain
                dispatch.step_signatures(app, saga_id, plan, start, **kw)[0].apply_async()

        monkeypatch.setattr(canvas_module, "publish_stage", publish)

    return lose


def _wait_for(result: SagaResult, index: int, status: StepStatus) -> None:
    deadline = time.monotonic() + TIMEOUT
    while result.steps[index].status is not status:
        assert time.monotonic() < deadline, result.steps
        time.sleep(0.02)


def _claim(env: SagaEnv, saga_id: str, index: int, lease: float, tag: str) -> str:
    token = uuid.uuid4().hex
    claim = get_store(env.app).claim_step(
        saga_id, index, token, (), {"tag": tag}, lease,
        stage=index, task="shop.act", compensate="shop.undo",
    )  # fmt: skip
    assert claim.attempt == 1
    return token


def test_lost_next_step_is_sent_with_previous_result(
    env: SagaEnv, lose_messages: Callable[[str], None]
) -> None:
    """A saga whose chain was cut after its first step is completed, the result fed on."""
    lose_messages("first")
    result = env.saga(
        env.sig("act", "o-1", tag="a"), env.sig("act", tag="b"), env.sig("act", tag="c")
    ).apply_async(saga_id=new_id())
    _wait_for(result, 0, StepStatus.SUCCEEDED)
    assert recover(env.app, result.id, stalled_after=3600)[0].action == "none"  # not stalled yet
    (plan,) = recover(env.app, result.id, stalled_after=0)
    assert (plan.action, plan.steps) == ("forward", (1, 2))
    value = result.get(timeout=TIMEOUT)
    assert value["args"][0]["args"][0] == {"tag": "a", "args": ["o-1"]}
    assert [e.tag for e in env.ledger.entries(result.id, "do")] == ["a", "b", "c"]


def test_saga_never_sent_is_started(env: SagaEnv, lose_messages: Callable[[str], None]) -> None:
    """A saga stored but never sent (the producer died) is started by the sweep."""
    lose_messages("none")
    result = env.saga(env.sig("act", 1, tag="a")).apply_async(saga_id=new_id())
    time.sleep(0.05)
    assert result.status is SagaStatus.RUNNING
    plans = recover(env.app, stalled_after=0)
    assert any(p.saga_id == result.id and p.action == "forward" for p in plans)
    assert result.get(timeout=TIMEOUT) == {"tag": "a", "args": [1]}


def test_expired_lease_step_runs_again(env: SagaEnv, lose_messages: Callable[[str], None]) -> None:
    """A step whose worker died (claimed, lease ran out) is sent again at once and completes."""
    lose_messages("none")
    result = env.saga(env.sig("act", tag="a", immutable=True)).apply_async(saga_id=new_id())
    _claim(env, result.id, 0, lease=60, tag="a")
    (alive,) = recover(env.app, result.id, stalled_after=0)
    assert (alive.action, alive.reason) == ("none", "step 0 is running")

    other = env.saga(env.sig("act", tag="b", immutable=True)).apply_async(saga_id=new_id())
    _claim(env, other.id, 0, lease=0.01, tag="b")  # the "dead worker" held it briefly
    time.sleep(0.05)
    (plan,) = recover(env.app, other.id, stalled_after=3600)
    assert (plan.action, plan.reason) == ("forward", "the lease of step 0 ran out")
    assert other.get(timeout=TIMEOUT)["tag"] == "b"
    assert other.steps[0].attempts == 2


def test_lost_compensations_are_sent_and_end_the_saga(
    env: SagaEnv, lose_messages: Callable[[str], None]
) -> None:
    """A compensating saga whose compensation messages are gone gets them sent, newest first."""
    lose_messages("none")
    result = env.saga(
        env.sig("act", tag="a"), env.sig("act", tag="b"), env.sig("act", tag="c")
    ).apply_async(saga_id=new_id())
    store = get_store(env.app)
    for index, tag in enumerate("ab"):
        token = _claim(env, result.id, index, lease=60, tag=tag)
        recorded = store.complete_step(result.id, index, token, EncodedJSON(f'"{tag}"'), last=False)
        assert recorded is Completion.RECORDED
    token = _claim(env, result.id, 2, lease=60, tag="c")
    error = {"type": "StepFailure", "message": "c failed", "traceback": ""}
    assert store.fail_step(result.id, 2, token, error, saga_status=SagaStatus.COMPENSATING)
    (plan,) = recover(env.app, result.id, stalled_after=0)
    assert (plan.action, plan.steps) == ("compensate", (1, 0))
    with pytest.raises(SagaCompensated):
        result.get(timeout=TIMEOUT)
    assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["b", "a"]
    (after,) = recover(env.app, result.id, stalled_after=0)
    assert after.action == "none"


def test_compensated_but_unfinished_saga_is_ended(
    env: SagaEnv, lose_messages: Callable[[str], None]
) -> None:
    """A saga whose compensations all ran but that was never ended is ended by the sweep."""
    lose_messages("none")
    result = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b")).apply_async(new_id())
    store = get_store(env.app)
    token = _claim(env, result.id, 0, lease=60, tag="a")
    store.complete_step(result.id, 0, token, EncodedJSON('"a"'), last=False)
    token = _claim(env, result.id, 1, lease=60, tag="b")
    error = {"type": "StepFailure", "message": "b failed", "traceback": ""}
    store.fail_step(result.id, 1, token, error, saga_status=SagaStatus.COMPENSATING)
    undo = uuid.uuid4().hex
    store.claim_compensation(result.id, 0, undo, 60)
    store.finish_compensation(result.id, 0, undo)
    (plan,) = recover(env.app, result.id, stalled_after=0, dry_run=True)
    assert plan.action == "finish"
    assert result.status is SagaStatus.COMPENSATING  # dry run: nothing done
    recover(env.app, result.id, stalled_after=0)
    assert result.status is SagaStatus.COMPENSATED


def test_retry_due_later_is_left_alone(env: SagaEnv, lose_messages: Callable[[str], None]) -> None:
    """A step given back for a retry due in an hour is not stalled until then."""
    lose_messages("none")
    result = env.saga(env.sig("act", tag="a")).apply_async(saga_id=new_id())
    store = get_store(env.app)
    token = _claim(env, result.id, 0, lease=60, tag="a")
    due = datetime.now(UTC) + timedelta(hours=1)
    store.release_step(result.id, 0, token, None, retry_at=due)
    saga, steps = store.get_saga(result.id), store.get_steps(result.id)
    assert saga is not None
    assert steps[0].lease_expires_at == due
    state = state_of(store, saga)
    assert decide(state, Sweep(datetime.now(UTC), stall=60)).action == "none"
    later = due + timedelta(seconds=61)
    assert decide(state, Sweep(later, stall=60)).action == "forward"


def test_recover_task_runs_a_sweep(
    env: SagaEnv, lose_messages: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """celery_saga.recover, registered by install, sweeps with the app's settings."""
    lose_messages("none")
    result = env.saga(env.sig("act", 7, tag="a")).apply_async(saga_id=new_id())
    config = dataclasses.replace(get_config(env.app), recovery_stall=0.0)
    monkeypatch.setattr(recovery_module, "get_config", lambda app: config)
    counts = env.app.tasks[RECOVER_TASK].apply().get()
    assert counts["forward"] >= 1
    assert result.get(timeout=TIMEOUT) == {"tag": "a", "args": [7]}


def test_cancel_with_no_step_running(env: SagaEnv, lose_messages: Callable[[str], None]) -> None:
    """cancel() between steps sends the compensations itself; with nothing done, ends at once."""
    lose_messages("first")
    result = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b")).apply_async(new_id())
    _wait_for(result, 0, StepStatus.SUCCEEDED)
    assert result.cancel("not needed")
    with pytest.raises(SagaCompensated, match="it was cancelled"):
        result.get(timeout=TIMEOUT)
    assert env.ledger.count("undo", "a", result.id) == 1
    assert env.ledger.count("do", "b", result.id) == 0

    lose_messages("none")
    idle = env.saga(env.sig("act", tag="x")).apply_async(saga_id=new_id())
    assert idle.cancel("never mind")
    assert idle.status is SagaStatus.COMPENSATED
    assert idle.record is not None
    assert idle.record.error == {
        "type": "celery_saga.Cancelled", "message": "never mind", "traceback": ""
    }  # fmt: skip


def test_cancel_unknown_saga(env: SagaEnv) -> None:
    """cancel() of an id the store does not know raises SagaNotFound."""
    with pytest.raises(SagaNotFound):
        SagaResult("no-such-saga", app=env.app).cancel("x")


def test_deadline_stops_new_steps(env: SagaEnv) -> None:
    """Past deadline=, the next step does not start and the saga is compensated."""
    result = env.saga(
        env.sig("act", tag="a"), env.sig("act", tag="b", sleep=0.6), env.sig("act", tag="c"),
        deadline=0.3,
    ).apply_async(saga_id=new_id())  # fmt: skip
    with pytest.raises(SagaCompensated, match="it ran out of time"):
        result.get(timeout=TIMEOUT)
    assert env.ledger.count("do", "c", result.id) == 0
    assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["b", "a"]
    assert result.record is not None
    assert result.record.error is not None
    assert result.record.error["type"] == "celery_saga.DeadlineExceeded"


def test_deadline_enforced_by_the_sweep(env: SagaEnv, lose_messages: Callable[[str], None]) -> None:
    """A saga past its deadline with no message left is stopped by the sweep."""
    lose_messages("first")
    result = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b"), deadline=0.2)
    started = result.apply_async(saga_id=new_id())
    _wait_for(started, 0, StepStatus.SUCCEEDED)
    time.sleep(0.3)
    (plan,) = recover(env.app, started.id, stalled_after=3600)
    assert plan.action == "deadline"
    with pytest.raises(SagaCompensated):
        started.get(timeout=TIMEOUT)
    assert env.ledger.count("undo", "a", started.id) == 1


def test_bad_deadline_is_refused(env: SagaEnv) -> None:
    """deadline= must be a positive number of seconds."""
    with pytest.raises(SagaValidationError, match="deadline= takes seconds > 0"):
        env.saga(env.sig("act", tag="a"), deadline=0).plan()


def test_saga_stored_before_groups_finishes_after_the_upgrade(env: SagaEnv) -> None:
    """A saga stored (plan version 1) and sent (no group headers) by the release before
    groups, its first step done, is driven on and completes on the code with groups."""
    saga_id = new_id()
    old_step = {"args": [], "kwargs": {"tag": "a"}, "options": {}, "immutable": False,
                "compensate": "shop.undo", "task": "shop.act"}  # fmt: skip
    plan = {
        "version": 1,
        "name": "before-groups",
        "steps": [
            {**old_step, "index": 0, "stage": 0, "args": ["o-1"]},
            {**old_step, "index": 1, "stage": 1, "kwargs": {"tag": "b"}},
            {**old_step, "index": 2, "stage": 2, "kwargs": {"tag": "c"}},
        ],
    }
    store = get_store(env.app)
    now = datetime.now(UTC).replace(tzinfo=None)
    store.create_saga(
        {"id": saga_id, "name": "before-groups", "status": SagaStatus.RUNNING, "plan": plan,
         "plan_hash": "0" * 64, "step_count": 3, "created_at": now, "updated_at": now}
    )  # fmt: skip
    claim = store.claim_step(
        saga_id, 0, "t0", ["o-1"], {"tag": "a"}, 60, stage=0, task="shop.act",
        compensate="shop.undo",
    )  # fmt: skip
    assert claim.token == "t0"
    first = EncodedJSON('{"tag": "a", "args": ["o-1"]}')
    assert store.complete_step(saga_id, 0, "t0", first, last=False) is Completion.RECORDED
    # step 1's message as the old release sent it: the header without stage or group keys
    env.app.signature(
        "shop.act", args=({"tag": "a", "args": ["o-1"]},), kwargs={"tag": "b"},
        headers={"celery_saga": {"id": saga_id, "i": 1, "n": 3, "c": True, "t": None}},
        task_id=f"{saga_id}:1",
    ).apply_async()  # fmt: skip
    result = SagaResult(saga_id, app=env.app)
    _wait_for(result, 1, StepStatus.SUCCEEDED)
    # the rest of the chain was never sent (the old message carried none): the sweep sends it
    (sent,) = recover(env.app, saga_id, stalled_after=0)
    assert (sent.action, sent.steps) == ("forward", (2,))
    value = result.get(timeout=TIMEOUT)
    assert value["tag"] == "c"
    assert value["args"][0]["args"][0] == {"tag": "a", "args": ["o-1"]}


def test_saga_of_version_1_finishes_its_own_plan_after_version_2_is_out(
    env: SagaEnv, lose_messages: Callable[[str], None]
) -> None:
    """A saga stored as version "1" runs the plan it was stored with once "2" (another
    step list, same name) is what producers start; the store tells the versions apart."""
    lose_messages("first")
    first = celery_saga.saga(
        env.sig("act", tag="a"), env.sig("act", tag="b"), name="order", app=env.app, version="1"
    ).apply_async(saga_id=new_id())
    _wait_for(first, 0, StepStatus.SUCCEEDED)
    lose_messages("all")  # producers send everything again
    second = celery_saga.saga(
        env.sig("act", tag="a"), env.sig("act", tag="c"), env.sig("act", tag="d"),
        name="order", app=env.app, version="2",
    ).apply_async(saga_id=new_id())  # fmt: skip
    assert second.get(timeout=TIMEOUT)["tag"] == "d"
    recover(env.app, first.id, stalled_after=0)
    assert first.get(timeout=TIMEOUT)["tag"] == "b"
    assert [e.tag for e in env.ledger.entries(first.id, "do")] == ["a", "b"]
    store = get_store(env.app)
    assert [s.id for s in store.list_sagas(name="order", version="1")] == [first.id]
    assert first.record is not None
    assert (first.record.version, first.record.plan["saga_version"]) == ("1", "1")


def test_parent_of_an_ended_child_goes_on_from_the_sweep(
    env: SagaEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child saga's end that never reached its waiting parent (a crash right after it)
    is found by the sweep, which drives the parent on with the child's result."""
    monkeypatch.setattr(_drive, "end", lambda app, event: signals.send_saga_end(event))
    child = env.saga(env.sig("act", tag="b"), wait_for("go"), name="stay")
    result = env.saga(env.sig("act", tag="a"), child, env.sig("act", tag="c")).apply_async(
        saga_id=new_id()
    )
    kid = SagaResult(f"{result.id}.1", app=env.app)
    deadline = time.monotonic() + TIMEOUT
    while kid.record is None or kid.status is not SagaStatus.WAITING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert all(r.saga_id != result.id for r in recover(env.app))  # waiting: not due
    kid.signal("go", 1)
    kid.get(timeout=TIMEOUT)
    assert result.status is SagaStatus.WAITING  # its end was lost on the way
    [report] = [r for r in recover(env.app) if r.saga_id == result.id]
    assert report.action == "child"
    assert result.get(timeout=TIMEOUT)["args"] == [1]
