"""The migrations match the table definitions on PostgreSQL and MariaDB too."""

from __future__ import annotations

import pytest

from celery_saga.store import make_engine
from tests.support.services import MYSQL_ADMIN_URL, POSTGRES_ADMIN_URL, require, scratch_database
from tests.unit.test_schema import assert_no_drift, assert_upgrade_keeps_data


@pytest.mark.parametrize(
    ("service", "admin_url", "dialect"),
    [
        pytest.param("postgres", POSTGRES_ADMIN_URL, "postgresql", marks=pytest.mark.postgres),
        pytest.param("mysql", MYSQL_ADMIN_URL, "mysql", marks=pytest.mark.mysql),
    ],
)
def test_schema_matches_migrations(service: str, admin_url: str, dialect: str) -> None:
    """On each server database the migrated schema equals the definitions; v1 data upgrades."""
    require(service)
    with scratch_database(admin_url, dialect) as url:
        engine = make_engine(url)
        assert_no_drift(engine)
        engine.dispose()
    with scratch_database(admin_url, dialect) as url:
        engine = make_engine(url)
        assert_upgrade_keeps_data(engine)
        engine.dispose()
