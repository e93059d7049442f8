"""Rows of the saga tables as the public records."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row

from ..records import SagaRecord, StepRecord
from ..status import SagaStatus, StepStatus

__all__ = ["aware", "pending_step", "saga_record", "step_record", "utcnow"]


def utcnow() -> datetime:
    """Now, as the naive UTC timestamp the tables store."""
    return datetime.now(UTC).replace(tzinfo=None)


def aware(value: datetime | None) -> datetime | None:
    """A stored (naive UTC) timestamp as an aware one."""
    return None if value is None else value.replace(tzinfo=UTC)


def step_record(row: Row[Any]) -> StepRecord:
    m = row._mapping
    return StepRecord(
        saga_id=m["saga_id"],
        index=m["idx"],
        stage=m["stage"],
        name=m["task"],
        compensate=m["compensate"],
        status=StepStatus(m["status"]),
        attempts=m["attempts"],
        args=m["args"],
        kwargs=m["kwargs"],
        result=m["result"],
        error=m["error"],
        started_at=aware(m["started_at"]),
        finished_at=aware(m["finished_at"]),
        compensation_attempts=m["compensation_attempts"],
        compensation_error=m["compensation_error"],
        compensation_started_at=aware(m["compensation_started_at"]),
        compensation_finished_at=aware(m["compensation_finished_at"]),
        lease_expires_at=aware(m["lease_expires_at"]),
        attempt_errors=tuple(m["attempt_errors"] or ()),
    )


def pending_step(saga_id: str, step: Mapping[str, Any]) -> StepRecord:
    """The record of a planned step that has not started (it has no row yet)."""
    return StepRecord(
        saga_id=saga_id,
        index=step["index"],
        stage=step["stage"],
        name=step["task"],
        compensate=step["compensate"],
        status=StepStatus.PENDING,
    )


def saga_record(row: Row[Any]) -> SagaRecord:
    m = row._mapping
    created_at = aware(m["created_at"])
    updated_at = aware(m["updated_at"])
    assert created_at is not None
    assert updated_at is not None
    return SagaRecord(
        id=m["id"],
        name=m["name"],
        status=SagaStatus(m["status"]),
        plan=m["plan"],
        plan_hash=m["plan_hash"],
        step_count=m["step_count"],
        error=m["error"],
        failed_step=m["failed_step"],
        created_at=created_at,
        updated_at=updated_at,
        finished_at=aware(m["finished_at"]),
        recovery_error=m.get("recovery_error"),
        version=m.get("version"),
        parked=m.get("parked"),
        parent_id=m.get("parent_id"),
        parent_step=m.get("parent_step"),
    )
