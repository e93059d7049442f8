"""The migrations match the table definitions on PostgreSQL and MariaDB too."""

from __future__ import annotations

import pytest

from celery_saga.store import make_engine
from tests.support.services import MYSQL_ADMIN_URL, POSTGRES_ADMIN_URL, require, scratch_database
from tests.unit.test_schema import assert_no_drift


@pytest.mark.postgres
def test_postgres_schema_matches_migrations() -> None:
    """On PostgreSQL the migrated schema equals the table definitions."""
    require("postgres")
    with scratch_database(POSTGRES_ADMIN_URL, "postgresql") as url:
        engine = make_engine(url)
        assert_no_drift(engine)
        engine.dispose()


@pytest.mark.mysql
def test_mysql_schema_matches_migrations() -> None:
    """On MariaDB the migrated schema equals the table definitions."""
    require("mysql")
    with scratch_database(MYSQL_ADMIN_URL, "mysql") as url:
        engine = make_engine(url)
        assert_no_drift(engine)
        engine.dispose()
