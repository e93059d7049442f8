"""The rules of child sagas.

A parent waits at its child's stage; a stopped parent stops its running children, waits
for them to end, and undoes completed ones as units.
"""

from __future__ import annotations

from typing import Any

from ..records import StepRecord
from ..status import SagaStatus, StepStatus
from ._moves import CancelChild, Move, Reconcile, RecordChild, ResolveWait
from ._state import Child, SagaState
from ._waiting import go_on, resolved

__all__ = ["CHILD_FAILED", "child_ended", "stopped_parent"]

#: The ``type`` of a parent's error when its child saga ended without one of its own.
CHILD_FAILED = "celery_saga.ChildSagaFailed"


def _error(child: Child) -> dict[str, Any]:
    """The error a child saga's end gives its parent's step: the child's, said so."""
    error = dict(child.error or {})
    message = f"child saga {child.saga_id!r} ({child.name}) ended {child.status}"
    if error.get("message"):
        message = f"{message}: {error['message']}"
    return {
        "type": error.get("type") or CHILD_FAILED,
        "message": message,
        "traceback": error.get("traceback") or "",
        "child": child.saga_id,
    }


def _undone(child: Child) -> StepStatus:
    """The parent's step once its child undid itself (or gave up doing so)."""
    if child.status is SagaStatus.FAILED:
        return StepStatus.COMPENSATION_FAILED  # the parent ends FAILED: a person decides
    return StepStatus.COMPENSATED


def child_ended(s: SagaState, step: StepRecord, child: Child) -> Move | None:
    """The saga waits at ``step`` for ``child``: go on if it ended (None: it has not)."""
    index = step.index
    if child.status is SagaStatus.COMPLETED:
        return Move(
            resolved(s, index, child.output),
            go_on(s, index, child.output),
            action="child",
            reason=f"its child saga {child.saga_id!r} completed",
            steps=(index,),
        )
    if not child.status.is_terminal:
        return None
    error = _error(child)
    status = StepStatus.FAILED if child.status is SagaStatus.COMPENSATED else _undone(child)
    return Move(
        ResolveWait(index, status, SagaStatus.COMPENSATING, error=error),
        (Reconcile(),),
        action="child",
        reason=error["message"],
        steps=(index,),
    )


def stopped_parent(s: SagaState) -> Move | None:
    """A compensating saga's children: what to do about them first (None: nothing).

    A child still running when its parent stopped is cancelled, and waited for while
    it undoes itself; one that completed meanwhile is recorded as succeeded, so that it
    is undone with the rest; one being undone as a unit is waited for. When a child
    has ended, its end is recorded on the parent's step, and the parent goes on.
    """
    steps = {st.index: st for st in s.steps}
    cancel: list[int] = []
    busy: list[int] = []
    for index, _plan in s.shape.children:
        child = s.children.get(index)
        step = steps.get(index)
        if step is None:
            continue
        if child is None:
            if step.status is StepStatus.COMPENSATING:  # to undo, and not in the store
                message = "its child saga is not in the store (purged?): not undone"
                missing: dict[str, Any] = {
                    "type": CHILD_FAILED,
                    "message": message,
                    "traceback": "",
                }
                return Move(
                    RecordChild(index, StepStatus.COMPENSATION_FAILED, error=missing),
                    (Reconcile(),),
                    action="compensate",
                    reason=message,
                    steps=(index,),
                )
            continue
        if step.status in (StepStatus.WAITING, StepStatus.PENDING):  # stopped while it ran
            if child.status in (SagaStatus.RUNNING, SagaStatus.WAITING):
                cancel.append(index)
                continue
            if child.status is SagaStatus.COMPENSATING:
                busy.append(index)
                continue
            if child.status is SagaStatus.COMPLETED:
                return Move(
                    RecordChild(index, StepStatus.SUCCEEDED, result=child.output),
                    (Reconcile(),),
                    action="compensate",
                    reason=f"its child saga {child.saga_id!r} completed: undo it too",
                    steps=(index,),
                )
        elif step.status is not StepStatus.COMPENSATING or child.status is SagaStatus.COMPLETED:
            continue  # not the child's to settle (a claimed undo reopens the child)
        elif not child.status.is_terminal:
            busy.append(index)
            continue
        error = None if child.status is SagaStatus.COMPENSATED else _error(child)
        return Move(
            RecordChild(index, _undone(child), error=error),
            (Reconcile(),),
            action="compensate",
            reason=f"its child saga {child.saga_id!r} ended {child.status}",
            steps=(index,),
        )
    if cancel:
        return Move(
            messages=tuple(CancelChild(i) for i in cancel),
            action="cancel",
            reason=f"its parent stopped: cancel the child saga of step {cancel[0]}",
            steps=tuple(cancel),
        )
    if busy:
        return Move(reason=f"the child saga of step {busy[0]} is compensating")
    return None
