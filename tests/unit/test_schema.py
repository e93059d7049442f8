"""The migrations produce exactly the tables the code uses, and re-running them is a no-op."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text

from celery_saga.store import SCHEMA_VERSION, current_version, make_engine, metadata, upgrade


def assert_upgrade_keeps_data(engine: Engine) -> None:
    """Upgrade a version-1 database holding a saga step by step to the latest, keeping it."""
    assert upgrade(engine, target=1) == (0, 1)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO celery_sagas (id, name, status, plan, plan_hash, step_count,"
            " created_at, updated_at) VALUES ('s-1', 'old', 'COMPLETED', '{}', 'h', 1,"
            " '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        ))  # fmt: skip
        connection.execute(text(
            "INSERT INTO celery_saga_steps (saga_id, idx, stage, task, status, attempts,"
            " compensation_attempts) VALUES ('s-1', 0, 0, 't', 'SUCCEEDED', 1, 0)"
        ))  # fmt: skip
    for version in range(2, SCHEMA_VERSION + 1):
        assert upgrade(engine, target=version) == (version - 1, version)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT * FROM celery_saga_steps")).one()._mapping
        assert (row["saga_id"], row["status"], row["attempt_errors"]) == ("s-1", "SUCCEEDED", None)


def assert_no_drift(engine: Engine) -> None:
    """Upgrade an empty database and compare it with the table definitions."""
    assert upgrade(engine) == (0, SCHEMA_VERSION)
    assert upgrade(engine) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with engine.connect() as connection:
        assert current_version(connection) == SCHEMA_VERSION
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    assert differences == []


def test_sqlite_schema_matches_migrations(store_url: str) -> None:
    """On SQLite the migrated schema equals the table definitions."""
    assert_no_drift(make_engine(store_url))


def test_sqlite_upgrade_from_version_1_keeps_sagas(store_url: str) -> None:
    """On SQLite a version-1 database upgrades in place and keeps its sagas."""
    assert_upgrade_keeps_data(make_engine(store_url))
