"""The saga behaviour suite on embedded parts: memory:// broker, in-thread worker, SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scenarios import SagaScenarios
from tests.support.envs import SagaEnv, thread_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEnv]:
    folder: Path = tmp_path_factory.mktemp("sqlite")
    url = f"sqlite:///{folder / 'store.sqlite3'}"
    with thread_env("thread-sqlite", url, url) as env:
        yield env


class TestInThreadSQLite(SagaScenarios):
    """memory:// broker, in-thread worker, SQLite store."""
