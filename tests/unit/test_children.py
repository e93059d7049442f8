"""Child sagas without a worker: the plan, and the machine's moves as a table."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from celery import Celery, group

import celery_saga
from celery_saga import SagaStatus, SagaValidationError, StepRecord, StepStatus, saga, saga_step
from celery_saga import machine as m
from celery_saga.dispatch import child_saga_id
from celery_saga.plan import CHILD_TASK, build_plan
from tests.unit.test_machine import NOW, SETTLE, SWEEP

CHILD_PLAN = {"version": 1, "name": "stay", "steps": [{"index": 0, "stage": 0}]}
SHAPE = m.Topology.of_steps(
    [{"index": 0, "stage": 0}, {"index": 1, "stage": 1, "child": CHILD_PLAN},
     {"index": 2, "stage": 2}]
)  # fmt: skip
LAST = m.Topology.of_steps(
    [{"index": 0, "stage": 0}, {"index": 1, "stage": 1, "child": CHILD_PLAN}]
)
S, W, ST = StepStatus.SUCCEEDED, SagaStatus, StepStatus
ERROR = {"type": "shop.Declined", "message": "card declined", "traceback": "tb"}


def step(index: int, status: StepStatus, **kw: Any) -> StepRecord:
    compensate = CHILD_TASK if index == 1 else "undo"
    return StepRecord(saga_id="p", index=index, stage=index, name=f"t{index}",
                      compensate=compensate, status=status, **kw)  # fmt: skip


def child(status: SagaStatus, output: Any = None, error: Any = None) -> m.Child:
    return m.Child("p.1", "stay", status, output, error)


def parent(
    status: SagaStatus,
    middle: StepStatus,
    kid: m.Child | None,
    *,
    last: StepStatus = ST.PENDING,
    shape: m.Topology = SHAPE,
) -> m.SagaState:
    steps = [step(0, S, result="r0"), step(1, middle)]
    if shape is SHAPE:
        steps.append(step(2, last))
    return m.SagaState(
        saga_id="p", name="trip", status=status, steps=tuple(steps),
        created_at=NOW - timedelta(hours=1), updated_at=NOW - timedelta(hours=1),
        topology=shape, children={} if kid is None else {1: kid},
    )  # fmt: skip


DESCRIBED = {
    "type": "shop.Declined",
    "message": "child saga 'p.1' (stay) ended COMPENSATED: card declined",
    "traceback": "tb",
    "child": "p.1",
}
GAVE_UP = {**DESCRIBED, "message": "child saga 'p.1' (stay) ended FAILED: card declined"}

ROWS: list[tuple[str, m.SagaState, m.Event, Any, tuple[Any, ...], str]] = [
    ("the child completes: the stage succeeds with its result, the next stage gets it",
     parent(W.WAITING, ST.WAITING, child(W.COMPLETED, {"room": 7})), SETTLE,
     m.ResolveWait(1, S, W.RUNNING, result={"room": 7}), (m.SendSteps(2, ({"room": 7},)),),
     "child"),
    ("the child completes the parent's last stage: the parent completes",
     parent(W.WAITING, ST.WAITING, child(W.COMPLETED, 5), shape=LAST), SETTLE,
     m.ResolveWait(1, S, W.COMPLETED, result=5), (m.Ended(W.COMPLETED),), "child"),
    ("the child is still running: the parent waits",
     parent(W.WAITING, ST.WAITING, child(W.RUNNING)), SWEEP, None, (), "none"),
    ("the child undid itself: the stage fails with its error and the parent compensates",
     parent(W.WAITING, ST.WAITING, child(W.COMPENSATED, error=ERROR)), SETTLE,
     m.ResolveWait(1, ST.FAILED, W.COMPENSATING, error=DESCRIBED), (m.Reconcile(),), "child"),
    ("the child gave up undoing itself: the parent compensates and will end FAILED",
     parent(W.WAITING, ST.WAITING, child(W.FAILED, error=ERROR)), SETTLE,
     m.ResolveWait(1, ST.COMPENSATION_FAILED, W.COMPENSATING, error=GAVE_UP),
     (m.Reconcile(),), "child"),
    ("the parent stopped while its child runs: cancel the child",
     parent(W.COMPENSATING, ST.PENDING, child(W.WAITING)), SETTLE, None,
     (m.CancelChild(1),), "cancel"),
    ("the cancelled child is undoing itself: the parent waits for it",
     parent(W.COMPENSATING, ST.PENDING, child(W.COMPENSATING)), SETTLE, None, (), "none"),
    ("the cancelled child ended: recorded, then the parent undoes the steps before it",
     parent(W.COMPENSATING, ST.PENDING, child(W.COMPENSATED)), SETTLE,
     m.RecordChild(1, ST.COMPENSATED), (m.Reconcile(),), "compensate"),
    ("the child completed as its parent stopped: recorded as succeeded, to be undone",
     parent(W.COMPENSATING, ST.PENDING, child(W.COMPLETED, 5)), SETTLE,
     m.RecordChild(1, S, result=5), (m.Reconcile(),), "compensate"),
    ("a completed child is the newest to undo: its compensation undoes it as a unit",
     parent(W.COMPENSATING, S, child(W.COMPLETED), last=ST.FAILED), SETTLE,
     None, (m.SendCompensations((1, 0)),), "compensate"),
    ("the child undone as a unit is still compensating: the parent waits",
     parent(W.COMPENSATING, ST.COMPENSATING, child(W.COMPENSATING), last=ST.FAILED), SWEEP,
     None, (), "none"),
    ("the child undone as a unit ended: recorded, then the steps before it",
     parent(W.COMPENSATING, ST.COMPENSATING, child(W.COMPENSATED), last=ST.FAILED), SETTLE,
     m.RecordChild(1, ST.COMPENSATED), (m.Reconcile(),), "compensate"),
    ("the child undone as a unit gave up: recorded as a failed compensation",
     parent(W.COMPENSATING, ST.COMPENSATING, child(W.FAILED, error=ERROR), last=ST.FAILED),
     SETTLE, m.RecordChild(1, ST.COMPENSATION_FAILED, error=GAVE_UP), (m.Reconcile(),),
     "compensate"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "event", "transition", "messages", "action"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_child_moves(
    state: m.SagaState, event: m.Event, transition: Any, messages: tuple[Any, ...], action: str
) -> None:
    """Each event about a saga with a child saga gives the move in the table."""
    move = m.decide(state, event)
    assert (move.transition, move.messages, move.action) == (transition, messages, action)


def test_a_parent_past_its_deadline_stops_before_its_child_ends() -> None:
    """A parent waiting at a running child past its deadline is stopped (then cancels it)."""
    state = parent(W.WAITING, ST.WAITING, child(W.RUNNING))
    late = m.SagaState(**{**state.__dict__, "deadline": 60.0})
    move = m.decide(late, SWEEP)
    assert isinstance(move.transition, m.Stop)
    assert move.action == "deadline"


def test_a_child_stage_ends_its_chain_and_is_never_woken_as_a_sleep() -> None:
    """The chain stops at a child stage; its due time (the deadline) is no sleep's end."""
    assert SHAPE.run_from(0) == (0, 1)
    assert SHAPE.run_from(1) == (1,)
    assert SHAPE.children == ((1, CHILD_PLAN),)
    due = step(1, ST.WAITING, lease_expires_at=NOW - timedelta(seconds=1))
    state = parent(W.WAITING, ST.WAITING, child(W.RUNNING))
    state = m.SagaState(**{**state.__dict__, "steps": (state.steps[0], due, state.steps[2])})
    assert m.decide(state, SWEEP).transition is None


def test_child_ids_derive_from_the_parent_and_stay_short() -> None:
    """A child's id is the parent's id and its step; a long parent id is hashed to fit."""
    assert child_saga_id("order-1", 2) == "order-1.2"
    long = child_saga_id("x" * 255, 3)
    assert len(long) <= 255
    assert long.endswith(".3")
    assert long == child_saga_id("x" * 255, 3)


@pytest.fixture
def app() -> Celery:
    app = Celery("children", broker="memory://", set_as_current=False)
    app.conf.saga_store_url = "sqlite://"
    celery_saga.install(app)

    @app.task(name="undo_it", shared=False)
    def undo_it(result: Any, *args: Any) -> None:
        """Undo."""

    @saga_step(compensate=undo_it)
    @app.task(name="do_it", shared=False)
    def do_it(*args: Any) -> int:
        return 1

    @saga_step
    @app.task(name="two", shared=False)
    def two(a: Any, b: Any) -> int:
        return 2

    return app


def test_a_child_saga_is_stored_in_its_parents_plan(app: Celery) -> None:
    """The parent's plan keeps the child's whole plan on a step of the child task."""
    do_it = app.tasks["do_it"]
    plan = build_plan(app, [do_it.s(), saga(do_it.s(), do_it.si(), name="stay", version="3")],
                      "trip")  # fmt: skip
    stored = plan.as_json()
    assert stored["version"] == 2
    middle = stored["steps"][1]
    assert (middle["task"], middle["compensate"], middle["immutable"]) == (CHILD_TASK,) * 2 + (
        False,
    )
    assert middle["child"]["name"] == "stay"
    assert middle["child"]["saga_version"] == "3"
    assert [s["task"] for s in middle["child"]["steps"]] == ["do_it", "do_it"]


def test_a_childs_first_step_is_checked_against_the_result_before_it(app: Celery) -> None:
    """A child after another stage passes that stage's result to its first .s() step."""
    two, do_it = app.tasks["two"], app.tasks["do_it"]
    build_plan(app, [do_it.s(), saga(two.s(1))], "ok")  # gets (result, 1)
    with pytest.raises(SagaValidationError, match="do not fit its signature"):
        build_plan(app, [do_it.s(), saga(two.s(1, 2))], "too many")
    with pytest.raises(SagaValidationError, match="do not fit its signature"):
        build_plan(app, [saga(two.s(1))], "first stage: nothing before it")


def test_a_child_saga_in_a_group_is_refused(app: Celery) -> None:
    """A child saga is a stage of its own, not a group member."""
    do_it = app.tasks["do_it"]
    with pytest.raises(SagaValidationError, match="stages of their own"):
        build_plan(app, [group(do_it.s(), saga(do_it.s()))], "bad")
