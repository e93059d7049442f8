"""The internal task ``celery_saga.compensate``: undo one succeeded (or in-doubt) step.

A step that fails for good sends a chain of these, one per succeeded step before it,
newest first; the recovery sweep and the operator's commands send the same chains.
Each claims the step's compensation in the store (so a duplicate message does not run
it twice, and an errback Celery fired for a saga that is still running does nothing),
calls the user's compensation task in-process with the step's stored result and
arguments, and records the outcome. A compensation that raises is retried with
exponential backoff; when it gives up, its error is recorded and the task returns
normally, so that the rest of the chain still runs. The last of a chain settles the
saga (:mod:`celery_saga.machine` says how: more to undo, or the end).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from . import _drive, _faults, _observe, signals
from ._errors import describe_error
from ._heartbeat import held
from ._runtime import get_store
from .config import get_config
from .context import StepContext, running
from .dispatch import (
    COMPENSATE_TASK,
    HEADER,
    compensation_delivery,
    guarded,
    register_internal,
    republish,
    retry_later,
)
from .errors import SagaConfigurationError
from .machine import (
    CompensationClaimed,
    CompensationFailed,
    CompensationSucceeded,
    CompensationUnavailable,
    Drop,
    GiveBackCompensation,
    Move,
    Outcome,
    Reconcile,
    RecordCompensation,
    Run,
    decide,
)
from .plan import CHILD_TASK
from .records import SagaRecord, StepRecord
from .signals import StepEvent

__all__ = ["register_tasks"]

logger = get_task_logger(__name__)

_MAX_COMPENSATION_DELAY = 60.0


def _compensate(
    self: Task[Any, Any], saga_id: str, index: int, last: bool = False, name: str = ""
) -> None:
    """Run the compensation of one succeeded step (the body of ``celery_saga.compensate``)."""
    app = self.app
    config = get_config(app)
    store = get_store(app)
    d = compensation_delivery(saga_id, index, name, last)

    def guard(write: Callable[[], Any]) -> Any:
        return guarded(self, write)

    def carry_out(move: Move, read: tuple[SagaRecord, list[StepRecord]] | None = None) -> None:
        """The move's messages; ``read``: the saga as the compensation's record read it."""
        for message in move.messages:
            if isinstance(message, Reconcile):
                guard(lambda: _drive.settle(app, saga_id, read))
            elif isinstance(message, Drop):
                if message.reason == "missing":
                    logger.error(
                        "saga %s: compensation of step %d not run: the saga store %s "
                        "does not know this saga",
                        saga_id,
                        index,
                        store.safe_url,
                    )
                else:
                    getattr(logger, message.level)(
                        "saga %s: compensation of step %d not run: %s",
                        saga_id,
                        index,
                        message.reason,
                    )
                raise Ignore()
            else:
                raise TypeError(f"a compensation does not carry out {message!r}")

    token = uuid.uuid4().hex
    claim = guard(lambda: store.claim_compensation(saga_id, index, token, config.step_lease))
    move = decide(d, CompensationClaimed(Outcome(claim.outcome.value)), compensation=True)
    if not any(isinstance(m, Run) for m in move.messages):
        carry_out(move)
        return
    step = claim.step
    assert step is not None
    assert step.compensate is not None
    if step.compensate == CHILD_TASK:  # a child saga, undone as a unit by itself
        self.request.chain = None  # the steps before it are undone once it has ended
        guard(lambda: _drive.undo_child(app, saga_id, index))
        return
    sender = step.compensate
    compensation = app.tasks.get(step.compensate)
    if compensation is None:  # another deploy's worker: park, never give up for that
        move = decide(d, CompensationUnavailable(config.park_retry), compensation=True)
        assert isinstance(move.transition, GiveBackCompensation)
        delay = move.transition.delay
        guard(lambda: store.give_back_compensation(saga_id, index, token, delay))
        saga = guard(lambda: store.get_saga(saga_id))
        if saga is not None:
            worker = self.request.hostname or "this worker"
            guard(lambda: _drive.park(app, saga, index, step.compensate or "", worker))
        raise republish(self, delay, k=1)
    parked = bool((self.request.get(HEADER) or {}).get("k"))

    def event(**fields: Any) -> StepEvent:
        return StepEvent(
            saga_id=saga_id,
            saga_name=name,
            step_index=index,
            step_name=step.name,
            attempt=claim.attempt,
            compensate=step.compensate,
            **fields,
        )

    context = StepContext(
        saga_id=saga_id,
        saga_name=name,
        step_index=index,
        step_name=step.name,
        attempt=claim.attempt,
        compensating=True,
    )
    inject = _faults.injector(app)
    names = (step.name, step.compensate)
    inject("claimed", context, names)
    begun = event()
    signals.compensation_started.send(sender=sender, event=begun)
    started = time.monotonic()
    try:
        with (
            held(app, (saga_id, index, token)),
            _observe.compensation(app, begun, step),
            running(context),
        ):
            inject("body", context, names)
            compensation(step.result, *(step.args or ()), **(step.kwargs or {}))
    except Exception as exc:
        error = describe_error(exc)
        retries = self.request.retries
        delay = min(config.compensation_retry_delay * 2.0**retries, _MAX_COMPENSATION_DELAY)
        failure = CompensationFailed(
            retries,
            config.compensation_max_retries,
            delay,
            final=isinstance(exc, SagaConfigurationError),
        )
        move = decide(d, failure, compensation=True)
        assert isinstance(move.transition, RecordCompensation)
        gave_up = move.transition.gave_up
        guard(
            lambda: store.finish_compensation(
                saga_id, index, token, error=error, gave_up=gave_up, retry_in=delay
            )
        )
        signals.compensation_failed.send(
            sender=sender,
            event=event(
                duration=time.monotonic() - started,
                error=error,
                reason="gave up" if gave_up else "retry",
            ),
        )
        if not gave_up:
            logger.warning(
                "saga %s: compensation of step %d failed (%s); retry in %.1f s",
                saga_id,
                index,
                error["type"],
                delay,
            )
            retry_later(self, exc, delay, max_retries=config.compensation_max_retries)
        message = _observe.redact(app, sender, "error", error["message"])
        logger.error(
            "saga %s: compensation of step %d gave up: %s: %s",
            saga_id,
            index,
            error["type"],
            message,
        )
        carry_out(move)  # the last of its chain settles the saga
        return
    inject("done", context, names)
    move = decide(d, CompensationSucceeded(), compensation=True)
    read = None
    if any(isinstance(m, Reconcile) for m in move.messages):  # the record reads the saga too
        _, read = guard(lambda: store.finish_last_compensation(saga_id, index, token))
    else:
        guard(lambda: store.finish_compensation(saga_id, index, token))
    if parked:  # it waited for a worker with its task: this one has it
        guard(lambda: store.park(saga_id, None))
    signals.compensation_succeeded.send(
        sender=sender, event=event(duration=time.monotonic() - started)
    )
    carry_out(move, read)


def register_tasks(app: Celery) -> None:
    """Register celery_saga's internal compensation task on the app."""
    register_internal(app, COMPENSATE_TASK, _compensate)
