"""The rules: for each kind of state and event, the move."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from ..errors import SagaStateError
from ..records import StepRecord
from ..status import SagaStatus, StepStatus
from ._children import child_ended, stopped_parent
from ._events import (
    AttemptFailed,
    AttemptReleased,
    AttemptSucceeded,
    Cancel,
    Claimed,
    CompensationClaimed,
    CompensationFailed,
    CompensationSucceeded,
    CompensationUnavailable,
    Delivered,
    Event,
    FailureRecorded,
    Resume,
    RetryCompensation,
    Settle,
    Signal,
    Stopped,
    SuccessRecorded,
    Sweep,
    UndoAsUnit,
    WaitEntered,
)
from ._moves import (
    Claim,
    Complete,
    Drop,
    EndCompensation,
    Ended,
    Fail,
    GiveBackCompensation,
    Join,
    MarkInDoubt,
    Message,
    Move,
    PassOn,
    QueueCompensations,
    Reconcile,
    RecordCompensation,
    Release,
    Reopen,
    ReopenChild,
    RetryLater,
    Revoke,
    Run,
    SendCompensations,
    SendNext,
    SendStage,
    SendSteps,
    Stop,
    TakeOver,
)
from ._state import (
    DEADLINE_EXCEEDED,
    Delivery,
    IllegalEvent,
    Outcome,
    SagaState,
)
from ._waiting import signal_rule, wait_entered, wake

__all__ = ["COMPENSATION_RULES", "SAGA_RULES", "STEP_RULES", "decide"]


def _nothing(reason: str, accepted: bool = True) -> Move:
    return Move(reason=reason, accepted=accepted)


def _deadline_error(seconds: float) -> dict[str, Any]:
    """The error a saga stopped by its ``deadline=`` records."""
    message = f"its deadline of {seconds:g} s passed"
    return {"type": DEADLINE_EXCEEDED, "message": message, "traceback": ""}


def _step_delivered(d: Delivery, e: Delivered) -> Move:
    if d.deadline is not None and e.now > d.deadline:
        error = _deadline_error(d.deadline - (d.started or d.deadline))
        return Move(Stop(error), action="deadline", reason="deadline")
    return Move(Claim(), reason="claim the step")


def _stopped(d: Delivery, e: Stopped) -> Move:
    if e.applied:  # this delivery stopped it: settle what is left to undo
        return Move(messages=(Reconcile(), Drop("deadline")), action="deadline")
    return Move(messages=(Drop("deadline"),), reason="stopped already")


def _step_claimed(d: Delivery, e: Claimed) -> Move:
    outcome = e.outcome
    if outcome is Outcome.CLAIMED:
        return Move(messages=(Run(),), reason="claimed")
    if outcome is Outcome.DONE:  # a redelivery of a step that succeeded: hand it on
        return Move(
            None, (PassOn(e.result), SendNext()), "forward", outcome.value, steps=(d.index + 1,)
        )
    if outcome is Outcome.HALTED:  # cancelled after the step before succeeded
        return Move(messages=(Reconcile(), Drop(outcome.value)), reason=outcome.value)
    if outcome is Outcome.MISSING:
        return Move(messages=(Drop("missing", "error"),), reason="missing")
    if outcome in (Outcome.BUSY, Outcome.STOPPED):
        return Move(messages=(Drop(outcome.value),), reason=outcome.value)
    raise IllegalEvent(d.saga_id, "a step claim", e, "a claim outcome")


def _others(d: Delivery) -> tuple[int, ...]:
    """The steps before this one to undo (without this step's own in-doubt entry)."""
    return tuple(i for i in d.undo if i != d.index)


def _attempt_failed(d: Delivery, e: AttemptFailed) -> Move:
    if e.retryable and e.attempt < e.attempts:
        return Move(
            Release(e.delay), (RetryLater(e.delay),), "retry", f"attempt {e.attempt} failed"
        )
    in_doubt = e.timed_out and e.undo_on_timeout
    undo = d.undo if in_doubt else _others(d)
    step_status = StepStatus.TIMED_OUT if in_doubt else StepStatus.FAILED
    # With groups, members may still be running: the store settles it after them.
    compensating = bool(undo) or d.grouped
    saga_status = SagaStatus.COMPENSATING if compensating else SagaStatus.COMPENSATED
    return Move(Fail(step_status, saga_status), action="fail", reason="failed for good")


def _failure_recorded(d: Delivery, e: FailureRecorded) -> Move:
    if not e.recorded:
        return Move(messages=(Drop("lost its claim", "warning"),), reason="lost its claim")
    if d.grouped:  # no errbacks: what to undo, and when, is decided from the store
        return Move(messages=(Reconcile(),), action="compensate", reason="failed for good")
    if e.saga_status is SagaStatus.COMPENSATING:
        undo = d.undo if e.step_status is StepStatus.TIMED_OUT else _others(d)
        return Move(messages=(SendCompensations(undo),), action="compensate", steps=undo)
    if e.moved:  # nothing before it to undo: the saga ended with this write
        return Move(messages=(Ended(SagaStatus.COMPENSATED),), action="finish")
    return Move(messages=(Reconcile(),), reason="stopped meanwhile")  # it was cancelled


def _attempt_released(d: Delivery, e: AttemptReleased) -> Move:
    return Move(Release(e.delay), reason="released")


def _attempt_succeeded(d: Delivery, e: AttemptSucceeded) -> Move:
    if d.ends:
        return Move(Join(d.ends, d.final), reason="succeeded: join")
    return Move(Complete(last=d.is_last_step), reason="succeeded")


def _success_recorded(d: Delivery, e: SuccessRecorded) -> Move:
    outcome = e.outcome
    if outcome is Outcome.LOST:
        return Move(messages=(Drop("lost its claim", "warning"),), reason="lost its claim")
    if outcome is Outcome.RECORDED:
        if d.ends:  # a member whose siblings are not all done: the last of them joins
            return Move(reason="waiting for the other members of its group")
        return Move(messages=(SendNext(),), action="forward", steps=(d.index + 1,))
    if outcome is Outcome.JOINED:  # every member done: this one sends the next stage
        previous = [*e.results] if d.member else e.results[0]
        return Move(
            messages=(SendStage(d.stage + 1, (previous,)),),
            action="forward",
            reason="its stage joined",
        )
    if outcome is Outcome.COMPLETED:
        return Move(messages=(Ended(SagaStatus.COMPLETED),), action="finish")
    if outcome is Outcome.HALTED:  # cancelled while the last step ran
        return Move(messages=(Reconcile(),), reason="halted")
    raise IllegalEvent(d.saga_id, "a recorded step", e, "a record outcome")


# -- the rules: compensation messages --------------------------------------------------


def _then(d: Delivery, *messages: Message) -> tuple[Message, ...]:
    """After this compensation: the last of a chain settles the saga."""
    return (*messages, Reconcile()) if d.last else messages


def _compensation_claimed(d: Delivery, e: CompensationClaimed) -> Move:
    outcome = e.outcome
    if outcome is Outcome.CLAIMED:
        return Move(messages=(Run(),), reason="claimed")
    if outcome is Outcome.BUSY:  # its owner carries the rest of the chain on
        return Move(messages=(Drop("busy"),), reason="busy")
    if outcome in (Outcome.DONE, Outcome.STOPPED):  # done already, or nothing to undo
        return Move(messages=_then(d), reason=outcome.value)
    if outcome is Outcome.RUNNING:
        # An errback Celery fired on its own (a lost worker, a failed publish) for a
        # saga whose failure the store never recorded: the store decides, not Celery.
        reason = "the saga is still running (an errback Celery fired on its own)"
        return Move(messages=(Drop(reason, "warning"),), reason=reason)
    if outcome is Outcome.MISSING:
        return Move(messages=(Drop("missing", "error"),), reason="missing")
    raise IllegalEvent(d.saga_id, "a compensation claim", e, "a claim outcome")


def _compensation_failed(d: Delivery, e: CompensationFailed) -> Move:
    if not e.final and e.retries < e.max_retries:
        return Move(RecordCompensation(failed=True), (RetryLater(e.delay),), "retry")
    return Move(RecordCompensation(failed=True, gave_up=True), _then(d), "gave up")


def _compensation_unavailable(d: Delivery, e: CompensationUnavailable) -> Move:
    # parked: a worker of another deploy took it; one that has the task runs it later
    reason = "its task is not registered on this worker"
    return Move(GiveBackCompensation(e.delay), (RetryLater(e.delay),), "parked", reason)


def _compensation_succeeded(d: Delivery, e: CompensationSucceeded) -> Move:
    return Move(RecordCompensation(), _then(d), "compensated")


# -- the rules: the whole saga ---------------------------------------------------------

_UNDO = frozenset({StepStatus.SUCCEEDED, StepStatus.TIMED_OUT, StepStatus.IN_DOUBT})


def _alive(step: StepRecord, now: datetime) -> bool:
    return step.lease_expires_at is not None and step.lease_expires_at > now


def _last_activity(s: SagaState) -> datetime:
    """The latest moment something happened to the saga.

    A lease's end is not one; a retry's due time is: nothing is expected before it.
    """
    moments = [s.created_at, s.updated_at]
    for step in s.steps:
        moments += [
            m
            for m in (
                step.started_at,
                step.finished_at,
                step.compensation_started_at,
                step.compensation_finished_at,
                step.lease_expires_at if step.status is StepStatus.PENDING else None,
            )
            if m is not None
        ]
    return max(moments)


def _to_undo(steps: Sequence[StepRecord], now: datetime) -> tuple[int, ...]:
    """Steps whose compensation is still to run, newest first."""
    return tuple(
        s.index
        for s in reversed(steps)
        if s.compensate
        and (s.status in _UNDO or (s.status is StepStatus.COMPENSATING and not _alive(s, now)))
    )


def _due(s: SagaState) -> tuple[int, ...]:
    """The steps whose message should be on its way.

    In the first stage not done yet, each branch's first step that has not succeeded,
    if it has not started.
    """
    status = {st.index: st.status for st in s.steps}
    for stage in s.shape.stages:
        if all(status.get(end) is StepStatus.SUCCEEDED for end in stage.ends):
            continue
        due = []
        for branch in stage.branches:
            waiting = next((i for i in branch if status.get(i) is not StepStatus.SUCCEEDED), None)
            if waiting is not None and status.get(waiting) is StepStatus.PENDING:
                due.append(waiting)
        return tuple(due)
    return ()


def _send_steps(s: SagaState, starts: Sequence[int]) -> tuple[tuple[Message, ...], tuple[int, ...]]:
    """The messages that send the runs from ``starts``, and every step they carry."""
    shape = s.shape
    return (
        tuple(SendSteps(start) for start in starts),
        tuple(i for start in starts for i in shape.run_from(start)),
    )


def _compensate(s: SagaState, undo: Sequence[int]) -> tuple[Message, ...]:
    """The compensation chains to send now (one per branch of a group being undone)."""
    return tuple(SendCompensations(chain) for chain in s.shape.undo_batch(undo))


def _past_deadline(s: SagaState, now: datetime) -> Move | None:
    """Stop the saga if its ``deadline=`` passed (None: it has none, or it has not)."""
    if s.deadline is None or now <= s.created_at + timedelta(seconds=s.deadline):
        return None
    error = _deadline_error(s.deadline)
    return Move(Stop(error), (Reconcile(),), "deadline", f"past its deadline of {s.deadline:g} s")


def _what_next(s: SagaState, now: datetime, stall: float | None, force: bool = False) -> Move:
    """What is left to do with a saga that is not finished.

    ``stall`` (the sweep's): messages may still be queued unless nothing happened for
    that long; ``None``: a shell just did its part, act at once.
    """
    quiet = stall is None or now - _last_activity(s) >= timedelta(seconds=stall)

    def lost(step: StepRecord) -> bool:
        return step.status is StepStatus.RUNNING and (force or not _alive(step, now))

    live = [st.index for st in s.steps if st.status is StepStatus.RUNNING and not lost(st)]
    gone = tuple(st.index for st in s.steps if lost(st))
    if s.status is SagaStatus.RUNNING:
        stop = _past_deadline(s, now)
        if stop is not None and not live:
            return stop
        if gone:  # sent again, with the rest of its chain (its group's siblings run on)
            messages, steps = _send_steps(s, gone)
            why = f"the owner of step {gone[0]} is known dead"
            return Move(
                TakeOver() if force else None,
                messages,
                action="forward",
                reason=why if force else f"the lease of step {gone[0]} ran out",
                steps=steps,
            )
        if live:
            return _nothing(f"step {live[0]} is running")
        if not quiet:
            return _nothing("progress within saga_recovery_stall")
        due = _due(s)
        if not due:
            return _nothing("no step left to send")
        messages, steps = _send_steps(s, due)
        return Move(
            messages=messages,
            action="forward",
            reason=f"no progress since step {due[0]} was due",
            steps=steps,
        )
    if s.status is SagaStatus.WAITING:
        stop = _past_deadline(s, now)
        if stop is not None:
            return stop
        for st in s.steps:
            if st.status is not StepStatus.WAITING:
                continue
            if s.shape.stage_of(st.index).child is not None:  # it waits for its child saga
                child = s.children.get(st.index)
                moved = None if child is None else child_ended(s, st, child)
                if moved is not None:
                    return moved
                continue
            until = st.lease_expires_at
            if until is not None and until <= now:
                return wake(s, st)
        return _nothing("waiting")
    if s.status is SagaStatus.COMPENSATING:
        first = stopped_parent(s) if s.shape.children else None
        if first is not None:
            return first
        if any(
            st.status is StepStatus.COMPENSATING and _alive(st, now) and not force for st in s.steps
        ):
            return _nothing("a compensation is running")
        if live:  # members in flight finish (or, fail_fast, are stopped) before any undo
            if s.shape.fail_fast:
                return Move(
                    messages=(Revoke(tuple(live)),),
                    action="revoke",
                    reason=f"fail_fast: stop step {live[0]}, still running",
                    steps=tuple(live),
                )
            return _nothing(f"step {live[0]} is running (the saga was stopped)")
        if gone:  # its worker died: it may have taken effect; undo it too
            undo = _to_undo([_in_doubt(st) if st.index in gone else st for st in s.steps], now)
            then = _compensate(s, undo) if undo else (Reconcile(),)
            return Move(
                MarkInDoubt(gone),
                then,
                "in doubt",
                f"the lease of step {gone[0]} ran out while compensating",
                steps=_sent(then),
            )
        if not quiet:
            return _nothing("progress within saga_recovery_stall")
        undo = _to_undo(s.steps, now)
        if undo:
            reason = "no progress in compensating" if stall is not None else "left to undo"
            messages = _compensate(s, undo)
            sent = _sent(messages)
            queue = QueueCompensations(sent) if s.shape.grouped else None
            return Move(queue, messages, action="compensate", reason=reason, steps=sent)
        gave_up = any(st.status is StepStatus.COMPENSATION_FAILED for st in s.steps)
        ended = Ended(SagaStatus.FAILED if gave_up else SagaStatus.COMPENSATED)
        return Move(EndCompensation(), (ended,), "finish", "every compensation is done")
    return _nothing(f"the saga is {s.status}")


def _sent(messages: Sequence[Message]) -> tuple[int, ...]:
    """The steps whose compensations these messages send, in order."""
    return tuple(i for m in messages if isinstance(m, SendCompensations) for i in m.indices)


def _in_doubt(step: StepRecord) -> StepRecord:
    return replace(step, status=StepStatus.IN_DOUBT)


def _settle(s: SagaState, e: Settle) -> Move:
    return _what_next(s, e.now, None)


def _sweep(s: SagaState, e: Sweep) -> Move:
    return _what_next(s, e.now, e.stall)


def _resume(s: SagaState, e: Resume) -> Move:
    if s.status.is_terminal:
        raise SagaStateError(s.saga_id, s.status.value, "resumed", "a RUNNING or COMPENSATING")
    return _what_next(s, e.now, 0.0, force=e.force)


def _cancel(s: SagaState, e: Cancel) -> Move:
    if s.status not in (SagaStatus.RUNNING, SagaStatus.WAITING):
        return _nothing(f"the saga is {s.status}", accepted=False)
    return Move(Stop(e.error), (Reconcile(),), "cancel", str(e.error.get("message", "")))


def _retry_compensation(s: SagaState, e: RetryCompensation) -> Move:
    if s.status is not SagaStatus.FAILED:
        return _nothing(f"the saga is {s.status}", accepted=False)
    failed = tuple(
        st.index for st in reversed(s.steps) if st.status is StepStatus.COMPENSATION_FAILED
    )
    if not failed:  # it failed without undoing (a wait's on_timeout="fail"): undo it now
        messages = _compensate(s, _to_undo(s.steps, s.updated_at)) or (Reconcile(),)
        return Move(Reopen(), messages, "compensate", "undo now", steps=_sent(messages))
    messages = _compensate(s, failed)
    return Move(Reopen(), messages, "compensate", "retried", steps=_sent(messages))


def _undo_as_unit(s: SagaState, e: UndoAsUnit) -> Move:
    if s.status is SagaStatus.COMPLETED:
        return Move(ReopenChild(e.error), (Reconcile(),), "compensate", "its parent compensates")
    if s.status is SagaStatus.FAILED:  # its undo gave up before: try it again
        return _retry_compensation(s, RetryCompensation())
    return _nothing(f"the saga is {s.status}")


# -- the table -------------------------------------------------------------------------

Rule: TypeAlias = Callable[[Any, Any], Move]

#: Rules for step messages, by event.
STEP_RULES: Mapping[type, Rule] = {
    Delivered: _step_delivered,
    Stopped: _stopped,
    Claimed: _step_claimed,
    AttemptFailed: _attempt_failed,
    AttemptReleased: _attempt_released,
    AttemptSucceeded: _attempt_succeeded,
    WaitEntered: wait_entered,
    SuccessRecorded: _success_recorded,
    FailureRecorded: _failure_recorded,
}
#: Rules for compensation messages, by event.
COMPENSATION_RULES: Mapping[type, Rule] = {
    CompensationClaimed: _compensation_claimed,
    CompensationFailed: _compensation_failed,
    CompensationSucceeded: _compensation_succeeded,
    CompensationUnavailable: _compensation_unavailable,
}
_ANY = tuple(SagaStatus)
#: Rules for the whole stored saga, by event, with the statuses that accept it.
SAGA_RULES: Mapping[type, tuple[Rule, tuple[SagaStatus, ...]]] = {
    Settle: (_settle, _ANY),
    Sweep: (_sweep, _ANY),
    Resume: (_resume, _ANY),
    Cancel: (_cancel, _ANY),
    RetryCompensation: (_retry_compensation, _ANY),
    UndoAsUnit: (_undo_as_unit, _ANY),
    Signal: (signal_rule, _ANY),
}


def decide(state: Delivery | SagaState, event: Event, *, compensation: bool = False) -> Move:
    """The move for ``event`` in ``state``.

    A :class:`Delivery` takes the events of a step message (or, with
    ``compensation=True``, of a compensation message); a :class:`SagaState` the events
    about the whole saga. Anything else raises :class:`IllegalEvent`.
    """
    if isinstance(state, Delivery):
        rules = COMPENSATION_RULES if compensation else STEP_RULES
        rule = rules.get(type(event))
        if rule is None:
            kind = "a compensation message" if compensation else "a step message"
            raise IllegalEvent(state.saga_id, kind, event, "an event of its own message")
        return rule(state, event)
    entry = SAGA_RULES.get(type(event))
    if entry is None or state.status not in entry[1]:
        allowed = ", ".join(s.value for s in entry[1]) if entry else "no"
        raise IllegalEvent(state.saga_id, state.status.value, event, f"a {allowed}")
    return entry[0](state, event)
