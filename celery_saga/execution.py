"""What runs inside a worker: claim a step, run it, record it, hand on or compensate.

Forward steps travel as an ordinary Celery chain. Every step message carries the saga
header (saga id, step index, step count) and, as ``link_error``, the chain of
``celery_saga.compensate`` messages for the steps before it, newest first. Each
transition is committed to the store before Celery publishes the next message.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from kombu.utils.json import dumps as json_dumps

from . import _faults, _observe, signals
from ._errors import describe_error
from ._runtime import get_store
from .config import get_config
from .errors import SagaStoreError, SagaValidationError
from .signals import SagaEvent, StepEvent
from .status import SagaStatus, StepStatus
from .step import StepDefinition
from .store import ClaimOutcome, Completion, EncodedJSON

__all__ = ["HEADER", "StepContext", "current_step", "run_step", "running", "store_retry"]

logger = get_task_logger(__name__)

#: The message header that makes a task run as a saga step.
HEADER = "celery_saga"

_IDEMPOTENCY_NAMESPACE = uuid.UUID("7d2c8f0e-5b1a-4b8e-9a53-3c1f0f6a9e21")
_MAX_STORE_RETRY_DELAY = 30.0


@dataclass(frozen=True)
class StepContext:
    """Who is running: returned by :func:`current_step` inside a saga step or compensation.

    .. versionadded:: 0.1
    """

    saga_id: str
    saga_name: str
    step_index: int
    step_name: str
    attempt: int
    compensating: bool = False

    @property
    def idempotency_key(self) -> str:
        """A key that stays the same across retries and redeliveries of this step.

        Pass it to payment-style APIs. The compensation of a step has its own key.
        """
        role = "compensate" if self.compensating else "step"
        name = f"{self.saga_id}\x00{self.step_index}\x00{role}"
        return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, name))


_current: ContextVar[StepContext | None] = ContextVar("celery_saga_current_step", default=None)


def current_step() -> StepContext | None:
    """The saga step (or compensation) running in this context, or None outside one.

    .. versionadded:: 0.1
    """
    return _current.get()


@contextmanager
def running(context: StepContext) -> Iterator[None]:
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


def store_retry(task: Task[Any, Any], exc: SagaStoreError) -> Retry:
    """Retry the message later: the store is down, and the saga must not move without it."""
    config = get_config(task.app)
    delay = min(2.0**task.request.retries, _MAX_STORE_RETRY_DELAY)
    logger.warning("%s; retrying %s in %.0f s", exc, task.name, delay)
    return task.retry(exc=exc, countdown=delay, max_retries=config.store_max_retries)


def _encode_result(result: Any, limit: int, step_name: str) -> EncodedJSON:
    """The result as the JSON the store keeps, or a clear error if it cannot be kept."""
    try:
        encoded = json_dumps(result)
    except (TypeError, ValueError) as exc:
        raise SagaValidationError(
            f"saga step {step_name!r} returned a value that is not JSON-serialisable "
            f"({exc}); return plain data (dict, list, str, numbers) from saga steps"
        ) from exc
    if len(encoded) > limit:
        raise SagaValidationError(
            f"saga step {step_name!r} returned {len(encoded)} bytes of JSON, over the "
            f"saga_max_result_bytes limit of {limit}; store large data elsewhere and "
            f"return a reference to it"
        )
    return EncodedJSON(encoded)


def _due(exc: Exception) -> datetime | None:
    """When a Retry's next attempt is due (None: now, or not a retry)."""
    when = getattr(exc, "when", None) if isinstance(exc, Retry) else None
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    if isinstance(when, int | float) and not isinstance(when, bool):
        return datetime.now(UTC) + timedelta(seconds=when)
    return None


def _seconds_since(epoch: float | None) -> float | None:
    return None if epoch is None else max(time.time() - epoch, 0.0)


def run_step(
    task: Task[Any, Any],
    definition: StepDefinition,
    original: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """The ``run`` of a saga step task: the original function, wrapped in the saga protocol."""
    request = task.request
    header: Mapping[str, Any] | None = request.get(HEADER) if request is not None else None
    if not header:
        return original(*args, **kwargs)

    saga_id: str = header["id"]
    saga_name: str = header.get("name", "")
    index: int = header["i"]
    deadline = header.get("d")
    if deadline is not None and time.time() > deadline:
        _stop_at_deadline(task, saga_id, saga_name, index, deadline - header["t"])
    config = get_config(task.app)
    store = get_store(task.app)
    token = uuid.uuid4().hex
    lease = config.step_lease
    hard_limit = (getattr(request, "timelimit", None) or (None, None))[0] or task.time_limit
    if hard_limit:
        lease = max(lease, float(hard_limit) + 30.0)
    try:
        claim = store.claim_step(
            saga_id,
            index,
            token,
            args,
            kwargs,
            lease,
            stage=header.get("s", index),
            task=task.name,
            compensate=definition.compensation_name,
        )
    except SagaStoreError as exc:
        raise store_retry(task, exc) from exc

    def event(**fields: Any) -> StepEvent:
        return StepEvent(saga_id=saga_id, saga_name=saga_name, step_index=index,
                         step_name=task.name, **fields)  # fmt: skip

    if claim.outcome is not ClaimOutcome.CLAIMED:
        reason = claim.outcome.value
        logger.info("saga %s step %d (%s) not run: %s", saga_id, index, task.name, reason)
        signals.step_skipped.send(sender=task.name, event=event(reason=reason))
        if claim.outcome is ClaimOutcome.DONE:
            return claim.result  # a redelivery of a step that succeeded: pass its result on
        if claim.outcome is ClaimOutcome.HALTED:  # cancelled after the step before succeeded
            _compensate_halted(task, saga_id)
        raise Ignore()

    context = StepContext(
        saga_id=saga_id,
        saga_name=saga_name,
        step_index=index,
        step_name=task.name,
        attempt=claim.attempt,
    )
    inject = _faults.injector(task.app)
    names = (task.name,)
    inject("claimed", context, names)
    begun = event(attempt=claim.attempt)
    signals.step_started.send(sender=task.name, event=begun)
    started = time.monotonic()
    try:
        with _observe.step(task.app, begun, args, kwargs) as scope, running(context):
            inject("body", context, names)
            result = original(*args, **kwargs)
            scope.set_result(result)
            encoded = _encode_result(result, config.max_result_bytes, task.name)
    except (Retry, Reject, Ignore) as exc:
        # The message comes back (retry, requeue) or is dropped on purpose: free the claim.
        error = describe_error(exc)
        try:
            store.release_step(saga_id, index, token, error, _due(exc))
        except SagaStoreError:
            logger.exception("saga %s step %d: could not release the claim", saga_id, index)
        if isinstance(exc, Retry):
            signals.step_retried.send(sender=task.name, event=event(
                attempt=claim.attempt, duration=time.monotonic() - started, error=error,
                reason="retry"))  # fmt: skip
        raise
    except Exception as exc:
        error = describe_error(exc)
        policy = definition.retry
        if policy is not None:
            error["retryable"] = policy.retryable(exc)
            error["attempt"] = claim.attempt
            if error["retryable"] and claim.attempt < policy.attempts:
                delay = policy.delay(claim.attempt)
                due = datetime.now(UTC) + timedelta(seconds=delay)
                try:
                    store.release_step(saga_id, index, token, error, due)
                except SagaStoreError as store_exc:
                    raise store_retry(task, store_exc) from exc
                signals.step_retried.send(sender=task.name, event=event(
                    attempt=claim.attempt, duration=time.monotonic() - started, error=error,
                    reason="retry"))  # fmt: skip
                logger.info("saga %s step %d attempt %d failed (%s); retry in %.2f s",
                            saga_id, index, claim.attempt, error["type"], delay)  # fmt: skip
                raise task.retry(exc=exc, countdown=delay, max_retries=policy.attempts) from exc
        saga_status = SagaStatus.COMPENSATING if header.get("c") else SagaStatus.COMPENSATED
        timed_out = isinstance(exc, SoftTimeLimitExceeded)
        in_doubt = timed_out and definition.compensate_on_timeout
        step_status = StepStatus.TIMED_OUT if in_doubt else StepStatus.FAILED
        try:
            recorded = store.fail_step(saga_id, index, token, error, saga_status=saga_status,
                                       step_status=step_status)  # fmt: skip
        except SagaStoreError as store_exc:
            raise store_retry(task, store_exc) from exc
        if not recorded:
            logger.warning(
                "saga %s step %d: lost its claim; not compensating from here", saga_id, index
            )
            raise Ignore() from exc
        failed = event(
            attempt=claim.attempt,
            duration=time.monotonic() - started,
            error=error,
            reason="timeout" if timed_out else "error",
        )
        if timed_out:
            signals.step_timed_out.send(sender=task.name, event=failed)
        signals.step_failed.send(sender=task.name, event=failed)
        if saga_status is SagaStatus.COMPENSATED:  # nothing before it to undo
            if _saga_status(task, saga_id) is SagaStatus.COMPENSATING:  # it was cancelled
                _compensate_halted(task, saga_id)
            else:
                elapsed = _seconds_since(header.get("t"))
                signals.send_saga_end(SagaEvent(saga_id, saga_name, saga_status, elapsed,
                                                error, index))  # fmt: skip
        raise

    inject("done", context, names)
    last = index == header["n"] - 1
    try:
        completion = store.complete_step(saga_id, index, token, encoded, last=last)
    except SagaStoreError as exc:
        raise store_retry(task, exc) from exc
    if completion is Completion.LOST:
        logger.warning(
            "saga %s step %d: lost its claim before recording; result dropped", saga_id, index
        )
        raise Ignore()
    signals.step_succeeded.send(sender=task.name, event=event(
        attempt=claim.attempt, duration=time.monotonic() - started))  # fmt: skip
    if completion is Completion.COMPLETED:
        signals.send_saga_end(SagaEvent(saga_id, saga_name, SagaStatus.COMPLETED,
                                        _seconds_since(header.get("t"))))  # fmt: skip
    elif completion is Completion.HALTED:  # cancelled while this last step ran
        _compensate_halted(task, saga_id)
    return result


def _stop_at_deadline(
    task: Task[Any, Any], saga_id: str, saga_name: str, index: int, seconds: float
) -> NoReturn:
    """The saga's deadline passed before this step: stop it (it is compensated), skip."""
    from .operations import stop_at_deadline  # late: it needs the canvas, which needs us

    try:
        stop_at_deadline(task.app, saga_id, seconds)
    except SagaStoreError as exc:
        raise store_retry(task, exc) from exc
    logger.info("saga %s step %d (%s) not run: deadline", saga_id, index, task.name)
    signals.step_skipped.send(sender=task.name, event=StepEvent(
        saga_id=saga_id, saga_name=saga_name, step_index=index, step_name=task.name,
        reason="deadline"))  # fmt: skip
    raise Ignore()


def _saga_status(task: Task[Any, Any], saga_id: str) -> SagaStatus | None:
    try:
        return get_store(task.app).get_status(saga_id)
    except SagaStoreError as exc:
        raise store_retry(task, exc) from exc


def _compensate_halted(task: Task[Any, Any], saga_id: str) -> None:
    """Undo what a cancelled saga did (see :mod:`celery_saga.operations`)."""
    from .operations import compensate_halted  # late: cancel needs the canvas, which needs us

    try:
        compensate_halted(task.app, saga_id)
    except SagaStoreError as exc:
        raise store_retry(task, exc) from exc
