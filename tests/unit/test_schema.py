"""The migrations produce exactly the tables the code uses, and re-running them is a no-op."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from celery_saga.store import SCHEMA_VERSION, current_version, make_engine, metadata, upgrade


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
