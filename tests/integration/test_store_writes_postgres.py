"""On PostgreSQL the last step's record and the saga's completion are one statement."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.envs import SagaEnv, thread_env
from tests.unit.test_store_writes import count_writes

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def env(postgres_url: str) -> Iterator[SagaEnv]:
    with thread_env("writes-postgres", postgres_url, postgres_url) as env:
        yield env


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_writes_per_step_postgres(env: SagaEnv, steps: int) -> None:
    """Start: 1 insert; each step: claim + record, the last record completing the saga."""
    writes = count_writes(env, steps)
    assert writes[0] == "INSERT celery_sagas"
    assert writes.count("INSERT celery_saga_steps") == steps
    assert writes.count("UPDATE celery_saga_steps") == steps - 1
    assert (
        sum(w.startswith("WITH completed_step") for w in writes) == 1
    )  # record last step + complete saga
    assert len(writes) == 2 * steps + 1
