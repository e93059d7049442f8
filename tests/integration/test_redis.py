"""The saga behaviour suite on a Redis broker with a prefork worker process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_saga import SagaCompensated
from tests.scenarios import SagaScenarios, new_id
from tests.support.envs import SagaEnv, process_env
from tests.support.services import REDIS_URL, require

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_postgres_env(postgres_url: str, worker_logs: Path) -> Iterator[SagaEnv]:
    require("redis")
    with process_env("redis-postgres", REDIS_URL, postgres_url, postgres_url, worker_logs) as env:
        yield env


@pytest.fixture(scope="module")
def redis_sqlite_env(
    tmp_path_factory: pytest.TempPathFactory, worker_logs: Path
) -> Iterator[SagaEnv]:
    require("redis")
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'store.sqlite3'}"
    with process_env("redis-sqlite", REDIS_URL, url, url, worker_logs) as env:
        yield env


@pytest.mark.postgres
class TestRedisWorkerPostgres(SagaScenarios):
    """Redis broker, prefork worker process (2 children), PostgreSQL store."""

    @pytest.fixture
    def env(self, redis_postgres_env: SagaEnv) -> SagaEnv:
        return redis_postgres_env


class TestRedisWorkerSQLite(SagaScenarios):
    """Redis broker, prefork worker process (2 children), SQLite store shared by processes."""

    @pytest.fixture
    def env(self, redis_sqlite_env: SagaEnv) -> SagaEnv:
        return redis_sqlite_env


def test_compensations_show_under_their_own_name_in_the_worker_log(
    redis_sqlite_env: SagaEnv, worker_logs: Path
) -> None:
    """A real worker's log names a compensation by the user's task and its saga step."""
    env = redis_sqlite_env
    result = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b", fail=True)).apply_async(
        saga_id=new_id()
    )
    with pytest.raises(SagaCompensated):
        result.get(timeout=30)
    log = worker_logs / "redis-sqlite.log"
    wanted = f"Task shop.undo[{result.id}:0:compensate] succeeded"
    deadline = time.monotonic() + 10
    while wanted not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {wanted!r} in the worker log"
        time.sleep(0.1)
