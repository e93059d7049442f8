"""The saga tables, as SQLAlchemy Core: the current shape the migrations must produce.

``tests/unit/test_schema.py`` fails when these definitions and the migrations in
:mod:`celery_saga.store.migrations` drift apart.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeEngine

__all__ = ["SCHEMA_VERSION", "metadata", "saga_schema", "saga_steps", "sagas"]

#: The version :func:`celery_saga.store.migrations.upgrade` brings a database to.
SCHEMA_VERSION = 5

ID_LENGTH = 255
NAME_LENGTH = 255
STATUS_LENGTH = 24
VERSION_LENGTH = 64


def json_type() -> TypeEngine[Any]:
    """JSON, stored as JSONB on PostgreSQL."""
    return JSON().with_variant(postgresql.JSONB(), "postgresql")


def timestamp_type() -> TypeEngine[Any]:
    """A naive UTC timestamp with microseconds on every backend (MySQL needs ``fsp=6``)."""
    return DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


metadata = MetaData()

sagas = Table(
    "celery_sagas",
    metadata,
    Column(
        "id", String(ID_LENGTH), primary_key=True, comment="saga id (the saga_id given, or a uuid)"
    ),
    Column(
        "name", String(NAME_LENGTH), nullable=False, comment="saga name given to saga(..., name=)"
    ),
    Column("status", String(STATUS_LENGTH), nullable=False, comment="SagaStatus"),
    Column("plan", json_type(), nullable=False, comment="the full plan: stages of steps"),
    Column(
        "plan_hash", String(64), nullable=False, comment="sha256 of the plan, for idempotent starts"
    ),
    Column("step_count", Integer, nullable=False, comment="number of steps in the plan"),
    Column("error", json_type(), nullable=True, comment="error of the step that failed"),
    Column("failed_step", Integer, nullable=True, comment="index of the step that failed"),
    Column(
        "created_at", timestamp_type(), nullable=False, comment="when the saga was stored (UTC)"
    ),
    Column("updated_at", timestamp_type(), nullable=False, comment="last status change (UTC)"),
    Column("finished_at", timestamp_type(), nullable=True, comment="when it became terminal (UTC)"),
    Column(
        "recovery_error",
        json_type(),
        nullable=True,
        comment="the recovery sweep's last error with this saga",
    ),
    Column("version", String(VERSION_LENGTH), nullable=True, comment="saga(..., version=)"),
    Column(
        "parked",
        json_type(),
        nullable=True,
        comment="why the saga waits for a worker that has one of its tasks",
    ),
    Column(
        "parent_id",
        String(ID_LENGTH),
        nullable=True,
        comment="the saga this one is a stage of (a child saga)",
    ),
    Column("parent_step", Integer, nullable=True, comment="the parent's step this saga is"),
    Index("ix_celery_sagas_status_created", "status", "created_at"),
    Index("ix_celery_sagas_created", "created_at"),
    Index("ix_celery_sagas_name_created", "name", "created_at"),
    Index("ix_celery_sagas_finished", "finished_at"),
    Index("ix_celery_sagas_parent", "parent_id"),
    comment="one row per saga",
)

saga_steps = Table(
    "celery_saga_steps",
    metadata,
    Column(
        "saga_id",
        String(ID_LENGTH),
        ForeignKey("celery_sagas.id", ondelete="CASCADE", name="fk_celery_saga_steps_saga"),
        primary_key=True,
    ),
    Column("idx", Integer, primary_key=True, autoincrement=False, comment="position in the plan"),
    Column("stage", Integer, nullable=False, comment="stage (steps of a parallel group share one)"),
    Column("task", String(NAME_LENGTH), nullable=False, comment="Celery task name of the step"),
    Column("compensate", String(NAME_LENGTH), nullable=True, comment="compensation task name"),
    Column("status", String(STATUS_LENGTH), nullable=False, comment="StepStatus"),
    Column("attempts", Integer, nullable=False, comment="forward attempts started"),
    Column("args", json_type(), nullable=True, comment="positional arguments the step ran with"),
    Column("kwargs", json_type(), nullable=True, comment="keyword arguments the step ran with"),
    Column("result", json_type(), nullable=True, comment="the step's result"),
    Column("error", json_type(), nullable=True, comment="the step's last error"),
    Column("claim", String(32), nullable=True, comment="fencing token of the current owner"),
    Column("lease_expires_at", timestamp_type(), nullable=True, comment="owner's lease end (UTC)"),
    Column("started_at", timestamp_type(), nullable=True, comment="first attempt started (UTC)"),
    Column("finished_at", timestamp_type(), nullable=True, comment="succeeded or failed (UTC)"),
    Column("compensation_attempts", Integer, nullable=False, comment="compensation attempts"),
    Column("compensation_error", json_type(), nullable=True, comment="last compensation error"),
    Column("compensation_started_at", timestamp_type(), nullable=True, comment="(UTC)"),
    Column("compensation_finished_at", timestamp_type(), nullable=True, comment="(UTC)"),
    Column(
        "attempt_errors",
        json_type(),
        nullable=True,
        comment="every failed attempt, step and compensation, oldest first",
    ),
    comment="one row per step of a saga",
)

saga_schema = Table(
    "celery_saga_schema",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    comment="the schema version of the saga tables (one row)",
)
