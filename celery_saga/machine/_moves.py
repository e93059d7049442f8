"""The moves the machine returns: a store transition, then messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ..status import SagaStatus, StepStatus

__all__ = [
    "CancelChild",
    "Claim",
    "ClaimCompensation",
    "Complete",
    "Drop",
    "EndCompensation",
    "Ended",
    "Fail",
    "GiveBackCompensation",
    "Join",
    "KeepSignal",
    "MarkInDoubt",
    "Message",
    "Move",
    "PassOn",
    "QueueCompensations",
    "Reconcile",
    "RecordChild",
    "RecordCompensation",
    "Release",
    "Reopen",
    "ReopenChild",
    "ResolveWait",
    "RetryLater",
    "Revoke",
    "Run",
    "SendCompensations",
    "SendNext",
    "SendStage",
    "SendSteps",
    "StartChild",
    "Stop",
    "TakeOver",
    "Transition",
    "Wake",
]


@dataclass(frozen=True)
class Claim:
    """Claim the step (fencing token and lease), if the saga is running."""


@dataclass(frozen=True)
class Complete:
    """Record the step's result (and, after the last step, complete the saga)."""

    last: bool


@dataclass(frozen=True)
class Join:
    """Record a joining step's result, then see whether its whole stage has succeeded.

    One transaction that first locks the saga's row, so of a group's members finishing
    at once exactly one sees the others' results: ``ends`` are the stage's branch ends
    that must all have succeeded; ``final``: the stage is the saga's last, and the join
    completes the saga.
    """

    ends: tuple[int, ...]
    final: bool


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
class ResolveWait:
    """End the wait at step ``index``, if the saga still waits there.

    The step becomes ``step_status`` (``SUCCEEDED`` with ``result``, or ``FAILED`` with
    ``error``) and the saga ``saga_status`` (``RUNNING`` on, ``COMPLETED`` after a last
    stage, ``COMPENSATING`` or ``FAILED`` with ``error``), in one write.
    """

    index: int
    step_status: StepStatus
    saga_status: SagaStatus
    result: Any = None
    error: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class KeepSignal:
    """Keep a signal for the wait at step ``index``, which the saga has not reached yet."""

    index: int
    payload: Any = None


@dataclass(frozen=True)
class RecordChild:
    """Record on a stopped parent's step ``index`` how its child saga ended.

    ``SUCCEEDED`` with ``result`` (it completed: it is undone with the rest),
    ``COMPENSATED`` (it undid itself, or was undone as a unit) or
    ``COMPENSATION_FAILED`` with ``error`` (it gave up: the parent ends ``FAILED``).
    """

    index: int
    step_status: StepStatus
    result: Any = None
    error: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ClaimCompensation:
    """Claim the compensation of a succeeded (or in-doubt) step of a compensating saga."""


@dataclass(frozen=True)
class QueueCompensations:
    """Mark these compensations as sent (without an owner yet), if nobody sent them.

    In a saga with groups several compensations run at once, and each that ends settles
    the saga: one still queued must look busy then, or it would be sent again. If none
    of them could be marked, another settle sent them: send nothing.
    """

    indices: tuple[int, ...]


@dataclass(frozen=True)
class RecordCompensation:
    """Record a compensation attempt: done (``failed`` False), to be retried, or given up."""

    failed: bool = False
    gave_up: bool = False


@dataclass(frozen=True)
class GiveBackCompensation:
    """Give a claimed compensation back unrun (not an attempt), due again in ``delay`` s."""

    delay: float


@dataclass(frozen=True)
class EndCompensation:
    """End a compensating saga: ``FAILED`` if a compensation gave up, else ``COMPENSATED``."""


@dataclass(frozen=True)
class Reopen:
    """Make a ``FAILED`` saga's given-up compensations claimable again."""


@dataclass(frozen=True)
class ReopenChild:
    """Move a ``COMPLETED`` child saga back to ``COMPENSATING``, with ``error``.

    Its parent compensates, so it is undone as a unit.
    """

    error: Mapping[str, Any]


Transition: TypeAlias = (
    Claim
    | Complete
    | Join
    | Fail
    | Release
    | Stop
    | TakeOver
    | ResolveWait
    | KeepSignal
    | RecordChild
    | MarkInDoubt
    | ClaimCompensation
    | QueueCompensations
    | RecordCompensation
    | GiveBackCompensation
    | EndCompensation
    | Reopen
    | ReopenChild
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
    """Send the plan's steps from ``start`` on (the step before's stored result first).

    ``previous``: what its mutable first step gets, when the move knows it already.
    """

    start: int
    previous: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Wake:
    """Send this wait's message again in ``countdown`` seconds, when its time is due."""

    countdown: float


@dataclass(frozen=True)
class SendStage:
    """Send every branch of the stage at ``stage`` (its position in the plan) at once.

    ``previous`` is what its mutable first steps get: ``(results,)``, the list of the
    group's results in member order after a group.
    """

    stage: int
    previous: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SendCompensations:
    """Send the compensations of these steps as one chain, in this order.

    A move may hold several: the branches of a group are undone side by side.
    """

    indices: tuple[int, ...]


@dataclass(frozen=True)
class Revoke:
    """Ask the workers running these steps to stop them (``fail_fast``; best effort)."""

    indices: tuple[int, ...]


@dataclass(frozen=True)
class StartChild:
    """Send the first stage of the child saga this stage stored."""


@dataclass(frozen=True)
class CancelChild:
    """Cancel the running child saga of step ``index``: its parent stopped."""

    index: int


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
    """The saga ended with this move, as ``status``: say so (signals, spans, metrics)."""

    status: SagaStatus


Message: TypeAlias = (
    Run
    | PassOn
    | SendNext
    | SendSteps
    | SendStage
    | SendCompensations
    | Revoke
    | StartChild
    | CancelChild
    | Wake
    | RetryLater
    | Drop
    | Ended
    | Reconcile
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
