"""The events a shell tells the machine: what happened to a saga."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from ..status import SagaStatus, StepStatus
from ._state import Outcome

__all__ = [
    "AttemptFailed",
    "AttemptReleased",
    "AttemptSucceeded",
    "Cancel",
    "Claimed",
    "CompensationClaimed",
    "CompensationFailed",
    "CompensationSucceeded",
    "CompensationUnavailable",
    "Delivered",
    "Event",
    "FailureRecorded",
    "Resume",
    "RetryCompensation",
    "Settle",
    "Signal",
    "Stopped",
    "SuccessRecorded",
    "Sweep",
    "WaitEntered",
]


@dataclass(frozen=True)
class Delivered:
    """A step message arrived (``now``: epoch seconds)."""

    now: float


@dataclass(frozen=True)
class Stopped:
    """Stopping the saga (its deadline passed) was tried; ``applied``: it was running."""

    applied: bool


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

    ``LOST``, ``RECORDED``, ``COMPLETED`` or ``HALTED``; a join also ``JOINED``, with
    ``results``: its stage's branch ends' results, in member order.
    """

    outcome: Outcome
    results: tuple[Any, ...] = ()


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
class CompensationUnavailable:
    """The compensation's task is not registered on this worker (another deploy's).

    ``delay``: seconds after which its message comes back (``saga_park_retry``).
    """

    delay: float


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
class WaitEntered:
    """A wait stage's message tried to put the saga to wait.

    ``outcome``: ``WAITING`` (it waits, or already did; ``due`` is when its timeout or
    sleep ends, epoch seconds, None: never), ``RECORDED`` (a signal kept for it resolved
    it at once), ``COMPLETED`` (that, and it was the last stage), ``STOPPED`` (the saga
    is not running), ``DONE`` (resolved before), ``MISSING``, or for a child saga stage
    ``CONFLICT`` (the child's id is another saga's). ``soon``: a due time within that
    many seconds is woken by a countdown, a later one by the sweep (None: no sweep
    runs; countdowns of at most a minute, again and again). ``started``: this message
    put the saga to wait, and ``child``: stored the child saga the stage runs.
    """

    outcome: Outcome
    now: float
    due: float | None = None
    soon: float | None = 60.0
    started: bool = False
    child: bool = False


@dataclass(frozen=True)
class Signal:
    """Someone sent the saga the signal ``name`` with ``payload``."""

    name: str
    payload: Any = None


@dataclass(frozen=True)
class UndoAsUnit:
    """The parent of this child saga compensates: undo the child as a whole."""

    error: Mapping[str, Any]


@dataclass(frozen=True)
class RetryCompensation:
    """An operator retries the compensations of a ``FAILED`` saga after a fix."""


Event: TypeAlias = (
    Delivered
    | Stopped
    | Claimed
    | AttemptFailed
    | AttemptReleased
    | AttemptSucceeded
    | SuccessRecorded
    | FailureRecorded
    | CompensationClaimed
    | CompensationFailed
    | CompensationSucceeded
    | CompensationUnavailable
    | Settle
    | Sweep
    | Resume
    | Cancel
    | RetryCompensation
    | UndoAsUnit
    | WaitEntered
    | Signal
)
