"""The internal tasks of the stages that hold a saga: a wait, a sleep, a child saga.

``celery_saga.wait`` runs a ``wait_for`` or ``sleep`` stage, ``celery_saga.child`` a
child saga. Its message travels in the saga's chain like a step's. It puts the saga to wait in the
store (the step ``WAITING``, when it is due, the saga ``WAITING``) and returns: no
worker is held while the saga waits. A signal sent before the saga got here resolves
the wait at once. A due time near enough (within two recovery intervals) is woken by
this message sent again with a countdown; a later one by the recovery sweep (with no
sweep, ``saga_recovery_interval=None``, by countdowns of a minute at most). Either way
the saga is then driven on from the store (:func:`celery_saga._drive.settle`).

A child saga stage stores the child (its id ``<parent id>.<step>``, its plan from the
parent's, the result before the stage as its input) in the same transaction as the
parent's wait, then sends the child's first stage. When the child ends, its parent goes
on from the store (:func:`celery_saga._drive.end`; the sweep if that was lost).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from . import _drive, _observe, signals
from ._runtime import get_store
from .config import get_config
from .dispatch import (
    HEADER,
    child_saga_id,
    guarded,
    publish_stage,
    register_internal,
    republish,
    step_delivery,
)
from .machine import (
    Delivery,
    Drop,
    Ended,
    Outcome,
    Reconcile,
    StartChild,
    Stop,
    WaitEntered,
    Wake,
    decide,
)
from .plan import CHILD_TASK, saga_row
from .signals import SagaEvent, StepEvent
from .status import SagaStatus
from .store import utcnow
from .waits import WAIT_TASK

__all__ = ["register_wait_task"]

logger = get_task_logger(__name__)


def _due(spec: Mapping[str, Any], now: float) -> float | None:
    """When a wait that starts ``now`` ends on its own (epoch seconds; None: never)."""
    if spec.get("until") is not None:
        return float(spec["until"])
    seconds = spec.get("sleep") if "sleep" in spec else spec.get("timeout")
    return None if seconds is None else now + float(seconds)


def _event(d: Delivery, task: str, reason: str) -> StepEvent:
    return StepEvent(d.saga_id, d.name, d.index, task, reason=reason)


def _hold(
    task: Task[Any, Any],
    d: Delivery,
    args: tuple[Any, ...],
    due: float | None,
    reason: str,
    child: Mapping[str, Any] | None = None,
) -> None:
    """Put the saga to wait at this stage (the body of both tasks).

    ``due``: when the wait ends on its own (epoch seconds; None: never). ``child``: the
    row of the child saga the stage runs, stored with the wait.
    """
    app = task.app
    task.request.chain = None  # the rest is sent from the store when the wait ends

    def guard(write: Callable[[], Any]) -> Any:
        return guarded(task, write)

    now = time.time()
    if d.deadline is not None:  # the sweep looks at a waiting saga when its wait is due
        due = d.deadline if due is None else min(due, d.deadline)
    waiting = guard(
        lambda: get_store(app).enter_wait(
            d.saga_id,
            d.index,
            due=None if due is None else datetime.fromtimestamp(due, UTC),
            args=args,
            stage=d.stage,
            task=task.name,
            final=d.is_last_step,
            child=child,
            compensate=None if child is None else CHILD_TASK,
        )
    )
    stored = None if waiting.due is None else waiting.due.timestamp()
    interval = get_config(app).recovery_interval  # None: no sweep; countdowns all the way
    soon = None if interval is None else 2 * interval
    entered = WaitEntered(Outcome(waiting.outcome), now, stored, soon, waiting.entered,
                          child is not None)  # fmt: skip
    move = decide(d, entered)
    stop = move.transition
    if isinstance(stop, Stop):  # the child's id is another saga's
        logger.error("saga %s: %s (%s)", d.saga_id, move.reason, (child or {}).get("id"))
        if not guard(lambda: get_store(app).cancel_saga(d.saga_id, stop.error)):
            raise Ignore()
    if waiting.entered:
        signals.saga_waiting.send(sender=d.name, event=_event(d, task.name, reason))
    for message in move.messages:
        if isinstance(message, StartChild):
            assert child is not None
            _start_child(app, d, child)
        elif isinstance(message, Reconcile):
            guard(lambda: _drive.settle(app, d.saga_id))
        elif isinstance(message, Wake):
            raise republish(task, message.countdown)
        elif isinstance(message, Ended):
            started = d.started or now
            duration = max(now - started, 0.0)
            event = SagaEvent(d.saga_id, d.name, SagaStatus.COMPLETED, duration,
                              parent_id=d.parent_id, parent_step=d.parent_step)  # fmt: skip
            _drive.end(app, event)
        elif isinstance(message, Drop):
            getattr(logger, message.level)(
                "saga %s: wait at step %d: %s", d.saga_id, d.index, message.reason
            )
            raise Ignore()
        else:
            raise TypeError(f"a wait does not carry out {message!r}")


def _delivery(task: Task[Any, Any]) -> Delivery:
    header: Mapping[str, Any] = task.request.get(HEADER) or {}
    if "id" not in header:
        raise Ignore()  # not sent by a saga: nothing to wait for
    return step_delivery(header)


def _wait(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
    """Put the saga to wait at this stage (the body of ``celery_saga.wait``)."""
    d = _delivery(self)
    spec: Mapping[str, Any] = self.request.get(HEADER, {}).get("w") or {}
    reason = "sleep" if spec.get("signal") is None else str(spec["signal"])
    _hold(self, d, args, _due(spec, time.time()), reason)


def _child_row(
    d: Delivery, plan: Mapping[str, Any], args: tuple[Any, ...], child_id: str
) -> dict[str, Any]:
    """The row of the child saga that the parent's step ``d`` runs."""
    stored = {**plan, "parent": {"id": d.saga_id, "step": d.index}}
    if args:  # what its first .s() steps get: the result before the stage
        stored["input"] = list(args)
    return saga_row(child_id, stored, utcnow(), parent_id=d.saga_id, parent_step=d.index)


def _child(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
    """Start the child saga of this stage and wait for it (``celery_saga.child``)."""
    app = self.app
    d = _delivery(self)
    store = get_store(app)
    parent = guarded(self, lambda: store.get_saga(d.saga_id))
    if parent is None:
        raise Ignore()  # the saga is not known here: the wait's claim would say so
    plan: Mapping[str, Any] = parent.plan["steps"][d.index]["child"]
    child_id = child_saga_id(d.saga_id, d.index)
    _hold(self, d, args, None, child_id, child=_child_row(d, plan, args, child_id))


def _start_child(app: Celery, d: Delivery, row: Mapping[str, Any]) -> None:
    """Send the first stage of the child saga just stored (``row``)."""
    event = SagaEvent(row["id"], row["name"], SagaStatus.RUNNING, parent_id=d.saga_id,
                      parent_step=d.index)  # fmt: skip
    try:
        with _observe.publishing(app, row["id"], row["name"]):
            publish_stage(app, row["id"], row["plan"], 0, created=row["created_at"],
                          previous=tuple(row["plan"].get("input") or ()))  # fmt: skip
    except Exception:  # stored: the recovery sweep sends its first stage
        logger.warning("saga %s: could not send child saga %s", d.saga_id, row["id"],
                       exc_info=True)  # fmt: skip
    signals.saga_started.send(sender=row["name"], event=event)
    signals.child_started.send(sender=row["name"], event=event)


def register_wait_task(app: Celery) -> None:
    """Register ``celery_saga.wait`` and ``celery_saga.child`` on the app."""
    for name, body in ((WAIT_TASK, _wait), (CHILD_TASK, _child)):
        register_internal(app, name, body)
