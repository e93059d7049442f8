"""What runs inside a worker: the step task's saga protocol and ``celery_saga.compensate``.

Each turns what happened (the message arrived, the claim found this, the body raised
that) into an event for :mod:`celery_saga.machine`, commits the move's transition to
the store, and carries out its messages. A store that cannot be reached never counts
against a step: the message is sent again later with Celery's retry count untouched,
carrying what it still has to record, so the body does not run again for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from kombu.utils.json import dumps as json_dumps
from kombu.utils.json import loads as json_loads

from . import _drive, _faults, _observe, signals
from ._errors import describe_error
from ._heartbeat import held
from ._runtime import get_store
from ._values import unstorable
from .config import get_config
from .context import StepContext, running
from .definition import StepDefinition
from .dispatch import (
    HEADER,
    guarded,
    publish_stage,
    republish,
    retry_later,
    send_compensations,
    send_next,
    undo_list,
)
from .dispatch import step_delivery as _delivery
from .errors import SagaStoreError, SagaValidationError
from .machine import (
    AttemptFailed,
    AttemptReleased,
    AttemptSucceeded,
    Claimed,
    Complete,
    Delivered,
    Delivery,
    Drop,
    Ended,
    Fail,
    FailureRecorded,
    Join,
    Move,
    Outcome,
    PassOn,
    Reconcile,
    Release,
    RetryLater,
    Run,
    SendCompensations,
    SendNext,
    SendStage,
    Stop,
    Stopped,
    SuccessRecorded,
    decide,
)
from .signals import SagaEvent, StepEvent
from .status import SagaStatus, StepStatus
from .store import EncodedJSON
from .store import Join as StoredJoin

__all__ = ["check_store", "run_step"]

logger = get_task_logger("celery_saga.execution")


def check_store(app: Celery) -> bool:
    """Whether the app's store can be reached; logs an ERROR naming it when not."""
    store = get_store(app)
    try:
        store.ensure_schema()
        store.schema_version()
    except SagaStoreError as exc:
        logger.error(
            "celery_saga: this worker cannot reach its saga store %s: %s; saga "
            "steps wait until it can",
            store.safe_url,
            exc,
        )
        return False
    return True


# -- forward steps ---------------------------------------------------------------------


def _encode_result(result: Any, limit: int, step_name: str) -> EncodedJSON:
    """The result as the JSON the store keeps, or a clear error if it cannot be kept."""
    try:
        encoded = json_dumps(result)
    except (TypeError, ValueError) as exc:
        raise SagaValidationError(
            f"saga step {step_name!r} returned a value that is not JSON-serialisable "
            f"({exc}); return plain data (dict, list, str, numbers) from saga steps"
        ) from exc
    problem = unstorable(result, encoded)
    if problem is not None:
        raise SagaValidationError(
            f"saga step {step_name!r} returned {problem}; the saga store cannot keep "
            f"that: strip or encode it (e.g. base64) in the step"
        )
    if len(encoded) > limit:
        raise SagaValidationError(
            f"saga step {step_name!r} returned {len(encoded)} bytes of JSON, over the "
            f"saga_max_result_bytes limit of {limit}; store large data elsewhere and "
            f"return a reference to it"
        )
    return EncodedJSON(encoded)


def _due(exc: Exception) -> float | None:
    """Seconds until a Retry's next attempt is due (None: now, or not a retry)."""
    when = getattr(exc, "when", None) if isinstance(exc, Retry) else None
    if isinstance(when, datetime):
        aware = when if when.tzinfo else when.replace(tzinfo=UTC)
        return max((aware - datetime.now(UTC)).total_seconds(), 0.0)
    if isinstance(when, int | float) and not isinstance(when, bool):
        return float(when)
    return None


def _due_at(delay: float | None) -> datetime | None:
    """When a retry ``delay`` seconds from now is due (None: not known)."""
    return None if delay is None else datetime.now(UTC) + timedelta(seconds=delay)


def _seconds_since(epoch: float | None) -> float | None:
    return None if epoch is None else max(time.time() - epoch, 0.0)


class _StepShell:
    """One delivery of a step message: the state machine's moves carried out."""

    def __init__(
        self,
        task: Task[Any, Any],
        definition: StepDefinition,
        d: Delivery,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.task = task
        self.app = task.app
        self.definition = definition
        self.d = d
        self.args = args
        self.kwargs = kwargs
        self.store = get_store(task.app)
        self.config = get_config(task.app)
        self.started = time.monotonic()
        self.attempt = 0
        self.failure: dict[str, Any] | None = None  # the error it failed with, once recorded
        self.joined: StoredJoin | None = None  # what its join found, when the step joined

    def event(self, **fields: Any) -> StepEvent:
        return StepEvent(
            saga_id=self.d.saga_id,
            saga_name=self.d.name,
            step_index=self.d.index,
            step_name=self.task.name,
            **fields,
        )

    def timed(self, **fields: Any) -> StepEvent:
        duration = time.monotonic() - self.started
        return self.event(attempt=self.attempt, duration=duration, **fields)

    # what every move may ask for
    def carry_out(self, move: Move, result: Any = None) -> Any:
        dropped = False
        for message in move.messages:
            if isinstance(message, PassOn):
                result = message.result
            elif isinstance(message, SendNext):
                self.send_next(result)
            elif isinstance(message, SendStage):
                self.send_stage(message)
            elif isinstance(message, Reconcile):
                self.guard(lambda: _drive.settle(self.app, self.d.saga_id))
            elif isinstance(message, Ended):
                status = message.status
                error = self.failure if status is SagaStatus.COMPENSATED else None
                event = SagaEvent(
                    self.d.saga_id,
                    self.d.name,
                    status,
                    _seconds_since(self.d.started),
                    error,
                    None if error is None else self.d.index,
                    self.d.parent_id,
                    self.d.parent_step,
                )
                _drive.end(self.app, event)
            elif isinstance(message, Drop):
                self.drop(message)
                dropped = True
            else:
                raise TypeError(f"a step does not carry out {message!r}")
        if dropped:
            raise Ignore()
        return result

    def guard(self, write: Callable[[], Any], **pending: Any) -> Any:
        return guarded(self.task, write, **pending)

    def drop(self, message: Drop) -> None:
        d = self.d
        if message.reason == "missing":
            logger.error(
                "saga %s step %d (%s) not run: the saga store %s does not know "
                "this saga (is the producer using another store?)",
                d.saga_id,
                d.index,
                self.task.name,
                self.store.safe_url,
            )
            signals.saga_not_found.send(
                sender=self.task.name,
                event=self.event(reason=f"not in the saga store {self.store.safe_url}"),
            )
            signals.step_skipped.send(sender=self.task.name, event=self.event(reason="missing"))
            return
        level = getattr(logger, message.level)
        level(
            "saga %s step %d (%s) not run: %s", d.saga_id, d.index, self.task.name, message.reason
        )
        if message.reason in ("done", "busy", "stopped", "halted", "deadline"):
            signals.step_skipped.send(
                sender=self.task.name, event=self.event(reason=message.reason)
            )

    def send_next(self, result: Any) -> None:
        try:
            send_next(self.task, result)
        except Exception:
            # The step is recorded: never let Celery take this for the step's failure.
            logger.exception(
                "saga %s step %d: recorded, but the next step could not be "
                "sent; the recovery sweep sends it",
                self.d.saga_id,
                self.d.index,
            )
            raise Ignore() from None

    def send_stage(self, message: SendStage) -> None:
        """The step completed its stage: send the next one, from the plan its join read."""
        d = self.d
        try:
            joined = self.joined
            assert joined is not None
            assert joined.plan is not None
            publish_stage(
                self.app, d.saga_id, joined.plan, message.stage, joined.created_at,
                message.previous,
            )  # fmt: skip
        except Exception:
            # The join is recorded: never let Celery take this for the step's failure.
            logger.exception(
                "saga %s step %d: its stage is done, but the next one could not be sent; "
                "the recovery sweep sends it",
                d.saga_id,
                d.index,
            )
            raise Ignore() from None

    def run(self, original: Callable[..., Any]) -> Any:
        d = self.d
        move = decide(d, Delivered(time.time()))
        if isinstance(move.transition, Stop):  # past the deadline: stop, do not start
            error = move.transition.error
            stopped = self.guard(lambda: self.store.cancel_saga(d.saga_id, error))
            return self.carry_out(decide(d, Stopped(applied=stopped)))
        pending = self.task.request.get(HEADER, {}).get("p")
        if pending:  # the body ran; the store was down when its outcome was to be written
            return self.record_pending(pending)
        token = uuid.uuid4().hex
        claim = self.guard(
            lambda: self.store.claim_step(
                d.saga_id,
                d.index,
                token,
                self.args,
                self.kwargs,
                self.config.step_lease,
                stage=self.task.request.get(HEADER, {}).get("s", d.index),
                task=self.task.name,
                compensate=self.definition.compensation_name,
            )
        )
        move = decide(d, Claimed(Outcome(claim.outcome.value), claim.result))
        if not any(isinstance(m, Run) for m in move.messages):
            if claim.outcome.value == "done":  # a redelivery: say it was skipped
                self.drop(Drop("done"))
            return self.carry_out(move)
        self.attempt = claim.attempt
        if self.task.request.get(HEADER, {}).get("k"):  # it was parked: a worker has it now
            self.guard(lambda: self.store.park(d.saga_id, None))
        with held(self.app, (d.saga_id, d.index, token)):
            return self.attempt_body(original, token)

    def attempt_body(self, original: Callable[..., Any], token: str) -> Any:
        d = self.d
        context = StepContext(
            saga_id=d.saga_id,
            saga_name=d.name,
            step_index=d.index,
            step_name=self.task.name,
            attempt=self.attempt,
        )
        inject = _faults.injector(self.app)
        names = (self.task.name,)
        inject("claimed", context, names)
        begun = self.event(attempt=self.attempt)
        signals.step_started.send(sender=self.task.name, event=begun)
        self.started = time.monotonic()
        try:
            with _observe.step(self.app, begun, self.args, self.kwargs) as scope, running(context):
                inject("body", context, names)
                result = original(*self.args, **self.kwargs)
                scope.set_result(result)
                encoded = _encode_result(result, self.config.max_result_bytes, self.task.name)
        except (Retry, Reject, Ignore) as exc:
            # The message comes back (retry, requeue) or is dropped on purpose.
            error = describe_error(exc)
            move = decide(d, AttemptReleased(_due(exc)))
            try:
                self.release(token, error, move)
            except SagaStoreError:
                logger.exception("saga %s step %d: could not release the claim", d.saga_id, d.index)
            if isinstance(exc, Retry):
                signals.step_retried.send(
                    sender=self.task.name, event=self.timed(error=error, reason="retry")
                )
            raise
        except Exception as exc:
            self.failed(exc, token)
            raise  # Celery marks it failed; the compensations are on their way
        inject("done", context, names)
        return self.succeeded(token, result, encoded)

    def release(self, token: str, error: Mapping[str, Any] | None, move: Move) -> None:
        assert isinstance(move.transition, Release)
        due = _due_at(move.transition.delay)
        self.store.release_step(self.d.saga_id, self.d.index, token, error, due)

    def failed(self, exc: Exception, token: str) -> None:
        """The body raised: retry it as its policy says, or record the final failure."""
        d = self.d
        error = describe_error(exc)
        policy = self.definition.retry
        timed_out = isinstance(exc, SoftTimeLimitExceeded)
        if policy is not None:  # the policy's verdict is kept with the error
            error["retryable"] = policy.retryable(exc)
            error["attempt"] = self.attempt
        failure = AttemptFailed(
            attempt=self.attempt,
            retryable=policy is not None and error["retryable"],
            attempts=0 if policy is None else policy.attempts,
            delay=0.0 if policy is None else policy.delay(self.attempt),
            timed_out=timed_out,
            undo_on_timeout=self.definition.compensate_on_timeout,
        )
        move = decide(d, failure)
        if isinstance(move.transition, Release):
            self.guard(
                lambda: self.release(token, error, move),
                p={"k": token, "release": error, "delay": failure.delay},
            )
            (retry,) = (m for m in move.messages if isinstance(m, RetryLater))
            signals.step_retried.send(
                sender=self.task.name, event=self.timed(error=error, reason="retry")
            )
            logger.info(
                "saga %s step %d attempt %d failed (%s); retry in %.2f s",
                d.saga_id,
                d.index,
                self.attempt,
                error["type"],
                retry.countdown,
            )
            retries = self.task.request.retries or 0  # the policy counts the attempts
            retry_later(self.task, exc, retry.countdown, max_retries=retries + 1)
        assert isinstance(move.transition, Fail)
        fail = move.transition
        self.record_failure(token, error, fail, exc, reason="timeout" if timed_out else "error")

    def record_failure(
        self, token: str, error: dict[str, Any], fail: Fail, exc: Exception | None, reason: str
    ) -> None:
        d = self.d
        pending = {
            "k": token,
            "fail": error,
            "step_status": fail.step_status.value,
            "saga_status": fail.saga_status.value,
            "reason": reason,
        }
        recorded = self.guard(
            lambda: self.store.fail_step(
                d.saga_id,
                d.index,
                token,
                error,
                saga_status=fail.saga_status,
                step_status=fail.step_status,
                lock=d.grouped,
                attempt=self.attempt or None,
                plan=not d.grouped,
            ),
            p=pending,
        )
        plan = recorded.plan
        if plan is not None:  # what the failure undoes, from the plan its write read
            d = self.d = replace(d, undo=tuple(undo_list(plan["steps"], d.index)))
        move = decide(
            d,
            FailureRecorded(recorded.recorded, recorded.moved, fail.saga_status, fail.step_status),
        )
        if recorded:
            failed = self.timed(error=error, reason=reason)
            if reason == "timeout":
                signals.step_timed_out.send(sender=self.task.name, event=failed)
            signals.step_failed.send(sender=self.task.name, event=failed)
        self.failure = error
        sends = [m for m in move.messages if isinstance(m, SendCompensations)]
        rest = Move(
            messages=tuple(m for m in move.messages if not isinstance(m, SendCompensations))
        )
        self.carry_out(rest)  # a lost claim drops the message (Ignore)
        if sends and plan is None:  # (not read: the store decides what to undo)
            self.guard(lambda: _drive.settle(self.app, d.saga_id))
        elif sends:
            self.send_compensations(plan, sends)

    def send_compensations(self, plan: Mapping[str, Any], sends: list[SendCompensations]) -> None:
        """The failure is recorded: send what it undoes (Celery sends no errbacks)."""
        d = self.d
        try:
            for message in sends:
                send_compensations(self.task, d.saga_id, plan, message.indices)
        except Exception:
            # The failure is recorded: the saga is COMPENSATING, and the sweep undoes it.
            logger.exception(
                "saga %s step %d: its failure is recorded, but its compensations could "
                "not be sent; the recovery sweep sends them",
                d.saga_id,
                d.index,
            )

    def succeeded(self, token: str, result: Any, encoded: EncodedJSON) -> Any:
        d = self.d
        transition = decide(d, AttemptSucceeded()).transition
        pending = {"k": token, "ok": str(encoded)}
        if isinstance(transition, Join):
            join = transition
            joined = self.guard(
                lambda: self.store.join_stage(
                    d.saga_id, d.index, token, encoded, ends=join.ends, final=join.final
                ),
                p=pending,
            )
            completion = joined.outcome
            recorded = SuccessRecorded(Outcome(joined.outcome.value), joined.results)
            self.joined = joined
        else:
            assert isinstance(transition, Complete)
            last = transition.last
            completion = self.guard(
                lambda: self.store.complete_step(d.saga_id, d.index, token, encoded, last=last),
                p=pending,
            )
            recorded = SuccessRecorded(Outcome(completion.value))
        move = decide(d, recorded)
        if completion.value != "lost":
            signals.step_succeeded.send(sender=self.task.name, event=self.timed())
        return self.carry_out(move, result)

    def record_pending(self, pending: Mapping[str, Any]) -> Any:
        """Write what an earlier delivery could not (the store was down then)."""
        token = pending["k"]
        if "ok" in pending:
            encoded = EncodedJSON(pending["ok"])
            return self.succeeded(token, json_loads(encoded), encoded)
        if "release" in pending:
            delay = pending.get("delay")
            due = _due_at(delay)
            self.guard(
                lambda: self.store.release_step(
                    self.d.saga_id, self.d.index, token, pending["release"], due
                ),
                p=dict(pending),
            )
            # recorded: now the retry its policy asked for, as a message of its own
            raise republish(self.task, delay or 0.0, r=0, p=None)
        fail = Fail(StepStatus(pending["step_status"]), SagaStatus(pending["saga_status"]))
        self.record_failure(token, dict(pending["fail"]), fail, None, pending["reason"])
        raise Ignore()


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
    if not header or "id" not in header:
        return original(*args, **kwargs)
    return _StepShell(task, definition, _delivery(header), args, kwargs).run(original)
