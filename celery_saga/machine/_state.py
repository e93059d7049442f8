"""What the machine decides on: a message's view of its saga, or the stored saga."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import SagaStateError
from ..records import StepRecord
from ..status import SagaStatus
from ._topology import Topology

__all__ = [
    "CANCELLED",
    "CHILD_CONFLICT",
    "DEADLINE_EXCEEDED",
    "IN_DOUBT",
    "WAIT_TIMED_OUT",
    "Child",
    "Delivery",
    "IllegalEvent",
    "Outcome",
    "SagaState",
]

#: The ``type`` of the error a cancelled saga records.
CANCELLED = "celery_saga.Cancelled"
#: The ``type`` of the error a saga records when its child saga's id is another saga's.
CHILD_CONFLICT = "celery_saga.SagaConflictError"
#: The ``type`` of the error a saga stopped by its ``deadline=`` records.
DEADLINE_EXCEEDED = "celery_saga.DeadlineExceeded"
#: The ``type`` of the error of a step whose worker was lost while the saga compensated.
IN_DOUBT = "celery_saga.InDoubt"
#: The ``type`` of the error a ``wait_for`` stage records when its timeout passed.
WAIT_TIMED_OUT = "celery_saga.WaitTimedOut"


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
    JOINED = "joined"  #: written, and with it every member of its stage has succeeded
    WAITING = "waiting"  #: the saga waits at this stage now (no worker is held)
    CONFLICT = "conflict"  #: the id of the child saga it would start is another saga's


# -- state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Child:
    """A child saga as its parent's decisions see it: how it stands, what it gave."""

    saga_id: str
    name: str
    status: SagaStatus
    output: Any = None  #: its result, once ``COMPLETED``
    error: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Delivery:
    """What one step or compensation message says of its saga.

    ``undo`` lists the steps whose compensations run if this step fails for good,
    newest first (this step's own first when it is in doubt after a timeout). A step
    message names only the first of them: enough to decide the failure's transition;
    the shell reads the rest from the plan with the failure's write.
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
    stage: int = 0  #: the position of the step's stage in the plan
    grouped: bool = False  #: the saga has parallel groups: a failure settles from the store
    member: bool = False  #: the step is a member of a group (the next stage gets a list)
    #: For a step whose success is a join (it ends a group's branch, or precedes a
    #: group): the branch ends of its stage, which must all have succeeded.
    ends: tuple[int, ...] = ()
    final: bool = False  #: a joining step of the saga's last stage: the join completes it
    #: A child saga's parent and the parent's step it is: its end lets the parent go on.
    parent_id: str | None = None
    parent_step: int | None = None

    @property
    def is_last_step(self) -> bool:
        """Whether this is the saga's last forward step (of a saga without a final group)."""
        return self.index == self.count - 1 and not self.ends


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
    topology: Topology | None = None  #: None: one step per stage (a plan without groups)
    #: The child sagas it started, by the index of their stage's step.
    children: Mapping[int, Child] = field(default_factory=dict)

    @property
    def shape(self) -> Topology:
        """The saga's stages (a straight line of its steps when no topology was given)."""
        if self.topology is not None:
            return self.topology
        return Topology.of_steps([{"index": s.index, "stage": s.index} for s in self.steps])
