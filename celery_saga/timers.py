"""The internal task ``celery_saga.wait``: a ``wait_for`` or ``sleep`` stage.

Its message travels in the saga's chain like a step's. It puts the saga to wait in the
store (the step ``WAITING``, when it is due, the saga ``WAITING``) and returns: no
worker is held while the saga waits. A signal sent before the saga got here resolves
the wait at once. A due time near enough (within two recovery intervals) is woken by
this message sent again with a countdown; a later one by the recovery sweep (with no
sweep, ``saga_recovery_interval=None``, by countdowns of a minute at most). Either way
the saga is then driven on from the store (:func:`celery_saga._drive.settle`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from . import _drive, signals
from ._runtime import get_store
from .config import get_config
from .dispatch import HEADER, guarded, republish, step_delivery
from .machine import Delivery, Drop, Ended, Outcome, Reconcile, WaitEntered, Wake, decide
from .signals import SagaEvent, StepEvent
from .status import SagaStatus
from .waits import WAIT_TASK

__all__ = ["register_wait_task"]

logger = get_task_logger(__name__)


def _due(spec: Mapping[str, Any], now: float) -> float | None:
    """When a wait that starts ``now`` ends on its own (epoch seconds; None: never)."""
    if spec.get("until") is not None:
        return float(spec["until"])
    seconds = spec.get("sleep") if "sleep" in spec else spec.get("timeout")
    return None if seconds is None else now + float(seconds)


def _event(d: Delivery, reason: str) -> StepEvent:
    return StepEvent(d.saga_id, d.name, d.index, WAIT_TASK, reason=reason)


def _wait(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
    """Put the saga to wait at this stage (the body of ``celery_saga.wait``)."""
    app = self.app
    header: Mapping[str, Any] = self.request.get(HEADER) or {}
    if "id" not in header:
        raise Ignore()  # not sent by a saga: nothing to wait for
    d = step_delivery(header)
    spec: Mapping[str, Any] = header.get("w") or {}
    self.request.chain = None  # the rest is sent from the store when the wait ends

    def guard(write: Callable[[], Any]) -> Any:
        return guarded(self, write)

    now = time.time()
    due = _due(spec, now)
    if d.deadline is not None:  # the sweep looks at a waiting saga when its wait is due
        due = d.deadline if due is None else min(due, d.deadline)
    waiting = guard(
        lambda: get_store(app).enter_wait(
            d.saga_id,
            d.index,
            due=None if due is None else datetime.fromtimestamp(due, UTC),
            args=args,
            stage=d.stage,
            task=WAIT_TASK,
            final=d.is_last_step,
        )
    )
    stored = None if waiting.due is None else waiting.due.timestamp()
    interval = get_config(app).recovery_interval  # None: no sweep; countdowns all the way
    soon = None if interval is None else 2 * interval
    move = decide(d, WaitEntered(Outcome(waiting.outcome), now, stored, soon))
    if waiting.entered:
        reason = "sleep" if spec.get("signal") is None else str(spec["signal"])
        signals.saga_waiting.send(sender=d.name, event=_event(d, reason))
    for message in move.messages:
        if isinstance(message, Reconcile):
            guard(lambda: _drive.settle(app, d.saga_id))
        elif isinstance(message, Wake):
            raise republish(self, message.countdown)
        elif isinstance(message, Ended):
            started = d.started or now
            signals.send_saga_end(
                SagaEvent(d.saga_id, d.name, SagaStatus.COMPLETED, max(now - started, 0.0))
            )
        elif isinstance(message, Drop):
            getattr(logger, message.level)(
                "saga %s: wait at step %d: %s", d.saga_id, d.index, message.reason
            )
            raise Ignore()
        else:
            raise TypeError(f"a wait does not carry out {message!r}")


def register_wait_task(app: Celery) -> None:
    """Register ``celery_saga.wait`` on the app."""
    app.task(
        name=WAIT_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        shared=False,
    )(_wait)
