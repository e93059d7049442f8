"""On PostgreSQL the last step's record and the saga's completion are one statement,
as are a step's failure, the saga's move and the read of its plan."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_saga.status import SagaStatus
from tests.support.envs import SagaEnv, thread_env
from tests.unit.test_costs import statements
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


def test_statements_on_the_failure_path_postgres(env: SagaEnv) -> None:
    """Step 3 of 3 failing, 2 compensations, on PostgreSQL: the failure, the saga's move
    and the read of its plan are one statement, as is each compensation's claim and record."""
    steps = [env.sig("act", tag=f"f{i}", fail=i == 2) for i in range(3)]
    status, sent = statements(env, *steps)
    assert status is SagaStatus.COMPENSATED
    assert sent == {
        "INSERT celery_sagas": 1,
        "INSERT celery_saga_steps": 3,  # the claims
        # 2 results, 2 compensations claimed (returning the step) and 2 recorded
        "UPDATE celery_saga_steps": 6,
        "WITH failed_step": 1,  # the failure, the saga's move, its plan
        # the last compensation's read of the whole saga (BEGIN, 2 SELECTs, ROLLBACK)
        "SELECT celery_sagas.id": 1,
        "SELECT celery_saga_steps.saga_id": 1,
        "ROLLBACK": 1,
        "UPDATE celery_sagas": 1,  # compensated
    }


def test_statements_on_the_success_path_postgres(env: SagaEnv) -> None:
    """A 3-step saga that completes, on PostgreSQL: 7 statements, none of them BEGIN."""
    steps = [env.sig("act", tag=f"s{i}") for i in range(3)]
    status, sent = statements(env, *steps)
    assert status is SagaStatus.COMPLETED
    assert sent == {
        "INSERT celery_sagas": 1,
        "INSERT celery_saga_steps": 3,  # the claims
        "UPDATE celery_saga_steps": 2,  # the results
        "WITH completed_step": 1,  # the last result and the saga's completion
    }
