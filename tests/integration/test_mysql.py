"""The saga behaviour suite with a MariaDB/MySQL store (memory:// broker, in-thread worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scenarios import SagaScenarios
from tests.support.envs import SagaEnv, thread_env

pytestmark = pytest.mark.mysql


@pytest.fixture(scope="module")
def env(mysql_url: str) -> Iterator[SagaEnv]:
    with thread_env("thread-mysql", mysql_url, mysql_url) as env:
        yield env


class TestInThreadMariaDB(SagaScenarios):
    """memory:// broker, in-thread worker, MariaDB store."""
