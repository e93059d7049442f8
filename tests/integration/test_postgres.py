"""The saga behaviour suite with a PostgreSQL store (memory:// broker, in-thread worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scenarios import SagaScenarios
from tests.support.envs import SagaEnv, thread_env

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def env(postgres_url: str) -> Iterator[SagaEnv]:
    with thread_env("thread-postgres", postgres_url, postgres_url) as env:
        yield env


class TestInThreadPostgres(SagaScenarios):
    """memory:// broker, in-thread worker, PostgreSQL store."""
