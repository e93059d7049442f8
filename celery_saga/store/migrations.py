"""Versioned schema migrations of the saga tables.

Each migration is a function of Alembic :class:`~alembic.operations.Operations`, frozen
once released: a new schema version appends a function, it never edits an old one.
:func:`upgrade` runs the missing ones under a lock, so several workers starting at once
are safe; ``celery saga db upgrade`` runs the same code for deployments that apply DDL
separately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKeyConstraint,
    Integer,
    String,
    select,
    text,
)

from .schema import SCHEMA_VERSION, json_type, saga_schema, timestamp_type

if TYPE_CHECKING:
    from alembic.operations import Operations

__all__ = ["MIGRATIONS", "current_version", "upgrade"]


def _v1_initial(op: Operations) -> None:
    op.create_table(
        "celery_sagas",
        Column(
            "id", String(255), primary_key=True, comment="saga id (the saga_id given, or a uuid)"
        ),
        Column("name", String(255), nullable=False, comment="saga name given to saga(..., name=)"),
        Column("status", String(24), nullable=False, comment="SagaStatus"),
        Column("plan", json_type(), nullable=False, comment="the full plan: stages of steps"),
        Column(
            "plan_hash",
            String(64),
            nullable=False,
            comment="sha256 of the plan, for idempotent starts",
        ),
        Column("step_count", Integer, nullable=False, comment="number of steps in the plan"),
        Column("error", json_type(), nullable=True, comment="error of the step that failed"),
        Column("failed_step", Integer, nullable=True, comment="index of the step that failed"),
        Column(
            "created_at", timestamp_type(), nullable=False, comment="when the saga was stored (UTC)"
        ),
        Column("updated_at", timestamp_type(), nullable=False, comment="last status change (UTC)"),
        Column(
            "finished_at", timestamp_type(), nullable=True, comment="when it became terminal (UTC)"
        ),
        comment="one row per saga",
    )
    op.create_index("ix_celery_sagas_status_created", "celery_sagas", ["status", "created_at"])
    op.create_index("ix_celery_sagas_created", "celery_sagas", ["created_at"])
    op.create_index("ix_celery_sagas_name_created", "celery_sagas", ["name", "created_at"])
    op.create_table(
        "celery_saga_steps",
        Column("saga_id", String(255), primary_key=True),
        Column(
            "idx", Integer, primary_key=True, autoincrement=False, comment="position in the plan"
        ),
        Column(
            "stage", Integer, nullable=False, comment="stage (steps of a parallel group share one)"
        ),
        Column("task", String(255), nullable=False, comment="Celery task name of the step"),
        Column("compensate", String(255), nullable=True, comment="compensation task name"),
        Column("status", String(24), nullable=False, comment="StepStatus"),
        Column("attempts", Integer, nullable=False, comment="forward attempts started"),
        Column(
            "args", json_type(), nullable=True, comment="positional arguments the step ran with"
        ),
        Column("kwargs", json_type(), nullable=True, comment="keyword arguments the step ran with"),
        Column("result", json_type(), nullable=True, comment="the step's result"),
        Column("error", json_type(), nullable=True, comment="the step's last error"),
        Column("claim", String(32), nullable=True, comment="fencing token of the current owner"),
        Column(
            "lease_expires_at", timestamp_type(), nullable=True, comment="owner's lease end (UTC)"
        ),
        Column(
            "started_at", timestamp_type(), nullable=True, comment="first attempt started (UTC)"
        ),
        Column("finished_at", timestamp_type(), nullable=True, comment="succeeded or failed (UTC)"),
        Column("compensation_attempts", Integer, nullable=False, comment="compensation attempts"),
        Column("compensation_error", json_type(), nullable=True, comment="last compensation error"),
        Column("compensation_started_at", timestamp_type(), nullable=True, comment="(UTC)"),
        Column("compensation_finished_at", timestamp_type(), nullable=True, comment="(UTC)"),
        ForeignKeyConstraint(
            ["saga_id"], ["celery_sagas.id"], ondelete="CASCADE", name="fk_celery_saga_steps_saga"
        ),
        comment="one row per step of a saga",
    )


def _v2_attempt_errors(op: Operations) -> None:
    op.add_column(
        "celery_saga_steps",
        Column(
            "attempt_errors",
            json_type(),
            nullable=True,
            comment="every failed attempt, step and compensation, oldest first",
        ),
    )
    op.create_index("ix_celery_sagas_finished", "celery_sagas", ["finished_at"])


def _v3_recovery_error(op: Operations) -> None:
    op.add_column(
        "celery_sagas",
        Column(
            "recovery_error",
            json_type(),
            nullable=True,
            comment="the recovery sweep's last error with this saga",
        ),
    )


def _v4_versions_and_parking(op: Operations) -> None:
    op.add_column(
        "celery_sagas",
        Column("version", String(64), nullable=True, comment="saga(..., version=)"),
    )
    op.add_column(
        "celery_sagas",
        Column(
            "parked",
            json_type(),
            nullable=True,
            comment="why the saga waits for a worker that has one of its tasks",
        ),
    )


def _v5_children(op: Operations) -> None:
    op.add_column(
        "celery_sagas",
        Column(
            "parent_id",
            String(255),
            nullable=True,
            comment="the saga this one is a stage of (a child saga)",
        ),
    )
    op.add_column(
        "celery_sagas",
        Column("parent_step", Integer, nullable=True, comment="the parent's step this saga is"),
    )
    op.create_index("ix_celery_sagas_parent", "celery_sagas", ["parent_id"])


#: Migration ``n`` (1-based) brings the schema from version ``n - 1`` to ``n``.
MIGRATIONS: tuple[Callable[[Operations], None], ...] = (
    _v1_initial,
    _v2_attempt_errors,
    _v3_recovery_error,
    _v4_versions_and_parking,
    _v5_children,
)

assert len(MIGRATIONS) == SCHEMA_VERSION, "every schema version needs its migration"

_ADVISORY_LOCK_KEY = 0x5A6A_C5A6  # PostgreSQL advisory lock of the saga migrations


def current_version(connection: Connection) -> int:
    """The schema version of the database (0 when the saga tables are not there)."""
    if not connection.dialect.has_table(connection, saga_schema.name):
        return 0
    version = connection.execute(select(saga_schema.c.version)).scalar()
    return int(version or 0)


def _lock(connection: Connection) -> None:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
    elif dialect in ("mysql", "mariadb"):
        connection.execute(text("SELECT GET_LOCK('celery_saga_migrate', 60)"))
    # SQLite: the store begins every write transaction with BEGIN IMMEDIATE.


def _unlock(connection: Connection) -> None:
    if connection.dialect.name in ("mysql", "mariadb"):
        connection.execute(text("SELECT RELEASE_LOCK('celery_saga_migrate')"))


def upgrade(engine: Engine, target: int = SCHEMA_VERSION) -> tuple[int, int]:
    """Apply the missing migrations up to ``target``; return ``(before, after)`` versions."""
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"schema version {target} does not exist (latest is {SCHEMA_VERSION})")
    with engine.connect() as probe:
        before = current_version(probe)
    if before >= target:
        return before, before
    with engine.begin() as connection:
        _lock(connection)
        try:
            version = current_version(connection)
            before = version
            if version == 0:
                saga_schema.create(connection, checkfirst=True)
            # Alembic only when a schema change runs: importing it costs ~150 ms, which
            # every `import celery_saga` (and every pytest run, through the plugin) paid.
            from alembic.migration import MigrationContext
            from alembic.operations import Operations

            operations = Operations(MigrationContext.configure(connection))
            for number in range(version + 1, target + 1):
                MIGRATIONS[number - 1](operations)
            if version == 0:
                connection.execute(saga_schema.insert().values(id=1, version=target))
            elif target > version:
                connection.execute(saga_schema.update().values(version=target))
        finally:
            _unlock(connection)
    return before, max(before, target)
