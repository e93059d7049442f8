"""The saga state machine: from what is stored of a saga and one event, the next move.

This module is the one place where a rule about sagas lives ("after a step's final
failure, undo the steps before it, newest first"; "a step whose worker died while the
saga compensates is in doubt"). It is pure: no Celery, no SQLAlchemy, no clock, no
I/O. The shells (the step and compensation tasks, the producer, the operator's
commands, the recovery sweep) turn what happened into an :data:`Event`, ask
:func:`decide` for the :class:`Move`, commit its :attr:`~Move.transition` to the store
and then carry out its :attr:`~Move.messages`. A transition is a conditional write;
what it found (the claim's outcome, whether the row was still owned) comes back as the
next event.

Two kinds of state are decided on:

- :class:`Delivery`: what a step or compensation message says of its saga (saga id,
  step index, step count, the compensations to run if it fails, the deadline). The hot
  path decides from it without reading the store.
- :class:`SagaState`: the saga row and every step row as stored. Decisions that need
  the whole saga (after a cancel, at the end of the compensations, the sweep, an
  operator's command) are made from it.

An event that the state does not accept raises :class:`IllegalEvent`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from .errors import SagaStateError
from .records import StepRecord
from .status import SagaStatus, StepStatus

__all__ = [
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "IN_DOUBT",
    "AttemptFailed",
    "AttemptReleased",
    "AttemptSucceeded",
    "Cancel",
    "Claim",
    "ClaimCompensation",
    "Claimed",
    "CompensationClaimed",
    "CompensationFailed",
    "CompensationSucceeded",
    "Complete",
    "Delivered",
    "Delivery",
    "Drop",
    "EndCompensation",
    "Ended",
    "Event",
    "Fail",
    "FailureRecorded",
    "IllegalEvent",
    "MarkInDoubt",
    "Move",
    "Outcome",
    "PassOn",
    "Reconcile",
    "RecordCompensation",
    "Release",
    "Reopen",
    "Resume",
    "RetryCompensation",
    "RetryLater",
    "Run",
    "SagaState",
    "SendCompensations",
    "SendNext",
    "SendSteps",
    "Settle",
    "Stop",
    "SuccessRecorded",
    "Sweep",
    "TakeOver",
    "decide",
]

#: The ``type`` of the error a cancelled saga records.
CANCELLED = "celery_saga.Cancelled"
#: The ``type`` of the error a saga stopped by its ``deadline=`` records.
DEADLINE_EXCEEDED = "celery_saga.DeadlineExceeded"
#: The ``type`` of the error of a step whose worker was lost while the saga compensated.
IN_DOUBT = "celery_saga.InDoubt"


class IllegalEvent(SagaStateError):
    """The saga's state does not accept this event (a bug in a shell, or a stale call)."""

    def __init__(self, saga_id: str, status: str, event: object, allowed: str) -> None:
        super().__init__(saga_id, status, f"given {type(event).__name__}", allowed)


class Outcome(enum.Enum):
    """What a conditional write found (the store's claim and record results)."""

    CLAIMED = "claimed"  #: the caller owns the step (or compensation) now
    DONE = "done"  #: it ran to the end already
    BUSY = "busy"  #: another delivery owns it under a live lease
    STOPPED = "stopped"  #: the saga is not in a state where this may run
    HALTED = "halted"  #: the saga was stopped (cancelled) before this could run or end it
    RUNNING = "running"  #: a compensation for a saga that is still running forward
    MISSING = "missing"  #: the store does not know the saga
    LOST = "lost"  #: the caller no longer owns the step: nothing was written
    RECORDED = "recorded"  #: written; the saga goes on
    COMPLETED = "completed"  #: written, and the saga completed with it


# -- state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """What one step or compensation message says of its saga.

    ``undo`` lists the steps whose compensations run if this step fails for good,
    newest first (this step's own first when it is in doubt after a timeout).
    ``deadline`` and ``started`` are epoch seconds (``None``: no deadline).
    """

    saga_id: str
    name: str
    index: int
    count: int
    undo: tuple[int, ...] = ()
    deadline: float | None = None
    started: float | None = None
    last: bool = False  #: for a compensation: the last of its chain (it settles the saga)

    @property
    def is_last_step(self) -> bool:
        """Whether this is the saga's last forward step."""
        return self.index == self.count - 1


@dataclass(frozen=True)
class SagaState:
    """A saga as stored: its row's fields the machine needs and its steps in plan order."""

    saga_id: str
    name: str
    status: SagaStatus
    steps: tuple[StepRecord, ...]
    created_at: datetime
    updated_at: datetime
    deadline: float | None = None  #: seconds after ``created_at``
    error: Mapping[str, Any] | None = None
    failed_step: int | None = None


# -- events --------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """A step message arrived (``now``: epoch seconds)."""

    now: float


@dataclass(frozen=True)
class Claimed:
    """The step's claim was tried; ``result``: the stored result when ``DONE``."""

    outcome: Outcome
    result: Any = None


@dataclass(frozen=True)
class AttemptFailed:
    """The step's body raised.

    ``retryable``/``attempts``: what its retry policy says (``attempts`` 0: no policy);
    ``delay``: the policy's delay before the next attempt; ``timed_out``: it hit its
    soft time limit; ``undo_on_timeout``: ``compensate_on_timeout=True``.
    """

    attempt: int
    retryable: bool = False
    attempts: int = 0
    delay: float = 0.0
    timed_out: bool = False
    undo_on_timeout: bool = False


@dataclass(frozen=True)
class AttemptReleased:
    """The body raised Celery's ``Retry``, ``Reject`` or ``Ignore``.

    The message comes back or is dropped on purpose; ``delay``: seconds until a retry
    is due.
    """

    delay: float | None = None


@dataclass(frozen=True)
class AttemptSucceeded:
    """The step's body returned a value the store can keep."""


@dataclass(frozen=True)
class SuccessRecorded:
    """Recording the step's result found ``outcome``.

    ``LOST``, ``RECORDED``, ``COMPLETED`` or ``HALTED``.
    """

    outcome: Outcome


@dataclass(frozen=True)
class FailureRecorded:
    """Recording the step's final failure was tried.

    ``recorded`` is False if the claim was lost; ``moved``: the saga row changed with
    it (False: it had been stopped meanwhile).
    """

    recorded: bool
    moved: bool
    saga_status: SagaStatus
    step_status: StepStatus = StepStatus.FAILED


@dataclass(frozen=True)
class CompensationClaimed:
    """The compensation's claim was tried."""

    outcome: Outcome


@dataclass(frozen=True)
class CompensationFailed:
    """The compensation raised.

    ``retries`` so far, of ``max_retries``; ``final``: no retry can help (the
    compensation task is not registered here).
    """

    retries: int
    max_retries: int
    delay: float
    final: bool = False


@dataclass(frozen=True)
class CompensationSucceeded:
    """The compensation returned."""


@dataclass(frozen=True)
class Settle:
    """A shell did its part: what is left to do, from the whole stored saga, at once.

    Sent after a cancel, a halted claim, the last compensation of a chain.
    """

    now: datetime


@dataclass(frozen=True)
class Sweep:
    """The recovery sweep looks at the saga: act on what stopped moving.

    ``stall``: seconds without progress after which queued messages count as lost.
    """

    now: datetime
    stall: float


@dataclass(frozen=True)
class Resume:
    """An operator drives the saga on now; ``force``: its running owners are known dead."""

    now: datetime
    force: bool = False


@dataclass(frozen=True)
class Cancel:
    """Stop the saga (an operator's cancel, or its deadline): ``error`` is recorded."""

    error: Mapping[str, Any]


@dataclass(frozen=True)
class RetryCompensation:
    """An operator retries the compensations of a ``FAILED`` saga after a fix."""


Event: TypeAlias = (
    Delivered
    | Claimed
    | AttemptFailed
    | AttemptReleased
    | AttemptSucceeded
    | SuccessRecorded
    | FailureRecorded
    | CompensationClaimed
    | CompensationFailed
    | CompensationSucceeded
    | Settle
    | Sweep
    | Resume
    | Cancel
    | RetryCompensation
)


# -- transitions: the store writes a move commits first --------------------------------


@dataclass(frozen=True)
class Claim:
    """Claim the step (fencing token and lease), if the saga is running."""


@dataclass(frozen=True)
class Complete:
    """Record the step's result (and, after the last step, complete the saga)."""

    last: bool


@dataclass(frozen=True)
class Fail:
    """Record the step's final failure and move the saga to ``saga_status``."""

    step_status: StepStatus
    saga_status: SagaStatus


@dataclass(frozen=True)
class Release:
    """Give the claimed step back; its retry is due in ``delay`` seconds (None: unknown)."""

    delay: float | None = None


@dataclass(frozen=True)
class Stop:
    """Stop a running saga (``COMPENSATING`` with ``error``): no step may be claimed."""

    error: Mapping[str, Any]


@dataclass(frozen=True)
class TakeOver:
    """End the leases of the saga's running steps now: their owners are known dead."""


@dataclass(frozen=True)
class MarkInDoubt:
    """Steps whose worker was lost while the saga compensates: they may have taken effect."""

    indices: tuple[int, ...]


@dataclass(frozen=True)
class ClaimCompensation:
    """Claim the compensation of a succeeded (or in-doubt) step of a compensating saga."""


@dataclass(frozen=True)
class RecordCompensation:
    """Record a compensation attempt: done (``failed`` False), to be retried, or given up."""

    failed: bool = False
    gave_up: bool = False


@dataclass(frozen=True)
class EndCompensation:
    """End a compensating saga: ``FAILED`` if a compensation gave up, else ``COMPENSATED``."""


@dataclass(frozen=True)
class Reopen:
    """Make a ``FAILED`` saga's given-up compensations claimable again."""


Transition: TypeAlias = (
    Claim
    | Complete
    | Fail
    | Release
    | Stop
    | TakeOver
    | MarkInDoubt
    | ClaimCompensation
    | RecordCompensation
    | EndCompensation
    | Reopen
)


# -- messages: what a move does after its transition committed -------------------------


@dataclass(frozen=True)
class Run:
    """Run the body (the step's function, or the compensation)."""


@dataclass(frozen=True)
class PassOn:
    """A step that succeeded before: hand its stored result on, without running it."""

    result: Any = None


@dataclass(frozen=True)
class SendNext:
    """Send the rest of this message's chain, the step's result first in line."""


@dataclass(frozen=True)
class SendSteps:
    """Send the plan's steps from ``start`` on (the step before's stored result first)."""

    start: int


@dataclass(frozen=True)
class SendCompensations:
    """Send the compensations of these steps as one chain, in this order."""

    indices: tuple[int, ...]


@dataclass(frozen=True)
class RetryLater:
    """Send this message again in ``countdown`` seconds (the attempt was recorded)."""

    countdown: float


@dataclass(frozen=True)
class Reconcile:
    """Read the whole stored saga and carry out what :class:`Settle` decides."""


@dataclass(frozen=True)
class Drop:
    """Do nothing more with this message; ``level`` is how loudly to say so."""

    reason: str
    level: str = "info"


@dataclass(frozen=True)
class Ended:
    """The saga ended with this move: say so (signals, spans, metrics).

    ``status`` is how it ended; ``None`` when the store's write decided it (ending the
    compensations: ``FAILED`` if one gave up, else ``COMPENSATED``).
    """

    status: SagaStatus | None = None


Message: TypeAlias = (
    Run | PassOn | SendNext | SendSteps | SendCompensations | RetryLater | Drop | Ended | Reconcile
)


@dataclass(frozen=True)
class Move:
    """What to do: commit ``transition`` (if any), then carry out ``messages`` in order.

    ``action`` names the move for people (the sweep's report): ``"forward"``,
    ``"compensate"``, ``"finish"``, ``"deadline"``, ``"in doubt"``, ``"none"``...
    ``accepted`` is False for an operator's request the state turns down politely
    (cancelling a saga that is not running).
    """

    transition: Transition | None = None
    messages: tuple[Message, ...] = ()
    action: str = "none"
    reason: str = ""
    accepted: bool = True
    steps: tuple[int, ...] = field(default=())


def _nothing(reason: str, accepted: bool = True) -> Move:
    return Move(reason=reason, accepted=accepted)


# -- the rules: step messages ----------------------------------------------------------


def _step_delivered(d: Delivery, e: Delivered) -> Move:
    if d.deadline is not None and e.now > d.deadline:
        seconds = d.deadline - (d.started or d.deadline)
        error = {
            "type": DEADLINE_EXCEEDED,
            "message": f"its deadline of {seconds:g} s passed",
            "traceback": "",
        }
        return Move(Stop(error), (Reconcile(), Drop("deadline")), "deadline", "deadline")
    return Move(Claim(), reason="claim the step")


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
    saga_status = SagaStatus.COMPENSATING if undo else SagaStatus.COMPENSATED
    return Move(Fail(step_status, saga_status), action="fail", reason="failed for good")


def _failure_recorded(d: Delivery, e: FailureRecorded) -> Move:
    if not e.recorded:
        return Move(messages=(Drop("lost its claim", "warning"),), reason="lost its claim")
    if e.saga_status is SagaStatus.COMPENSATING:
        undo = d.undo if e.step_status is StepStatus.TIMED_OUT else _others(d)
        return Move(messages=(SendCompensations(undo),), action="compensate", steps=undo)
    if e.moved:  # nothing before it to undo: the saga ended with this write
        return Move(messages=(Ended(SagaStatus.COMPENSATED),), action="finish")
    return Move(messages=(Reconcile(),), reason="stopped meanwhile")  # it was cancelled


def _attempt_released(d: Delivery, e: AttemptReleased) -> Move:
    return Move(Release(e.delay), reason="released")


def _attempt_succeeded(d: Delivery, e: AttemptSucceeded) -> Move:
    return Move(Complete(last=d.is_last_step), reason="succeeded")


def _success_recorded(d: Delivery, e: SuccessRecorded) -> Move:
    outcome = e.outcome
    if outcome is Outcome.LOST:
        return Move(messages=(Drop("lost its claim", "warning"),), reason="lost its claim")
    if outcome is Outcome.RECORDED:
        return Move(messages=(SendNext(),), action="forward", steps=(d.index + 1,))
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


def _past_deadline(s: SagaState, now: datetime) -> bool:
    return s.deadline is not None and now > s.created_at + timedelta(seconds=s.deadline)


def _drive(s: SagaState, now: datetime, stall: float | None, force: bool = False) -> Move:
    """What is left to do with a saga that is not finished.

    ``stall`` (the sweep's): messages may still be queued unless nothing happened for
    that long; ``None``: a shell just did its part, act at once.
    """
    quiet = stall is None or now - _last_activity(s) >= timedelta(seconds=stall)

    def lost(step: StepRecord) -> bool:
        return step.status is StepStatus.RUNNING and (force or not _alive(step, now))

    if s.status is SagaStatus.RUNNING:
        live = [st for st in s.steps if st.status is StepStatus.RUNNING and not lost(st)]
        if live:
            return _nothing(f"step {live[0].index} is running")
        if _past_deadline(s, now):
            error = {
                "type": DEADLINE_EXCEEDED,
                "message": f"its deadline of {s.deadline:g} s passed",
                "traceback": "",
            }
            return Move(
                Stop(error), (Reconcile(),), "deadline", f"past its deadline of {s.deadline:g} s"
            )
        for step in s.steps:
            if lost(step):
                start = step.index
                why = f"the owner of step {start} is known dead"
                return Move(
                    TakeOver() if force else None,
                    (SendSteps(start),),
                    action="forward",
                    reason=why if force else f"the lease of step {start} ran out",
                    steps=tuple(range(start, len(s.steps))),
                )
        if not quiet:
            return _nothing("progress within saga_recovery_stall")
        pending = next((st for st in s.steps if st.status is StepStatus.PENDING), None)
        if pending is None:
            return _nothing("no step left to send")
        start = pending.index
        return Move(
            messages=(SendSteps(start),),
            action="forward",
            reason=f"no progress since step {start} was due",
            steps=tuple(range(start, len(s.steps))),
        )
    if s.status is SagaStatus.COMPENSATING:
        if any(
            st.status is StepStatus.COMPENSATING and _alive(st, now) and not force for st in s.steps
        ):
            return _nothing("a compensation is running")
        live = [st for st in s.steps if st.status is StepStatus.RUNNING and not lost(st)]
        if live:
            return _nothing(f"step {live[0].index} is running (the saga was stopped)")
        doubtful = tuple(st.index for st in s.steps if lost(st))
        if doubtful:  # its worker died: it may have taken effect; undo it too
            undo = _to_undo([_in_doubt(st) if st.index in doubtful else st for st in s.steps], now)
            messages: tuple[Message, ...] = (SendCompensations(undo),) if undo else (Reconcile(),)
            return Move(
                MarkInDoubt(doubtful),
                messages,
                "in doubt",
                f"the lease of step {doubtful[0]} ran out while compensating",
                steps=undo,
            )
        if not quiet:
            return _nothing("progress within saga_recovery_stall")
        undo = _to_undo(s.steps, now)
        if undo:
            reason = "no progress in compensating" if stall is not None else "left to undo"
            return Move(
                messages=(SendCompensations(undo),), action="compensate", reason=reason, steps=undo
            )
        return Move(EndCompensation(), (Ended(),), "finish", "every compensation is done")
    return _nothing(f"the saga is {s.status}")


def _in_doubt(step: StepRecord) -> StepRecord:
    return replace(step, status=StepStatus.IN_DOUBT)


def _settle(s: SagaState, e: Settle) -> Move:
    return _drive(s, e.now, None)


def _sweep(s: SagaState, e: Sweep) -> Move:
    return _drive(s, e.now, e.stall)


def _resume(s: SagaState, e: Resume) -> Move:
    if s.status.is_terminal:
        raise SagaStateError(s.saga_id, s.status.value, "resumed", "a RUNNING or COMPENSATING")
    return _drive(s, e.now, 0.0, force=e.force)


def _cancel(s: SagaState, e: Cancel) -> Move:
    if s.status is not SagaStatus.RUNNING:
        return _nothing(f"the saga is {s.status}", accepted=False)
    return Move(Stop(e.error), (Reconcile(),), "cancel", str(e.error.get("message", "")))


def _retry_compensation(s: SagaState, e: RetryCompensation) -> Move:
    if s.status is not SagaStatus.FAILED:
        return _nothing(f"the saga is {s.status}", accepted=False)
    failed = tuple(
        st.index for st in reversed(s.steps) if st.status is StepStatus.COMPENSATION_FAILED
    )
    return Move(Reopen(), (SendCompensations(failed),), "compensate", "retried", steps=failed)


# -- the table -------------------------------------------------------------------------

Rule: TypeAlias = Callable[[Any, Any], Move]

#: Rules for step messages, by event.
STEP_RULES: Mapping[type, Rule] = {
    Delivered: _step_delivered,
    Claimed: _step_claimed,
    AttemptFailed: _attempt_failed,
    AttemptReleased: _attempt_released,
    AttemptSucceeded: _attempt_succeeded,
    SuccessRecorded: _success_recorded,
    FailureRecorded: _failure_recorded,
}
#: Rules for compensation messages, by event.
COMPENSATION_RULES: Mapping[type, Rule] = {
    CompensationClaimed: _compensation_claimed,
    CompensationFailed: _compensation_failed,
    CompensationSucceeded: _compensation_succeeded,
}
_ANY = tuple(SagaStatus)
_UNFINISHED = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
#: Rules for the whole stored saga, by event, with the statuses that accept it.
SAGA_RULES: Mapping[type, tuple[Rule, tuple[SagaStatus, ...]]] = {
    Settle: (_settle, _ANY),
    Sweep: (_sweep, _ANY),
    Resume: (_resume, _ANY),
    Cancel: (_cancel, _ANY),
    RetryCompensation: (_retry_compensation, _ANY),
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
