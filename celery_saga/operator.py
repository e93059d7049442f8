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
from kombu.utils.json import dumps as json_dumps

from ._drive import carry_out, load
from ._runtime import get_store
from ._values import json_problem, unstorable
from .config import get_config
from .errors import SagaNotFound, SagaStateError, SagaValidationError
from .machine import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    Cancel,
    KeepSignal,
    Resume,
    RetryCompensation,
    Signal,
    decide,
)
from .recovery import Recovery, as_recovery
from .signals import StepEvent, signal_received
from .waits import WAIT_TASK

__all__ = ["CANCELLED", "DEADLINE_EXCEEDED", "cancel", "resume", "retry_compensation", "signal"]


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


def _check_payload(app: Celery, name: str, payload: Any) -> None:
    problem = json_problem(payload)
    encoded = None if problem is not None else json_dumps(payload)
    if encoded is not None:
        problem = unstorable(payload, encoded)
    if problem is None and encoded is not None and len(encoded) > get_config(app).max_result_bytes:
        problem = f"{len(encoded)} bytes of JSON, over the saga_max_result_bytes limit"
    if problem is not None:
        raise SagaValidationError(
            f"the payload of signal {name!r} cannot be stored ({problem}); send plain data "
            f"(dict, list, str, numbers), or a reference to what is large"
        )


def signal(app: Celery, saga_id: str, name: str, payload: Any = None) -> bool:
    """Send the saga the signal ``name``: its ``wait_for(name)`` ends with ``payload``.

    Returns True if the saga was waiting there and goes on now; False if the saga has
    not got there yet: the signal is kept, and the wait ends at once when it does.
    Raises :class:`SagaStateError` for a saga that does not wait for ``name`` (any
    more: a second signal of a name is refused unless the saga waits for it again),
    or is not running; :class:`SagaNotFound` for an unknown id;
    :class:`SagaValidationError` for a payload the store cannot keep.

    .. versionadded:: 0.2
    """
    _check_payload(app, name, payload)
    for _ in range(3):  # a keep can race the saga getting to its wait: decide again
        saga, state = _loaded(app, saga_id)
        move = decide(state, Signal(name, payload))
        if carry_out(app, saga, move, steps=state.steps):
            kept = isinstance(move.transition, KeepSignal)
            event = StepEvent(
                saga_id, saga.name, move.steps[0], WAIT_TASK, reason="kept" if kept else name
            )
            signal_received.send(sender=saga.name, event=event)
            return not kept
    raise SagaStateError(saga_id, state.status.value, f"sent the signal {name!r}", "a wait for it")
