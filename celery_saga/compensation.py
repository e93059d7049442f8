"""The internal task ``celery_saga.compensate``: undo one succeeded step.

A failing step's ``link_error`` is a chain of these, one per succeeded step before it,
newest first. Each claims the step's compensation in the store (so a duplicate message
does not run it twice), calls the user's compensation task in-process with the step's
stored result and arguments, and records the outcome. A compensation that raises is
retried with exponential backoff; when it gives up, its error is recorded and the task
returns normally, so that the rest of the chain (the other compensations) still runs.
The last one in the chain ends the saga: ``FAILED`` if any compensation gave up, else
``COMPENSATED``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from . import _faults, _observe, signals
from ._errors import describe_error
from ._runtime import get_store
from .config import get_config
from .errors import SagaConfigurationError, SagaStoreError
from .execution import StepContext, running, store_retry
from .signals import SagaEvent, StepEvent
from .store import ClaimOutcome, utcnow

__all__ = ["COMPENSATE_TASK", "end_compensated_saga", "register_tasks"]

logger = get_task_logger(__name__)

#: The internal task that runs one compensation.
COMPENSATE_TASK = "celery_saga.compensate"

_MAX_RETRY_DELAY = 60.0


def _compensate(
    self: Task[Any, Any], saga_id: str, index: int, last: bool = False, name: str = ""
) -> None:
    """Run the compensation of one succeeded step (the body of ``celery_saga.compensate``)."""
    app = self.app
    config = get_config(app)
    store = get_store(app)
    token = uuid.uuid4().hex
    try:
        claim = store.claim_compensation(saga_id, index, token, config.step_lease)
    except SagaStoreError as exc:
        raise store_retry(self, exc) from exc

    if claim.outcome is ClaimOutcome.BUSY:
        logger.info("saga %s: compensation of step %d is running elsewhere", saga_id, index)
        raise Ignore()  # its owner carries the rest of the chain on
    if claim.outcome is ClaimOutcome.CLAIMED:
        step = claim.step
        assert step is not None
        assert step.compensate is not None
        sender = step.compensate

        def event(**fields: Any) -> StepEvent:
            return StepEvent(saga_id=saga_id, saga_name=name, step_index=index,
                             step_name=step.name, attempt=claim.attempt,
                             compensate=step.compensate, **fields)  # fmt: skip

        context = StepContext(saga_id=saga_id, saga_name=name, step_index=index,
                              step_name=step.name, attempt=claim.attempt,
                              compensating=True)  # fmt: skip
        inject = _faults.injector(app)
        names = (step.name, step.compensate)
        inject("claimed", context, names)
        begun = event()
        signals.compensation_started.send(sender=sender, event=begun)
        started = time.monotonic()
        try:
            with _observe.compensation(app, begun, step), running(context):
                inject("body", context, names)
                compensation = app.tasks.get(step.compensate)
                if compensation is None:
                    raise SagaConfigurationError(
                        f"compensation task {step.compensate!r} is not registered in this worker"
                    )
                compensation(step.result, *(step.args or ()), **(step.kwargs or {}))
        except Exception as exc:
            error = describe_error(exc)
            retries = self.request.retries
            can_retry = retries < config.compensation_max_retries and not isinstance(
                exc, SagaConfigurationError
            )
            try:
                store.finish_compensation(saga_id, index, token, error=error, gave_up=not can_retry)
            except SagaStoreError as store_exc:
                raise store_retry(self, store_exc) from exc
            signals.compensation_failed.send(sender=sender, event=event(
                duration=time.monotonic() - started, error=error,
                reason="retry" if can_retry else "gave up"))  # fmt: skip
            if can_retry:
                delay = min(config.compensation_retry_delay * 2.0**retries, _MAX_RETRY_DELAY)
                logger.warning("saga %s: compensation of step %d failed (%s); retry in %.1f s",
                               saga_id, index, error["type"], delay)  # fmt: skip
                raise self.retry(
                    exc=exc, countdown=delay, max_retries=config.compensation_max_retries
                ) from exc
            message = _observe.redact(app, sender, "error", error["message"])
            logger.error("saga %s: compensation of step %d gave up: %s: %s",
                         saga_id, index, error["type"], message)  # fmt: skip
        else:
            inject("done", context, names)
            try:
                store.finish_compensation(saga_id, index, token)
            except SagaStoreError as exc:
                raise store_retry(self, exc) from exc
            signals.compensation_succeeded.send(
                sender=sender, event=event(duration=time.monotonic() - started)
            )
    if last:
        _finish(self, saga_id)


def _finish(task: Task[Any, Any], saga_id: str) -> None:
    """End the saga after its last compensation, and say how it ended."""
    try:
        end_compensated_saga(task.app, saga_id)
    except SagaStoreError as exc:
        raise store_retry(task, exc) from exc


def end_compensated_saga(app: Celery, saga_id: str) -> bool:
    """End a saga whose compensations are over (``COMPENSATED`` or ``FAILED``).

    Sends the end signal when this call ended it; returns whether it did.
    """
    store = get_store(app)
    if not store.finish_saga_compensation(saga_id):
        return False  # only the caller that ended it says so
    record = store.get_saga(saga_id)
    if record is not None:
        duration = (utcnow() - record.created_at.replace(tzinfo=None)).total_seconds()
        signals.send_saga_end(SagaEvent(record.id, record.name, record.status, duration,
                                        record.error, record.failed_step))  # fmt: skip
    return True


def register_tasks(app: Celery) -> None:
    """Register celery_saga's internal tasks on the app."""
    app.task(
        name=COMPENSATE_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        shared=False,
    )(_compensate)
