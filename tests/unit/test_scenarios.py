"""The saga behaviour suite on embedded parts: memory:// broker, in-thread worker, SQLite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scenarios import SagaScenarios
from tests.support.envs import SagaEnv, sqlite_thread_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEnv]:
    with sqlite_thread_env(tmp_path_factory.mktemp("sqlite"), "thread-sqlite") as env:
        yield env


class TestInThreadSQLite(SagaScenarios):
    """memory:// broker, in-thread worker, SQLite store."""
