"""Shared fixtures: scratch databases on the real servers, and a log folder for workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import (
    MYSQL_ADMIN_URL,
    POSTGRES_ADMIN_URL,
    require,
    scratch_database,
)

# A user's project of its own, run in a subprocess by tests/unit/test_pytest_plugin.py.
collect_ignore = ["sample_project"]

# The shared scenarios are a helper module: have pytest explain their failed asserts too.
pytest.register_assert_rewrite("tests.scenarios")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    require("postgres")
    with scratch_database(POSTGRES_ADMIN_URL, "postgresql") as url:
        yield url


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    """A fresh MariaDB/MySQL database for this test session."""
    require("mysql")
    with scratch_database(MYSQL_ADMIN_URL, "mysql") as url:
        yield url


@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where worker processes write their logs (shown on failure)."""
    return tmp_path_factory.mktemp("worker-logs")
