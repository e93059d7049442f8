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
- :class:`SagaState`: the saga row and every step row as stored, with the plan's
  :class:`Topology` (its stages, and the branches of its parallel groups). Decisions that need
  the whole saga (after a cancel, at the end of the compensations, the sweep, an
  operator's command) are made from it.

An event that the state does not accept raises :class:`IllegalEvent`.
"""

from __future__ import annotations

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
    CancelChild,
    Claim,
    ClaimCompensation,
    Complete,
    Drop,
    EndCompensation,
    Ended,
    Fail,
    GiveBackCompensation,
    Join,
    KeepSignal,
    MarkInDoubt,
    Message,
    Move,
    PassOn,
    QueueCompensations,
    Reconcile,
    RecordChild,
    RecordCompensation,
    Release,
    Reopen,
    ReopenChild,
    ResolveWait,
    RetryLater,
    Revoke,
    Run,
    SendCompensations,
    SendNext,
    SendStage,
    SendSteps,
    StartChild,
    Stop,
    TakeOver,
    Transition,
    Wake,
)
from ._rules import COMPENSATION_RULES, SAGA_RULES, STEP_RULES, decide
from ._state import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    IN_DOUBT,
    WAIT_TIMED_OUT,
    Child,
    Delivery,
    IllegalEvent,
    Outcome,
    SagaState,
)
from ._topology import Stage, Topology

__all__ = [
    "CANCELLED",
    "COMPENSATION_RULES",
    "DEADLINE_EXCEEDED",
    "IN_DOUBT",
    "SAGA_RULES",
    "STEP_RULES",
    "WAIT_TIMED_OUT",
    "AttemptFailed",
    "AttemptReleased",
    "AttemptSucceeded",
    "Cancel",
    "CancelChild",
    "Child",
    "Claim",
    "ClaimCompensation",
    "Claimed",
    "CompensationClaimed",
    "CompensationFailed",
    "CompensationSucceeded",
    "CompensationUnavailable",
    "Complete",
    "Delivered",
    "Delivery",
    "Drop",
    "EndCompensation",
    "Ended",
    "Event",
    "Fail",
    "FailureRecorded",
    "GiveBackCompensation",
    "IllegalEvent",
    "Join",
    "KeepSignal",
    "MarkInDoubt",
    "Message",
    "Move",
    "Outcome",
    "PassOn",
    "QueueCompensations",
    "Reconcile",
    "RecordChild",
    "RecordCompensation",
    "Release",
    "Reopen",
    "ReopenChild",
    "ResolveWait",
    "Resume",
    "RetryCompensation",
    "RetryLater",
    "Revoke",
    "Run",
    "SagaState",
    "SendCompensations",
    "SendNext",
    "SendStage",
    "SendSteps",
    "Settle",
    "Signal",
    "Stage",
    "StartChild",
    "Stop",
    "Stopped",
    "SuccessRecorded",
    "Sweep",
    "TakeOver",
    "Topology",
    "Transition",
    "UndoAsUnit",
    "WaitEntered",
    "Wake",
    "decide",
]
