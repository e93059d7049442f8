"""What an operator does to a saga: cancel it, resume it, or retry its failed compensations.

Cancelling: no new forward step starts, and what succeeded is undone.
:meth:`SagaResult.cancel` moves a running saga to ``COMPENSATING`` with the reason as
its error; from then on no step can be claimed. Who sends the compensations depends on
what was running at that moment:

- nothing: :func:`cancel` sends them itself (or ends the saga if there is nothing to undo);
- a step: that step's worker carries on. If the step succeeds, the next step's message
  finds the saga stopped (``HALTED``) and sends them; if it was the last step, its
  worker does. If the step fails, its own errbacks undo the steps before it.

The saga ends ``COMPENSATED`` (its error says it was cancelled, and why); if a
compensation gives up, ``FAILED`` as always. Compensations themselves are never
cancelled. Everything sent twice in a race is a no-op for the claims.

Retrying compensations: a ``FAILED`` saga's compensations that gave up are given
another round after a fix (:meth:`SagaResult.retry_compensation`), newest first, each
with its full retries; the saga is ``COMPENSATING`` meanwhile and ends ``COMPENSATED``,
or ``FAILED`` again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Celery

from ._runtime import get_store
from .canvas import compensation_chain
from .compensation import end_compensated_saga
from .errors import SagaNotFound, SagaStateError
from .recovery import Recovery, recover, step_running
from .status import SagaStatus, StepStatus

__all__ = [
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "cancel",
    "compensate_halted",
    "resume",
    "retry_compensation",
    "stop_at_deadline",
]

#: The ``type`` of the error a cancelled saga records.
CANCELLED = "celery_saga.Cancelled"
#: The ``type`` of the error a saga stopped by its ``deadline=`` records.
DEADLINE_EXCEEDED = "celery_saga.DeadlineExceeded"

_TO_UNDO = (StepStatus.SUCCEEDED, StepStatus.TIMED_OUT)


def cancel(app: Celery, saga_id: str, reason: str, kind: str = CANCELLED) -> bool:
    """Cancel a running saga; False if it was not running (finished, or compensating)."""
    store = get_store(app)
    error: dict[str, Any] = {"type": kind, "message": str(reason), "traceback": ""}
    if not store.cancel_saga(saga_id, error):
        if store.get_status(saga_id) is None:
            raise SagaNotFound(saga_id)
        return False
    compensate_halted(app, saga_id)
    return True


def stop_at_deadline(app: Celery, saga_id: str, deadline: float) -> bool:
    """Stop a running saga whose ``deadline=`` has passed, as a cancel would."""
    reason = f"its deadline of {deadline:g} s passed"
    return cancel(app, saga_id, reason, kind=DEADLINE_EXCEEDED)


def compensate_halted(app: Celery, saga_id: str) -> None:
    """Undo the succeeded steps of a stopped saga, unless a step's worker still owns it."""
    store = get_store(app)
    saga = store.get_saga(saga_id)
    if saga is None or saga.status is not SagaStatus.COMPENSATING or saga.failed_step is not None:
        return  # not stopped by a cancel: a failing step's errbacks do the undoing
    steps = store.get_steps(saga_id)
    if step_running(steps, datetime.now(UTC)):
        return  # its worker sends them when it is done
    undo = [s.index for s in reversed(steps) if s.compensate and s.status in _TO_UNDO]
    chain = compensation_chain(app, saga_id, saga.plan, undo)
    if chain is None:
        end_compensated_saga(app, saga_id)
    else:
        chain.apply_async()


def resume(app: Celery, saga_id: str) -> Recovery:
    """Drive a running or compensating saga on now, as the recovery sweep would.

    Unlike the sweep it does not wait ``saga_recovery_stall``; a step whose worker
    still holds its lease is left alone. Raises :class:`SagaStateError` for a finished
    saga, :class:`SagaNotFound` for an unknown id.
    """
    saga = get_store(app).get_saga(saga_id)
    if saga is None:
        raise SagaNotFound(saga_id)
    if saga.status.is_terminal:
        raise SagaStateError(saga_id, saga.status.value, "resumed", "a RUNNING or COMPENSATING")
    (plan,) = recover(app, saga_id, stalled_after=0)
    return plan


def retry_compensation(app: Celery, saga_id: str) -> list[int]:
    """Send the compensations that gave up again; the step indices (none: not ``FAILED``)."""
    store = get_store(app)
    saga = store.get_saga(saga_id)
    if saga is None:
        raise SagaNotFound(saga_id)
    undo = store.reopen_failed_compensations(saga_id)
    chain = compensation_chain(app, saga_id, saga.plan, undo)
    if chain is not None:
        chain.apply_async()
    return undo
