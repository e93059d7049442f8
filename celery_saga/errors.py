"""The exceptions of celery_saga, all rooted at :class:`SagaError`.

::

    SagaError
    ├── SagaValidationError        bad input, refused before anything is stored or sent
    │   └── SagaConfigurationError the app is configured in a way sagas cannot work with
    ├── SagaConflictError          a saga_id reused with a different plan
    ├── SagaStoreError             the saga store could not be reached or written
    ├── SagaNotFound               no saga with that id in the store
    ├── SagaCompensated            outcome: a step failed and the saga was undone
    └── SagaFailed                 outcome: a compensation gave up; needs a person

Every error carries a stable ``code`` (a short string for logs and alerting) and a
``retryable`` flag: whether doing the same thing again later can succeed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

__all__ = [
    "SagaCompensated",
    "SagaConfigurationError",
    "SagaConflictError",
    "SagaError",
    "SagaFailed",
    "SagaNotFound",
    "SagaStateError",
    "SagaStoreError",
    "SagaValidationError",
]


class SagaError(Exception):
    """Base class of every celery_saga error.

    .. versionadded:: 0.1
    """

    code: ClassVar[str] = "saga_error"
    retryable: ClassVar[bool] = False


class SagaValidationError(SagaError, ValueError):
    """The saga, a step or a value is not acceptable; nothing was stored or sent."""

    code = "invalid"


class SagaConfigurationError(SagaValidationError):
    """The Celery app is configured in a way sagas cannot work with (e.g. pickle)."""

    code = "misconfigured"


class SagaConflictError(SagaError):
    """A saga with this id exists already, with a different plan."""

    code = "conflict"

    def __init__(self, saga_id: str, message: str) -> None:
        super().__init__(message)
        self.saga_id = saga_id


class SagaStoreError(SagaError):
    """The saga store could not be reached or did not accept a write."""

    code = "store_unavailable"
    retryable = True


class SagaNotFound(SagaError, LookupError):
    """No saga with this id is in the store."""

    code = "not_found"

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"no saga with id {saga_id!r} in the saga store")
        self.saga_id = saga_id


class SagaStateError(SagaError):
    """The saga's status does not allow this (e.g. resuming a completed saga)."""

    code = "illegal_transition"

    def __init__(self, saga_id: str, status: str, action: str, allowed: str) -> None:
        super().__init__(f"saga {saga_id!r} is {status}: only {allowed} saga can be {action}")
        self.saga_id = saga_id
        self.status = status


def _describe(error: Mapping[str, Any] | None) -> str:
    if not error:
        return "unknown error"
    kind = error.get("type") or "Error"
    message = error.get("message") or ""
    return f"{kind}: {message}" if message else str(kind)


class SagaCompensated(SagaError):
    """A step failed, and every step that had succeeded was compensated.

    Attributes:
        saga_id: the saga.
        step_name: the task name of the step that failed (``None`` if unknown).
        step_index: its position in the plan.
        error: the step's error as stored: ``{"type", "message", "traceback"}``.
    """

    code = "compensated"

    def __init__(
        self,
        saga_id: str,
        step_name: str | None,
        step_index: int | None,
        error: Mapping[str, Any] | None,
    ) -> None:
        self.saga_id = saga_id
        self.step_name = step_name
        self.step_index = step_index
        self.error = dict(error or {})
        if step_name is not None:
            where = f"step {step_index} {step_name!r} failed"
        elif self.error.get("type") == "celery_saga.Cancelled":
            where = "it was cancelled"
        elif self.error.get("type") == "celery_saga.DeadlineExceeded":
            where = "it ran out of time"
        else:
            where = "it failed"
        super().__init__(f"saga {saga_id!r} was compensated: {where}: {_describe(self.error)}")


class SagaFailed(SagaError):
    """A compensation gave up: the saga could not be fully undone and needs a person.

    Attributes:
        saga_id: the saga.
        compensation_errors: one entry per compensation that gave up:
            ``{"step_index", "step_name", "compensate", "error"}``.
        error: the error of the forward step that started the compensation, if any.
    """

    code = "failed"

    def __init__(
        self,
        saga_id: str,
        compensation_errors: Sequence[Mapping[str, Any]],
        error: Mapping[str, Any] | None = None,
    ) -> None:
        self.saga_id = saga_id
        self.compensation_errors = [dict(e) for e in compensation_errors]
        self.error = dict(error or {})
        parts = [
            f"step {e.get('step_index')} {e.get('step_name')!r} "
            f"({e.get('compensate')}): {_describe(e.get('error'))}"
            for e in self.compensation_errors
        ]
        if not parts and self.error:  # it failed without undoing (a wait's on_timeout="fail")
            super().__init__(f"saga {saga_id!r} failed: {_describe(self.error)}")
            return
        detail = "; ".join(parts) if parts else "no compensation error recorded"
        super().__init__(f"saga {saga_id!r} failed: compensation gave up: {detail}")
