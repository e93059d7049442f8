"""Read-only views of the saga and step rows, as :class:`~celery_saga.SagaResult` returns them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .status import SagaStatus, StepStatus

__all__ = ["SagaRecord", "StepRecord"]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


@dataclass(frozen=True)
class StepRecord:
    """One step of a saga as stored: what ran, how it went, and how it was undone.

    Timestamps are timezone-aware UTC. ``error`` and ``compensation_error`` are
    ``{"type", "message", "traceback"}`` mappings: the last ones. ``attempt_errors``
    holds every failed attempt, forward and compensation, oldest first (the newest 50):
    ``{"phase": "step" | "compensation", "attempt", "type", "message", "at"}`` and
    ``"retryable"`` where a retry policy decided. ``lease_expires_at`` is when the
    owner of a running step or compensation loses it unless it finishes first (for a
    step given back to retry: when the retry is due). What a step has not done yet is
    empty (zero or None): a step that has not started is only its place in the plan and
    ``PENDING``.

    .. versionadded:: 0.1
    """

    saga_id: str
    index: int
    stage: int
    name: str
    compensate: str | None
    status: StepStatus
    attempts: int = 0
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    compensation_attempts: int = 0
    compensation_error: dict[str, Any] | None = None
    compensation_started_at: datetime | None = None
    compensation_finished_at: datetime | None = None
    lease_expires_at: datetime | None = None
    attempt_errors: tuple[dict[str, Any], ...] = ()

    @property
    def duration(self) -> float | None:
        """Seconds from the first attempt's start to success or failure."""
        return _seconds(self.started_at, self.finished_at)

    @property
    def compensation_duration(self) -> float | None:
        """Seconds the compensation took, from its first attempt."""
        return _seconds(self.compensation_started_at, self.compensation_finished_at)


@dataclass(frozen=True)
class SagaRecord:
    """One saga as stored.

    ``recovery_error`` is the recovery sweep's last error with this saga
    (``{"type", "message", "at"}``): it could not carry out what the saga needed.
    ``version`` is what ``saga(..., version=)`` gave. ``parked`` says why the saga waits
    for a worker that has one of its tasks (``{"task", "version", "worker", "message",
    "at"}``; None when it does not). A child saga (a ``saga(...)`` given as a stage of
    another) has ``parent_id`` and ``parent_step``: the parent saga and its step.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``recovery_error``, ``version``, ``parked``, ``parent_id``,
       ``parent_step``.
    """

    id: str
    name: str
    status: SagaStatus
    plan: dict[str, Any]
    plan_hash: str
    step_count: int
    error: dict[str, Any] | None
    failed_step: int | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    recovery_error: dict[str, Any] | None = None
    version: str | None = None
    parked: dict[str, Any] | None = None
    parent_id: str | None = None
    parent_step: int | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from the saga being stored to its terminal state."""
        return _seconds(self.created_at, self.finished_at)
