"""`celery saga list` and `purge` on 100,000 finished sagas in PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner
from sqlalchemy import event, text

from celery_saga._runtime import get_store
from celery_saga.cli import saga
from tests.support.app import make_app
from tests.support.services import POSTGRES_ADMIN_URL, require, scratch_database

pytestmark = pytest.mark.postgres

FINISHED = 100_000  # 60% COMPLETED, 30% COMPENSATED, 10% FAILED, all ended 10 days ago
UNFINISHED = 1_000  # RUNNING and COMPENSATING, started 10 days ago
RECENT = 500  # COMPLETED an hour ago


def _load(app: Celery) -> None:
    """Fill the tables server-side: sagas of 2 steps each, in every status."""
    store = get_store(app)
    store.upgrade_schema()
    day = "now() at time zone 'utc' - interval '10 days'"
    with store.engine.begin() as connection:
        connection.execute(text(f"""
            INSERT INTO celery_sagas (id, name, status, plan, plan_hash, step_count, error,
                                      created_at, updated_at, finished_at)
            SELECT 'done-' || n, 'order',
                   CASE WHEN n % 10 < 6 THEN 'COMPLETED' WHEN n % 10 < 9 THEN 'COMPENSATED'
                        ELSE 'FAILED' END,
                   '{{}}', 'h', 2, NULL, {day}, {day}, {day}
            FROM generate_series(1, {FINISHED}) AS n;
            INSERT INTO celery_sagas (id, name, status, plan, plan_hash, step_count,
                                      created_at, updated_at)
            SELECT 'open-' || n, 'order', CASE WHEN n % 2 = 0 THEN 'RUNNING' ELSE 'COMPENSATING'
                   END, '{{}}', 'h', 2, {day}, {day}
            FROM generate_series(1, {UNFINISHED}) AS n;
            INSERT INTO celery_sagas (id, name, status, plan, plan_hash, step_count,
                                      created_at, updated_at, finished_at)
            SELECT 'new-' || n, 'order', 'COMPLETED', '{{}}', 'h', 2,
                   now() at time zone 'utc' - interval '1 hour',
                   now() at time zone 'utc' - interval '1 hour',
                   now() at time zone 'utc' - interval '1 hour'
            FROM generate_series(1, {RECENT}) AS n;
            INSERT INTO celery_saga_steps (saga_id, idx, stage, task, status, attempts,
                                           compensation_attempts)
            SELECT id, i, i, 'shop.act', 'SUCCEEDED', 1, 0
            FROM celery_sagas, generate_series(0, 1) AS i;
            ANALYZE celery_sagas;
            ANALYZE celery_saga_steps;
        """))  # fmt: skip


@pytest.fixture(scope="module")
def app() -> Iterator[Celery]:
    require("postgres")
    with scratch_database(POSTGRES_ADMIN_URL, "postgresql") as url:
        app = make_app("memory://", url, url)
        _load(app)
        yield app
        get_store(app).dispose()


def cli(app: Celery, *args: str) -> Any:
    context = CLIContext(app=app, no_color=True, workdir=None)
    result = CliRunner().invoke(saga, [*args, "--json"], obj=context, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def count(app: Celery, where: str) -> int:
    with get_store(app).engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {where}")).scalar_one())


def test_list_failed_uses_the_status_index(app: Celery) -> None:
    """`list --status failed` on 100,000 sagas reads the (status, created_at) index."""
    engine = get_store(app).engine
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "FROM celery_sagas" in statement and "ORDER BY" in statement:
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        started = time.perf_counter()
        page = cli(app, "list", "--status", "failed")
        took = time.perf_counter() - started
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(page) == 50
    assert {row["status"] for row in page} == {"FAILED"}
    ((statement, params),) = seen
    with engine.connect() as connection:
        plan = connection.exec_driver_sql(f"EXPLAIN {statement}", params).scalars().all()
    assert any("ix_celery_sagas_status_created" in line for line in plan), plan
    print(f"list --status failed on {FINISHED + UNFINISHED + RECENT} sagas: {took * 1000:.0f} ms")


def test_purge_keeps_unfinished_failed_and_recent_sagas(app: Celery) -> None:
    """`purge --older-than 7d` deletes the old COMPLETED/COMPENSATED sagas and their steps only."""
    assert cli(app, "purge", "--older-than", "7d", "--dry-run")["matched"] == 90_000
    started = time.perf_counter()
    assert cli(app, "purge", "--older-than", "7d")["deleted"] == 90_000
    took = time.perf_counter() - started
    assert count(app, "celery_sagas") == 10_000 + UNFINISHED + RECENT
    assert count(app, "celery_saga_steps") == 2 * (10_000 + UNFINISHED + RECENT)
    assert count(app, "celery_sagas WHERE status IN ('RUNNING', 'COMPENSATING')") == UNFINISHED
    assert cli(app, "purge", "--older-than", "7d", "--status", "failed")["deleted"] == 10_000
    assert count(app, "celery_sagas") == UNFINISHED + RECENT
    print(f"purge of 90,000 finished sagas (180,000 steps): {took:.1f} s")
