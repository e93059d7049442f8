"""What an operator does to a saga: cancel it, resume it, or retry its failed compensations.

Each is an event for :mod:`celery_saga.machine` about the whole stored saga; the move
is carried out by :mod:`celery_saga._drive`.

Cancelling: no new forward step starts, and what succeeded is undone. The saga moves
to ``COMPENSATING`` with the reason as its error; from then on no step can be claimed.
A step running at that moment finishes (it is not interrupted): when it ends, its
worker settles the saga, and a step that succeeded is undone too. A step whose worker
is lost meanwhile is in doubt once its lease runs out, and undone as well. The saga ends
``COMPENSATED`` (its error says it was cancelled, and why); if a compensation gives up,
``FAILED`` as always. Compensations themselves are never cancelled.

Retrying compensations: a ``FAILED`` saga's compensations that gave up are given
another round after a fix, newest first, each with its full retries; the saga is
``COMPENSATING`` meanwhile and ends ``COMPENSATED``, or ``FAILED`` again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Celery

from ._drive import carry_out, load
from ._runtime import get_store
from .errors import SagaNotFound
from .machine import CANCELLED, DEADLINE_EXCEEDED, Cancel, Resume, RetryCompensation, decide
from .recovery import Recovery, as_recovery

__all__ = ["CANCELLED", "DEADLINE_EXCEEDED", "cancel", "resume", "retry_compensation"]


def _loaded(app: Celery, saga_id: str) -> Any:
    loaded = load(get_store(app), saga_id)
    if loaded is None:
        raise SagaNotFound(saga_id)
    return loaded


def cancel(app: Celery, saga_id: str, reason: str, kind: str = CANCELLED) -> bool:
    """Cancel a running saga; False if it was not running (finished, or compensating)."""
    saga, state = _loaded(app, saga_id)
    error: dict[str, Any] = {"type": kind, "message": str(reason), "traceback": ""}
    move = decide(state, Cancel(error))
    return move.accepted and carry_out(app, saga, move, steps=state.steps)


def resume(app: Celery, saga_id: str, *, force: bool = False) -> Recovery:
    """Drive a running or compensating saga on now, as the recovery sweep would.

    Unlike the sweep it does not wait ``saga_recovery_stall``. A step whose worker
    still holds its lease is left alone, unless ``force``: the operator knows that
    worker is dead, and the step is taken over (sent again, or in doubt if the saga
    compensates). Raises :class:`SagaStateError` for a finished saga,
    :class:`SagaNotFound` for an unknown id.
    """
    saga, state = _loaded(app, saga_id)
    move = decide(state, Resume(datetime.now(UTC), force=force))
    if move.action != "none":
        carry_out(app, saga, move, steps=state.steps, force=force)
    return as_recovery(saga_id, move)


def retry_compensation(app: Celery, saga_id: str) -> list[int]:
    """Send the compensations that gave up again; the step indices (none: not ``FAILED``)."""
    saga, state = _loaded(app, saga_id)
    move = decide(state, RetryCompensation())
    if not move.accepted or not carry_out(app, saga, move, steps=state.steps):
        return []
    return list(move.steps)
