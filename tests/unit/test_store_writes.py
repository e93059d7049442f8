"""The happy path writes at most two statements per step (claim, record)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from celery_saga._runtime import get_store
from tests.support.envs import SagaEnv, thread_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEnv]:
    folder: Path = tmp_path_factory.mktemp("writes")
    with thread_env(
        "writes", f"sqlite:///{folder / 'store.sqlite3'}", f"sqlite:///{folder / 'ledger.sqlite3'}"
    ) as env:
        yield env


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_writes_per_step(env: SagaEnv, steps: int) -> None:
    """Start: 2 inserts; each step: claim + record; the last record also completes the saga."""
    store = get_store(env.app)
    store.ensure_schema()
    writes: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE"):
            writes.append(statement.split("SET")[0].split("(")[0].strip())

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        chain = [env.sig("note", tag=f"s{i}") for i in range(steps)]
        env.saga(*chain).apply_async().get(timeout=20)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    start = [w for w in writes if w.startswith("INSERT")]
    step_writes = [w for w in writes if w == "UPDATE celery_saga_steps"]
    saga_writes = [w for w in writes if w == "UPDATE celery_sagas"]
    assert start == ["INSERT INTO celery_sagas", "INSERT INTO celery_saga_steps"]
    assert len(step_writes) == 2 * steps
    assert len(saga_writes) == 1
    assert len(writes) == 2 * steps + 3
