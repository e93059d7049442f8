"""The recovery sweep: drive on, from the store, sagas whose messages are gone.

Celery loses a saga's next message in known cases: a worker killed mid-step on a broker
that redelivers late (Redis: after ``visibility_timeout``) or never (``filesystem://``),
an errback that never fired, a producer that died between storing a saga and sending it.
The store still knows where each saga stands, so :func:`recover` (and the task
``celery_saga.recover``, for beat) looks at sagas that are not finished and:

- a step whose owner's lease ran out (its worker died): sends that step again, and the
  rest of the chain after it; the new delivery claims it (the old owner, if it was only
  slow, can no longer record anything: fencing);
- a saga with no step running and no progress for ``saga_recovery_stall`` seconds:
  sends its next step (a lost message), with the previous step's stored result;
- a compensating saga with no compensation running and no progress for as long: sends
  the compensations still to do, newest first; with none left, ends the saga.

Everything it sends may meet a late original: claims make the duplicate a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, Task
from celery.utils.log import get_task_logger

from ._runtime import get_store
from .canvas import compensation_chain, publish
from .compensation import end_compensated_saga
from .config import get_config
from .errors import SagaNotFound
from .records import SagaRecord, StepRecord
from .status import SagaStatus, StepStatus

__all__ = [
    "RECOVER_TASK",
    "Recovery",
    "decide",
    "recover",
    "register_recovery_task",
    "step_running",
]

logger = get_task_logger(__name__)

#: The periodic task that runs :func:`recover`.
RECOVER_TASK = "celery_saga.recover"


@dataclass(frozen=True)
class Recovery:
    """What the sweep did (or, with ``dry_run``, would do) with one saga.

    ``action`` is ``"forward"`` (``steps`` = the step sent again, then the ones after
    it), ``"compensate"`` (``steps`` = the compensations sent, in order), ``"finish"``
    (compensations all done: saga ended), ``"deadline"`` (past its ``deadline=``:
    stopped and compensated) or ``"none"``; ``reason`` says why.

    .. versionadded:: 0.1
    """

    saga_id: str
    action: str
    steps: tuple[int, ...]
    reason: str


def _last_activity(saga: SagaRecord, steps: Sequence[StepRecord]) -> datetime:
    moments = [saga.created_at, saga.updated_at]
    for step in steps:
        moments += [
            moment
            for moment in (
                step.started_at,
                step.finished_at,
                step.compensation_started_at,
                step.compensation_finished_at,
                step.lease_expires_at,  # a running step's lease end, a retry's due time
            )
            if moment is not None
        ]
    return max(moments)


_TO_UNDO = (StepStatus.SUCCEEDED, StepStatus.TIMED_OUT, StepStatus.COMPENSATING)


def _alive(step: StepRecord, now: datetime) -> bool:
    return step.lease_expires_at is not None and step.lease_expires_at > now


def step_running(steps: Sequence[StepRecord], now: datetime) -> bool:
    """Whether a worker is running one of the steps (it holds a live lease)."""
    return any(s.status is StepStatus.RUNNING and _alive(s, now) for s in steps)


def decide(saga: SagaRecord, steps: Sequence[StepRecord], now: datetime, stall: float) -> Recovery:
    """What recovery should do with a saga, from its stored state alone."""

    def outcome(action: str, steps: Sequence[int], reason: str) -> Recovery:
        return Recovery(saga.id, action, tuple(steps), reason)

    quiet = now - _last_activity(saga, steps) >= timedelta(seconds=stall)
    deadline = saga.plan.get("deadline")
    if saga.status is SagaStatus.RUNNING:
        for step in steps:
            if step.status is StepStatus.RUNNING and _alive(step, now):
                return outcome("none", (), f"step {step.index} is running")
        if deadline is not None and now > saga.created_at + timedelta(seconds=deadline):
            return outcome("deadline", (), f"past its deadline of {deadline:g} s")
        for step in steps:
            if step.status is StepStatus.RUNNING:
                later = range(step.index, len(steps))
                return outcome("forward", later, f"the lease of step {step.index} ran out")
        if not quiet:
            return outcome("none", (), "progress within saga_recovery_stall")
        pending = next((s for s in steps if s.status is StepStatus.PENDING), None)
        if pending is None:
            return outcome("none", (), "no step left to send")
        later = range(pending.index, len(steps))
        return outcome("forward", later, f"no progress since step {pending.index} was due")
    if saga.status is SagaStatus.COMPENSATING:
        if any(s.status is StepStatus.COMPENSATING and _alive(s, now) for s in steps):
            return outcome("none", (), "a compensation is running")
        if step_running(steps, now):
            return outcome("none", (), "a step is running (the saga was cancelled)")
        if not quiet:
            return outcome("none", (), "progress within saga_recovery_stall")
        undo = [s.index for s in reversed(steps) if s.compensate and s.status in _TO_UNDO]
        if not undo:
            return outcome("finish", (), "every compensation is done")
        return outcome("compensate", undo, "no progress in compensating")
    return outcome("none", (), f"the saga is {saga.status}")


def _apply(app: Celery, saga: SagaRecord, steps: Sequence[StepRecord], plan: Recovery) -> None:
    if plan.action == "forward":
        start = plan.steps[0]
        previous: tuple[Any, ...] = (steps[start - 1].result,) if start > 0 else ()
        publish(app, saga.id, saga.plan, start=start, created=saga.created_at, previous=previous)
    elif plan.action == "compensate":
        chain = compensation_chain(app, saga.id, saga.plan, plan.steps)
        assert chain is not None
        chain.apply_async()
    elif plan.action == "finish":
        end_compensated_saga(app, saga.id)
    elif plan.action == "deadline":
        from .operations import stop_at_deadline  # late: operations imports us indirectly

        stop_at_deadline(app, saga.id, saga.plan["deadline"])


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
    looked at. Safe to run anywhere and concurrently: duplicates it sends are no-ops.

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
        steps = store.get_steps(saga.id)
        plan = decide(saga, steps, now, stall)
        if plan.action != "none" and not dry_run:
            logger.warning("saga %s: recovery: %s %s (%s)",
                           saga.id, plan.action, list(plan.steps), plan.reason)  # fmt: skip
            _apply(app, saga, steps, plan)
        done.append(plan)
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
