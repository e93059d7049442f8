"""The saga state machine as a table: (state, event) -> move, and what it refuses."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celery_saga import SagaStateError, SagaStatus, StepRecord, StepStatus
from celery_saga import machine as m

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(hours=1)
ERROR = {"type": "ValueError", "message": "no", "traceback": ""}


def delivery(index: int = 1, count: int = 3, undo: tuple[int, ...] = (0,), **kw: Any) -> m.Delivery:
    return m.Delivery("s-1", "checkout", index, count, undo, **kw)


def step(index: int, status: StepStatus, *, lease: float | None = None, **kw: Any) -> StepRecord:
    expires = None if lease is None else NOW + timedelta(seconds=lease)
    return StepRecord(
        saga_id="s-1", index=index, stage=index, name=f"shop.step{index}",
        compensate=kw.pop("compensate", f"shop.undo{index}"), status=status,
        started_at=kw.pop("started_at", LONG_AGO), lease_expires_at=expires, **kw,
    )  # fmt: skip


def saga(status: SagaStatus, *steps: StepRecord, **kw: Any) -> m.SagaState:
    return m.SagaState(
        saga_id="s-1", name="checkout", status=status, steps=steps,
        created_at=kw.pop("created_at", LONG_AGO), updated_at=kw.pop("updated_at", LONG_AGO),
        **kw,
    )  # fmt: skip


S, P, R = StepStatus.SUCCEEDED, StepStatus.PENDING, StepStatus.RUNNING
RUNNING, COMPENSATING = SagaStatus.RUNNING, SagaStatus.COMPENSATING
EPOCH_NOW = NOW.timestamp()

# (what, state, event, transition, messages, action)
STEP_TABLE: list[tuple[str, m.Delivery, m.Event, Any, tuple[Any, ...], str]] = [
    ("delivered: claim it", delivery(), m.Delivered(EPOCH_NOW), m.Claim(), (), "none"),
    (
        "delivered past the deadline: stop the saga",
        delivery(deadline=EPOCH_NOW - 1, started=EPOCH_NOW - 11),
        m.Delivered(EPOCH_NOW),
        m.Stop(
            {"type": m.DEADLINE_EXCEEDED, "message": "its deadline of 10 s passed", "traceback": ""}
        ),
        (),
        "deadline",
    ),
    (
        "stopped it: settle the saga, skip the step",
        delivery(),
        m.Stopped(applied=True),
        None,
        (m.Reconcile(), m.Drop("deadline")),
        "deadline",
    ),
    (
        "stopped already (cancelled, or another delivery): skip the step",
        delivery(),
        m.Stopped(applied=False),
        None,
        (m.Drop("deadline"),),
        "none",
    ),
    ("claimed: run the body", delivery(), m.Claimed(m.Outcome.CLAIMED), None, (m.Run(),), "none"),
    (
        "done before: pass the stored result on",
        delivery(),
        m.Claimed(m.Outcome.DONE, 7),
        None,
        (m.PassOn(7), m.SendNext()),
        "forward",
    ),
    (
        "halted (cancelled): settle the saga",
        delivery(),
        m.Claimed(m.Outcome.HALTED),
        None,
        (m.Reconcile(), m.Drop("halted")),
        "none",
    ),
    (
        "busy elsewhere: drop",
        delivery(),
        m.Claimed(m.Outcome.BUSY),
        None,
        (m.Drop("busy"),),
        "none",
    ),
    ("stopped: drop", delivery(), m.Claimed(m.Outcome.STOPPED), None, (m.Drop("stopped"),), "none"),
    (
        "unknown saga: drop loudly",
        delivery(),
        m.Claimed(m.Outcome.MISSING),
        None,
        (m.Drop("missing", "error"),),
        "none",
    ),
    (
        "failed with attempts left: release and retry",
        delivery(),
        m.AttemptFailed(1, retryable=True, attempts=3, delay=0.5),
        m.Release(0.5),
        (m.RetryLater(0.5),),
        "retry",
    ),
    (
        "failed on its last attempt: fail, compensate",
        delivery(),
        m.AttemptFailed(3, retryable=True, attempts=3, delay=0.5),
        m.Fail(StepStatus.FAILED, COMPENSATING),
        (),
        "fail",
    ),
    (
        "failed, not retryable: fail",
        delivery(),
        m.AttemptFailed(1, retryable=False, attempts=3),
        m.Fail(StepStatus.FAILED, COMPENSATING),
        (),
        "fail",
    ),
    (
        "failed with nothing to undo: the saga is compensated",
        delivery(0, undo=()),
        m.AttemptFailed(1),
        m.Fail(StepStatus.FAILED, SagaStatus.COMPENSATED),
        (),
        "fail",
    ),
    (
        "timed out, in doubt: undo it too",
        delivery(0, undo=(0,)),
        m.AttemptFailed(1, timed_out=True, undo_on_timeout=True),
        m.Fail(StepStatus.TIMED_OUT, COMPENSATING),
        (),
        "fail",
    ),
    (
        "timed out, not in doubt: a plain failure",
        delivery(0, undo=(0,)),
        m.AttemptFailed(1, timed_out=True),
        m.Fail(StepStatus.FAILED, SagaStatus.COMPENSATED),
        (),
        "fail",
    ),
    (
        "failure recorded: send the compensations",
        delivery(2, undo=(1, 0)),
        m.FailureRecorded(True, True, COMPENSATING),
        None,
        (m.SendCompensations((1, 0)),),
        "compensate",
    ),
    (
        "timed-out failure recorded: undo itself first",
        delivery(2, undo=(2, 1)),
        m.FailureRecorded(True, True, COMPENSATING, StepStatus.TIMED_OUT),
        None,
        (m.SendCompensations((2, 1)),),
        "compensate",
    ),
    (
        "failure recorded, nothing to undo: ended",
        delivery(0, undo=()),
        m.FailureRecorded(True, True, SagaStatus.COMPENSATED),
        None,
        (m.Ended(SagaStatus.COMPENSATED),),
        "finish",
    ),
    (
        "failure recorded after a cancel: settle",
        delivery(0, undo=()),
        m.FailureRecorded(True, False, SagaStatus.COMPENSATED),
        None,
        (m.Reconcile(),),
        "none",
    ),
    (
        "failure not recorded (claim lost): drop",
        delivery(),
        m.FailureRecorded(False, False, COMPENSATING),
        None,
        (m.Drop("lost its claim", "warning"),),
        "none",
    ),
    (
        "released by Retry: give the claim back",
        delivery(),
        m.AttemptReleased(2.0),
        m.Release(2.0),
        (),
        "none",
    ),
    (
        "succeeded: record it",
        delivery(1, 3),
        m.AttemptSucceeded(),
        m.Complete(last=False),
        (),
        "none",
    ),
    (
        "last step succeeded: record and complete",
        delivery(2, 3),
        m.AttemptSucceeded(),
        m.Complete(last=True),
        (),
        "none",
    ),
    (
        "recorded: send the next step",
        delivery(),
        m.SuccessRecorded(m.Outcome.RECORDED),
        None,
        (m.SendNext(),),
        "forward",
    ),
    (
        "completed: say so",
        delivery(2),
        m.SuccessRecorded(m.Outcome.COMPLETED),
        None,
        (m.Ended(SagaStatus.COMPLETED),),
        "finish",
    ),
    (
        "last step recorded after a cancel: settle",
        delivery(2),
        m.SuccessRecorded(m.Outcome.HALTED),
        None,
        (m.Reconcile(),),
        "none",
    ),
    (
        "result not recorded (claim lost): drop",
        delivery(),
        m.SuccessRecorded(m.Outcome.LOST),
        None,
        (m.Drop("lost its claim", "warning"),),
        "none",
    ),
]

W = m.Outcome
STEP_TABLE += [
    ("a wait for a signal: nothing more (no worker is held)", delivery(),
     m.WaitEntered(W.WAITING, EPOCH_NOW), None, (), "none"),
    ("a wait due soon: wake it by a countdown", delivery(),
     m.WaitEntered(W.WAITING, EPOCH_NOW, EPOCH_NOW + 5, soon=60), None, (m.Wake(5.0),), "none"),
    ("a wait due later: the sweep wakes it", delivery(),
     m.WaitEntered(W.WAITING, EPOCH_NOW, EPOCH_NOW + 3600, soon=60), None, (), "none"),
    ("a wait due now: settle (the store's saga is woken)", delivery(),
     m.WaitEntered(W.WAITING, EPOCH_NOW, EPOCH_NOW - 1), None, (m.Reconcile(),), "wake"),
    ("a signal came first: go on from the store", delivery(),
     m.WaitEntered(W.RECORDED, EPOCH_NOW), None, (m.Reconcile(),), "forward"),
    ("a signal came first, last stage: completed", delivery(),
     m.WaitEntered(W.COMPLETED, EPOCH_NOW), None, (m.Ended(SagaStatus.COMPLETED),), "finish"),
    ("the saga stopped: settle it, drop the wait", delivery(),
     m.WaitEntered(W.STOPPED, EPOCH_NOW), None, (m.Reconcile(), m.Drop("stopped")), "none"),
    ("resolved before: drop", delivery(), m.WaitEntered(W.DONE, EPOCH_NOW), None,
     (m.Drop("done"),), "none"),
]  # fmt: skip

COMPENSATION_TABLE: list[tuple[str, m.Delivery, m.Event, Any, tuple[Any, ...], str]] = [
    (
        "claimed: run it",
        delivery(),
        m.CompensationClaimed(m.Outcome.CLAIMED),
        None,
        (m.Run(),),
        "none",
    ),
    (
        "busy: its owner carries the chain on",
        delivery(last=True),
        m.CompensationClaimed(m.Outcome.BUSY),
        None,
        (m.Drop("busy"),),
        "none",
    ),
    (
        "done, last of its chain: settle",
        delivery(last=True),
        m.CompensationClaimed(m.Outcome.DONE),
        None,
        (m.Reconcile(),),
        "none",
    ),
    ("done, chain goes on", delivery(), m.CompensationClaimed(m.Outcome.DONE), None, (), "none"),
    (
        "never succeeded, last: settle",
        delivery(last=True),
        m.CompensationClaimed(m.Outcome.STOPPED),
        None,
        (m.Reconcile(),),
        "none",
    ),
    (
        "saga still running (Celery fired the errback on its own): ignore",
        delivery(last=True),
        m.CompensationClaimed(m.Outcome.RUNNING),
        None,
        (m.Drop("the saga is still running (an errback Celery fired on its own)", "warning"),),
        "none",
    ),
    (
        "unknown saga: drop loudly",
        delivery(),
        m.CompensationClaimed(m.Outcome.MISSING),
        None,
        (m.Drop("missing", "error"),),
        "none",
    ),
    (
        "failed with retries left: record and retry",
        delivery(),
        m.CompensationFailed(1, 5, 2.0),
        m.RecordCompensation(failed=True),
        (m.RetryLater(2.0),),
        "retry",
    ),
    (
        "failed, retries spent: give up, chain goes on",
        delivery(),
        m.CompensationFailed(5, 5, 2.0),
        m.RecordCompensation(failed=True, gave_up=True),
        (),
        "gave up",
    ),
    (
        "failed for good (not registered), last: give up, settle",
        delivery(last=True),
        m.CompensationFailed(0, 5, 1.0, final=True),
        m.RecordCompensation(failed=True, gave_up=True),
        (m.Reconcile(),),
        "gave up",
    ),
    (
        "its task is not on this worker: give it back unrun, it comes back later",
        delivery(last=True),
        m.CompensationUnavailable(30.0),
        m.GiveBackCompensation(30.0),
        (m.RetryLater(30.0),),
        "parked",
    ),
    (
        "succeeded, last: record, settle",
        delivery(last=True),
        m.CompensationSucceeded(),
        m.RecordCompensation(),
        (m.Reconcile(),),
        "compensated",
    ),
    (
        "succeeded: record",
        delivery(),
        m.CompensationSucceeded(),
        m.RecordCompensation(),
        (),
        "compensated",
    ),
]

STALL = 60.0
SETTLE, SWEEP, RESUME = m.Settle(NOW), m.Sweep(NOW, STALL), m.Resume(NOW)
FORCE = m.Resume(NOW, force=True)
CANCEL = m.Cancel({"type": m.CANCELLED, "message": "no", "traceback": ""})
RECENT = NOW - timedelta(seconds=5)
dead, alive = -1.0, 30.0
DEADLINE_ERROR = {"type": m.DEADLINE_EXCEEDED, "message": "its deadline of 10 s passed",
                  "traceback": ""}  # fmt: skip

# (what, state, event, transition, messages, action, steps)
SAGA_TABLE: list[tuple[str, m.SagaState, m.Event, Any, tuple[Any, ...], str, tuple[int, ...]]] = [
    ("running, a step alive: wait", saga(RUNNING, step(0, S), step(1, R, lease=alive)), SWEEP,
     None, (), "none", ()),
    ("running, a step's lease ran out: send it again at once (no stall)",
     saga(RUNNING, step(0, S), step(1, R, lease=dead), step(2, P), updated_at=RECENT), SWEEP,
     None, (m.SendSteps(1),), "forward", (1, 2)),
    ("running, quiet, next step pending: send it", saga(RUNNING, step(0, S), step(1, P)), SWEEP,
     None, (m.SendSteps(1),), "forward", (1,)),
    ("running, not quiet yet: wait", saga(RUNNING, step(0, S), step(1, P), updated_at=RECENT),
     SWEEP, None, (), "none", ()),
    ("running, a retry due later: wait",
     saga(RUNNING, step(0, P, lease=3600.0)), SWEEP, None, (), "none", ()),
    ("running, past its deadline: stop it",
     saga(RUNNING, step(0, S), step(1, P), deadline=10.0), SWEEP, m.Stop(DEADLINE_ERROR),
     (m.Reconcile(),), "deadline", ()),
    ("running, nothing left to send: wait", saga(RUNNING, step(0, S)), SWEEP, None, (), "none",
     ()),
    ("running, settle with nothing to do", saga(RUNNING, step(0, S), step(1, R, lease=alive)),
     SETTLE, None, (), "none", ()),
    ("running, resume a live step: wait", saga(RUNNING, step(0, R, lease=alive)), RESUME,
     None, (), "none", ()),
    ("running, resume --force a live step: take it over, send it again",
     saga(RUNNING, step(0, R, lease=alive)), FORCE, m.TakeOver(), (m.SendSteps(0),), "forward",
     (0,)),
    ("running, resume a lost message at once", saga(RUNNING, step(0, S), step(1, P),
     updated_at=NOW), RESUME, None, (m.SendSteps(1),), "forward", (1,)),
    ("compensating, a compensation alive: wait",
     saga(COMPENSATING, step(0, StepStatus.COMPENSATING, lease=alive), step(1, StepStatus.FAILED)),
     SWEEP, None, (), "none", ()),
    ("compensating (cancelled), a step alive: its worker settles it",
     saga(COMPENSATING, step(0, S), step(1, R, lease=alive)), SETTLE, None, (), "none", ()),
    ("compensating, a step's worker lost: in doubt, undo it and the others",
     saga(COMPENSATING, step(0, S), step(1, R, lease=dead), updated_at=RECENT), SWEEP,
     m.MarkInDoubt((1,)), (m.SendCompensations((1, 0)),), "in doubt", (1, 0)),
    ("compensating, a lost step without a compensation: in doubt, settle",
     saga(COMPENSATING, step(0, R, lease=dead, compensate=None)), SETTLE, m.MarkInDoubt((0,)),
     (m.Reconcile(),), "in doubt", ()),
    ("compensating, resume --force a live step: in doubt",
     saga(COMPENSATING, step(0, S), step(1, R, lease=alive)), FORCE, m.MarkInDoubt((1,)),
     (m.SendCompensations((1, 0)),), "in doubt", (1, 0)),
    ("compensating, settle: send what is left, newest first",
     saga(COMPENSATING, step(0, S), step(1, S), step(2, StepStatus.COMPENSATED)), SETTLE, None,
     (m.SendCompensations((1, 0)),), "compensate", (1, 0)),
    ("compensating, a compensation's lease ran out: send it again",
     saga(COMPENSATING, step(0, StepStatus.COMPENSATING, lease=dead), step(1, StepStatus.FAILED)),
     SWEEP, None, (m.SendCompensations((0,)),), "compensate", (0,)),
    ("compensating, not quiet: the sweep waits",
     saga(COMPENSATING, step(0, S), step(1, StepStatus.FAILED), updated_at=RECENT), SWEEP, None,
     (), "none", ()),
    ("compensating, in-doubt and timed-out steps are undone",
     saga(COMPENSATING, step(0, StepStatus.TIMED_OUT), step(1, StepStatus.IN_DOUBT)), SETTLE,
     None, (m.SendCompensations((1, 0)),), "compensate", (1, 0)),
    ("compensating, all done: end it, compensated",
     saga(COMPENSATING, step(0, StepStatus.COMPENSATED), step(1, StepStatus.FAILED)), SETTLE,
     m.EndCompensation(), (m.Ended(SagaStatus.COMPENSATED),), "finish", ()),
    ("compensating, all done but one gave up: end it, failed",
     saga(COMPENSATING, step(0, StepStatus.COMPENSATION_FAILED), step(1, StepStatus.COMPENSATED),
          step(2, StepStatus.FAILED)), SETTLE,
     m.EndCompensation(), (m.Ended(SagaStatus.FAILED),), "finish", ()),
    ("compensating, steps without compensation: end it",
     saga(COMPENSATING, step(0, S, compensate=None), step(1, StepStatus.FAILED)), SWEEP,
     m.EndCompensation(), (m.Ended(SagaStatus.COMPENSATED),), "finish", ()),
    ("running: cancel stops it and settles", saga(RUNNING, step(0, S)), CANCEL,
     m.Stop(CANCEL.error), (m.Reconcile(),), "cancel", ()),
    ("failed: retry the compensations that gave up, newest first",
     saga(SagaStatus.FAILED, step(0, StepStatus.COMPENSATION_FAILED),
          step(1, StepStatus.COMPENSATED),
          step(2, StepStatus.COMPENSATION_FAILED), step(3, StepStatus.FAILED)),
     m.RetryCompensation(), m.Reopen(), (m.SendCompensations((2, 0)),), "compensate", (2, 0)),
] + [
    (f"{status}: {type(event).__name__} does nothing", saga(status, step(0, S)), event, None, (),
     "none", ())
    for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)
    for event in (SETTLE, SWEEP)
]  # fmt: skip


def _check(move: m.Move, transition: Any, messages: tuple[Any, ...], action: str) -> None:
    assert move.transition == transition
    assert move.messages == messages
    assert move.action == action


@pytest.mark.parametrize(
    ("state", "event", "transition", "messages", "action"),
    [row[1:] for row in STEP_TABLE],
    ids=[row[0] for row in STEP_TABLE],
)
def test_step_message_moves(
    state: m.Delivery, event: m.Event, transition: Any, messages: tuple[Any, ...], action: str
) -> None:
    """Each event of a step message gives the move in the table."""
    _check(m.decide(state, event), transition, messages, action)


@pytest.mark.parametrize(
    ("state", "event", "transition", "messages", "action"),
    [row[1:] for row in COMPENSATION_TABLE],
    ids=[row[0] for row in COMPENSATION_TABLE],
)
def test_compensation_message_moves(
    state: m.Delivery, event: m.Event, transition: Any, messages: tuple[Any, ...], action: str
) -> None:
    """Each event of a compensation message gives the move in the table."""
    _check(m.decide(state, event, compensation=True), transition, messages, action)


@pytest.mark.parametrize(
    ("state", "event", "transition", "messages", "action", "steps"),
    [row[1:] for row in SAGA_TABLE],
    ids=[row[0] for row in SAGA_TABLE],
)
def test_whole_saga_moves(
    state: m.SagaState,
    event: m.Event,
    transition: Any,
    messages: tuple[Any, ...],
    action: str,
    steps: tuple[int, ...],
) -> None:
    """Each event about a whole stored saga gives the move in the table."""
    move = m.decide(state, event)
    _check(move, transition, messages, action)
    assert move.steps == steps


def test_tables_cover_every_rule() -> None:
    """Every event each kind of state accepts appears in the tables."""
    assert {type(row[2]) for row in STEP_TABLE} == set(m.STEP_RULES)
    assert {type(row[2]) for row in COMPENSATION_TABLE} == set(m.COMPENSATION_RULES)
    # Signal: in test_waits.py; UndoAsUnit: in test_children.py
    tabled_elsewhere = {m.Resume, m.Cancel, m.Signal, m.UndoAsUnit}
    assert {type(row[2]) for row in SAGA_TABLE} | tabled_elsewhere >= set(m.SAGA_RULES)


def test_operator_requests_turned_down() -> None:
    """Cancelling a saga that is not running, or retrying one that is not FAILED, is declined."""
    for status in (COMPENSATING, SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED):
        move = m.decide(saga(status, step(0, S)), CANCEL)
        assert (move.accepted, move.transition, move.messages) == (False, None, ())
    for status in (RUNNING, COMPENSATING, SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
        move = m.decide(saga(status, step(0, S)), m.RetryCompensation())
        assert (move.accepted, move.transition) == (False, None)


@pytest.mark.parametrize(
    "status", [SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED]
)
def test_resuming_a_finished_saga_is_an_error(status: SagaStatus) -> None:
    """Resuming a finished saga raises SagaStateError naming its status."""
    with pytest.raises(SagaStateError, match=status.value):
        m.decide(saga(status, step(0, S)), RESUME)


def test_unexpected_pairs_are_errors() -> None:
    """An event that the kind of state does not take raises IllegalEvent."""
    step_events = [row[2] for row in STEP_TABLE]
    compensation_events = [row[2] for row in COMPENSATION_TABLE]
    saga_events = [SETTLE, SWEEP, RESUME, CANCEL, m.RetryCompensation()]
    for event in compensation_events + saga_events:
        with pytest.raises(m.IllegalEvent):
            m.decide(delivery(), event)
    for event in step_events + saga_events:
        with pytest.raises(m.IllegalEvent):
            m.decide(delivery(), event, compensation=True)
    for event in step_events + compensation_events:
        with pytest.raises(m.IllegalEvent):
            m.decide(saga(RUNNING, step(0, S)), event)
    with pytest.raises(m.IllegalEvent):
        m.decide(delivery(), m.Claimed(m.Outcome.RECORDED))


def test_no_move_ends_a_saga_with_a_step_running() -> None:
    """Whatever the leases, a move that ends a saga never leaves a step RUNNING in it."""
    for lease in (dead, alive):
        for status in (RUNNING, COMPENSATING):
            state = saga(status, step(0, S), step(1, R, lease=lease), step(2, P))
            for event in (SETTLE, SWEEP, RESUME, FORCE):
                move = m.decide(state, event)
                assert not isinstance(move.transition, m.EndCompensation), (status, lease, event)


def test_a_lease_end_is_not_progress() -> None:
    """A compensating saga whose step lease ran out long ago is acted on at once."""
    lost = replace(step(1, R, lease=dead), started_at=LONG_AGO)
    state = saga(COMPENSATING, step(0, S), lost)
    assert m.decide(state, SWEEP).action == "in doubt"
