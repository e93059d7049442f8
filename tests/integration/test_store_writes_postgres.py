"""On PostgreSQL the last step's record and the saga's completion are one statement,
as are a step's failure, the saga's move and the read of its plan."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.sql.expression import Executable

from celery_saga.plan import saga_row
from celery_saga.status import SagaStatus
from celery_saga.store import SagaStore
from celery_saga.store._statements import COMPLETE_LAST_STEP_PG, FAIL_STEP_PG
from celery_saga.store.schema import sagas
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


def _scans_of(plan: dict[str, Any], table: str) -> list[tuple[str, str | None]]:
    """(node type, index name) of every node of a plan that reads ``table``."""
    found = []
    if plan.get("Relation Name") == table and plan["Node Type"] != "ModifyTable":
        found.append((plan["Node Type"], plan.get("Index Name")))
    for child in plan.get("Plans", []):
        found.extend(_scans_of(child, table))
    return found


_FAILED = {"p_step_status": "FAILED", "p_error": "{}", "p_attempt_errors": "[]"}


@pytest.mark.parametrize(
    ("statement", "params"),
    [
        (COMPLETE_LAST_STEP_PG, {"p_result": "1"}),
        (FAIL_STEP_PG, {**_FAILED, "p_status": "COMPENSATING", "p_finished": None}),
    ],
    ids=["complete", "fail"],
)
def test_a_saga_s_end_reads_its_row_by_key_not_the_running_sagas(
    postgres_url: str, statement: Executable, params: dict[str, Any]
) -> None:
    """The one-statement completion and failure find the saga's row by its primary key
    among thousands of running sagas, before the table has statistics (the completion
    once joined the running sagas to the step it recorded)."""
    store = SagaStore(postgres_url)
    store.ensure_schema()
    now = datetime.now(UTC)
    plan = {"name": "scan", "steps": [{"index": 0, "stage": 0, "task": "shop.act"}]}
    rows = [dict(saga_row(f"scan-{i}", plan, now)) for i in range(5000)]
    try:
        with store.engine.begin() as connection:
            connection.execute(insert(sagas), rows)
        compiled = statement.compile(dialect=store.engine.dialect)  # type: ignore[attr-defined]
        given = {"p_saga": "scan-7", "p_index": 0, "p_token": "t", "p_now": now, **params}
        with store.engine.connect() as connection:
            explained = connection.exec_driver_sql(
                f"EXPLAIN (FORMAT JSON) {compiled}", compiled.construct_params(given)
            ).scalar_one()
        scans = _scans_of(explained[0]["Plan"], sagas.name)
        assert scans, explained
        assert set(scans) == {("Index Scan", "celery_sagas_pkey")}, scans
    finally:
        with store.engine.begin() as connection:
            connection.execute(sagas.delete().where(sagas.c.name == "scan"))
        store.dispose()
