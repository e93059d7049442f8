"""Child sagas without a worker: the plan, and the machine's moves as a table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, group

import celery_saga
from celery_saga import SagaStatus, SagaValidationError, StepRecord, StepStatus, saga, saga_step
from celery_saga import machine as m
from celery_saga.dispatch import child_saga_id
from celery_saga.plan import CHILD_TASK, build_plan, saga_row
from celery_saga.store import SagaStore
from celery_saga.store.schema import sagas
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
     None, (m.SendCompensations((1,)),), "compensate"),
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


D = m.Delivery(saga_id="p", name="trip", index=1, count=3, stage=1)
TAKEN = {
    "type": "celery_saga.SagaConflictError",
    "message": "the id of its child saga at step 1 is another saga's",
    "traceback": "",
}
UNDO = {"type": m.CANCELLED, "message": "its parent saga 'p' compensates", "traceback": ""}


def lone(status: SagaStatus, *steps: StepRecord) -> m.SagaState:
    """The child saga itself, as its own state."""
    return m.SagaState(saga_id="p.1", name="stay", status=status, steps=steps,
                       created_at=NOW, updated_at=NOW)  # fmt: skip


DELIVERY_ROWS: list[tuple[str, Any, m.Event, Any, tuple[Any, ...], str]] = [
    ("the stage stored its child: send the child's first stage",
     D, m.WaitEntered(m.Outcome.WAITING, 0.0, started=True, child=True), None,
     (m.StartChild(),), "child"),
    ("the parent's deadline is near: the child goes out before the wake-up",
     D, m.WaitEntered(m.Outcome.WAITING, 0.0, 10.0, 60.0, started=True, child=True), None,
     (m.StartChild(), m.Wake(10.0)), "child"),
    ("a redelivery of the stage: the child was sent before",
     D, m.WaitEntered(m.Outcome.WAITING, 0.0, child=True), None, (), "none"),
    ("the child's id is another saga's: the parent stops and compensates",
     D, m.WaitEntered(m.Outcome.CONFLICT, 0.0, child=True), m.Stop(TAKEN), (m.Reconcile(),),
     "conflict"),
    ("its parent compensates a completed child: reopen it, it undoes itself",
     lone(W.COMPLETED, step(0, S)), m.UndoAsUnit(UNDO), m.ReopenChild(UNDO),
     (m.Reconcile(),), "compensate"),
    ("its parent compensates a child whose undo gave up: retry its compensations",
     lone(W.FAILED, step(0, ST.COMPENSATION_FAILED)), m.UndoAsUnit(UNDO), m.Reopen(),
     (m.SendCompensations((0,)),), "compensate"),
    ("a child that is compensating already: nothing more",
     lone(W.COMPENSATING, step(0, S)), m.UndoAsUnit(UNDO), None, (), "none"),
    ("the child to undo is not in the store: its undo is recorded as given up",
     parent(W.COMPENSATING, ST.COMPENSATING, None, last=ST.FAILED), SETTLE,
     m.RecordChild(1, ST.COMPENSATION_FAILED, error={
         "type": "celery_saga.ChildSagaFailed",
         "message": "its child saga is not in the store (purged?): not undone",
         "traceback": ""}), (m.Reconcile(),), "compensate"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "event", "transition", "messages", "action"),
    [row[1:] for row in DELIVERY_ROWS],
    ids=[row[0] for row in DELIVERY_ROWS],
)
def test_child_stage_and_unit_undo_moves(
    state: Any, event: m.Event, transition: Any, messages: tuple[Any, ...], action: str
) -> None:
    """The child stage's message, and a child undone as a unit, give the moves in the table."""
    move = m.decide(state, event)
    assert (move.transition, move.messages, move.action) == (transition, messages, action)


def test_the_unit_undo_rule_is_in_the_table() -> None:
    """The machine's rule for undoing a child as a unit appears in this table."""
    assert m.UndoAsUnit in {type(row[2]) for row in DELIVERY_ROWS}
    assert m.UndoAsUnit in m.SAGA_RULES


def test_an_undo_chain_ends_at_a_child_saga() -> None:
    """A child's undo is the last of its chain (it settles its parent when it has ended);
    the steps before it go in the next batch."""
    assert SHAPE.undo_batch((2, 1, 0)) == ((2, 1),)
    assert SHAPE.undo_batch((1, 0)) == ((1,),)
    assert SHAPE.undo_batch((0,)) == ((0,),)
    grouped = m.Topology.of_steps(
        [{"index": 0, "stage": 0, "branch": 0}, {"index": 1, "stage": 0, "branch": 1},
         {"index": 2, "stage": 1}, {"index": 3, "stage": 2, "child": CHILD_PLAN},
         {"index": 4, "stage": 3}]
    )  # fmt: skip
    assert grouped.undo_batch((4, 3, 2, 1, 0)) == ((4, 3),)
    assert grouped.undo_batch((2, 1, 0)) == ((2,),)


def _rows(store: Any, parent_id: str, status: SagaStatus, waits_at: int, child: SagaStatus) -> None:
    """A parent waiting at step ``waits_at`` whose child (at step 1) is ``child``."""
    now = datetime.now(UTC).replace(tzinfo=None)
    plan = {"version": 2, "name": "p", "steps": []}
    store.create_saga(saga_row(parent_id, plan, now))
    store.enter_wait(parent_id, waits_at, due=None, args=[], stage=waits_at, task="t",
                     final=False)  # fmt: skip
    store.create_saga(saga_row(f"{parent_id}.1", plan, now, parent_id=parent_id, parent_step=1))
    with store.engine.begin() as connection:
        connection.execute(
            sagas.update().where(sagas.c.id == f"{parent_id}.1").values(status=child)
        )
        connection.execute(sagas.update().where(sagas.c.id == parent_id).values(status=status))


def test_the_sweep_finds_only_parents_waiting_at_an_ended_child(tmp_path: Path) -> None:
    """A parent waiting at a child that ended is due; one waiting elsewhere (at a signal,
    its child long done) or at a running child is not, whatever other sagas wait at."""
    store = SagaStore(f"sqlite:///{tmp_path / 'store.db'}")
    _rows(store, "ended", W.WAITING, 1, W.COMPENSATED)
    _rows(store, "elsewhere", W.WAITING, 3, W.COMPLETED)
    _rows(store, "running", W.WAITING, 1, W.RUNNING)
    young = datetime.now(UTC) - timedelta(hours=1)
    assert [s.id for s in store.unfinished_sagas(young, 10)] == ["ended"]


def test_purge_deletes_a_child_with_its_parent_never_alone(tmp_path: Path) -> None:
    """purge leaves a finished child of an unfinished (or retriable) parent, and deletes
    a finished parent with its children and theirs."""
    store = SagaStore(f"sqlite:///{tmp_path / 'store.db'}")
    _rows(store, "kept", W.FAILED, 1, W.COMPLETED)
    _rows(store, "gone", W.COMPENSATED, 1, W.COMPENSATED)
    now = datetime.now(UTC).replace(tzinfo=None)
    plan = {"version": 2, "name": "p", "steps": []}
    store.create_saga(saga_row("gone.1.0", plan, now, parent_id="gone.1", parent_step=0))
    with store.engine.begin() as connection:
        connection.execute(sagas.update().values(finished_at=now - timedelta(days=9)))
    later = datetime.now(UTC) - timedelta(days=1)
    assert store.purge_sagas(later, [W.COMPLETED, W.COMPENSATED]) == 1
    assert {s.id for s in store.list_sagas(limit=10)} == {"kept", "kept.1"}
