"""The recovery sweep: drive on, from the store, sagas whose messages are gone.

Celery loses a saga's next message in known cases: a worker killed mid-step on a broker
that redelivers late (Redis: after ``visibility_timeout``) or never (``filesystem://``),
an errback that never fired, a producer that died between storing a saga and sending it,
a publish that failed. The store still knows where each saga stands, so :func:`recover`
(and the task ``celery_saga.recover``, for beat) asks :mod:`celery_saga.machine` what
each unfinished saga needs and carries it out:

- a step whose owner's lease ran out (its worker died): sent again, with the rest of
  the chain after it, at once (a lease's end is not progress); if the saga is
  compensating, the step is in doubt instead, and undone;
- a saga with no step running and no progress for ``saga_recovery_stall`` seconds:
  its next step is sent (a lost message), with the previous step's stored result;
- a compensating saga with nothing running and no progress for as long: the
  compensations still to do are sent, newest first; with none left, the saga ends.

One saga's trouble stays its own: an error is logged with the saga id, counted, kept
on the saga (``celery saga show`` prints it) and the sweep goes on. A saga whose next
message cannot be built (arguments that no longer fit the task) is compensated with
that error. Everything sent may meet a late original: claims make the duplicate a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, Task
from celery.utils.log import get_task_logger
from kombu.exceptions import EncodeError

from ._drive import carry_out, settle, state_of
from ._errors import describe_error
from ._runtime import get_store
from .config import get_config
from .errors import SagaNotFound, SagaValidationError
from .machine import Move, Sweep, decide

__all__ = ["RECOVER_TASK", "Recovery", "as_recovery", "recover", "register_recovery_task"]

logger = get_task_logger(__name__)

#: The periodic task that runs :func:`recover`.
RECOVER_TASK = "celery_saga.recover"

#: Errors that say a saga's message cannot be built (not that a server is down).
_UNBUILDABLE = (TypeError, EncodeError, SagaValidationError)


@dataclass(frozen=True)
class Recovery:
    """What the sweep did (or, with ``dry_run``, would do) with one saga.

    ``action`` is ``"forward"`` (``steps`` = the step sent again, then the ones after
    it), ``"compensate"`` (``steps`` = the compensations sent, in order), ``"in doubt"``
    (a step whose worker was lost while compensating: undone with the others),
    ``"finish"`` (compensations all done: saga ended), ``"deadline"`` (past its
    ``deadline=``: stopped and compensated), ``"error"`` (carrying it out failed:
    ``error`` says how; the sweep went on) or ``"none"``; ``reason`` says why.

    .. versionadded:: 0.1
    """

    saga_id: str
    action: str
    steps: tuple[int, ...]
    reason: str
    error: str | None = None


def as_recovery(saga_id: str, move: Move) -> Recovery:
    """The report of a move."""
    return Recovery(saga_id, move.action, move.steps, move.reason)


def _refuse(app: Celery, saga_id: str, exc: Exception) -> None:
    """Compensate a saga whose next message cannot be built, with that error."""
    store = get_store(app)
    if store.cancel_saga(saga_id, describe_error(exc)):
        settle(app, saga_id)


def _note(app: Celery, saga_id: str, exc: Exception, message: str) -> None:
    """Keep the sweep's error on the saga (``celery saga show`` prints it), if the store can."""
    at = datetime.now(UTC).isoformat()
    try:
        get_store(app).note_recovery_error(
            saga_id, {"type": type(exc).__name__, "message": message, "at": at}
        )
    except Exception:
        logger.exception("saga %s: could not record the recovery error", saga_id)


def recover(
    app: Celery,
    saga_id: str | None = None,
    *,
    stalled_after: float | None = None,
    dry_run: bool = False,
) -> list[Recovery]:
    """Drive on the sagas (or the one ``saga_id``) that have stopped moving.

    ``stalled_after`` overrides ``saga_recovery_stall`` (seconds without progress);
    ``dry_run`` only says what it would do. Returns one :class:`Recovery` per saga
    looked at, ``"none"`` included. Safe to run anywhere and concurrently: duplicates it
    sends are no-ops.

    .. versionadded:: 0.1
    """
    config = get_config(app)
    store = get_store(app)
    stall = config.recovery_stall if stalled_after is None else stalled_after
    now = datetime.now(UTC)
    if saga_id is not None:
        found = store.get_saga(saga_id)
        if found is None:
            raise SagaNotFound(saga_id)
        candidates = [found]
    else:
        candidates = store.unfinished_sagas(now - timedelta(seconds=stall), config.recovery_batch)
    done: list[Recovery] = []
    for saga in candidates:
        try:
            state = state_of(store, saga)
            move = decide(state, Sweep(now, stall))
            report = as_recovery(saga.id, move)
            if move.action != "none" and not dry_run:
                logger.warning(
                    "saga %s: recovery: %s %s (%s)",
                    saga.id,
                    move.action,
                    list(move.steps),
                    move.reason,
                )
                carry_out(app, saga, move, steps=state.steps)
        except Exception as exc:
            logger.exception("saga %s: recovery failed; the sweep goes on", saga.id)
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, _UNBUILDABLE) and not dry_run:
                try:
                    _refuse(app, saga.id, exc)
                    error = f"its next message cannot be built, compensated: {error}"
                except Exception:
                    logger.exception("saga %s: could not be compensated", saga.id)
            report = Recovery(saga.id, "error", (), "recovery failed", error)
            if not dry_run:
                _note(app, saga.id, exc, error)
        done.append(report)
    return done


def _recover_task(self: Task[Any, Any]) -> dict[str, int]:
    """The body of ``celery_saga.recover``: one sweep; returns how many sagas got what."""
    counts: dict[str, int] = {}
    for plan in recover(self.app):
        counts[plan.action] = counts.get(plan.action, 0) + 1
    return counts


def register_recovery_task(app: Celery) -> None:
    """Register ``celery_saga.recover`` on the app (put it in ``beat_schedule``)."""
    app.task(name=RECOVER_TASK, bind=True, ignore_result=True, shared=False)(_recover_task)
