"""The happy path writes at most two statements per step (claim, record)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from celery_saga import SagaCompensated
from celery_saga._runtime import get_store
from tests.support.envs import SagaEnv, thread_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEnv]:
    folder: Path = tmp_path_factory.mktemp("writes")
    with thread_env(
        "writes", f"sqlite:///{folder / 'store.sqlite3'}", f"sqlite:///{folder / 'ledger.sqlite3'}"
    ) as env:
        yield env


def count_writes(env: SagaEnv, steps: int, *, failing: bool = False) -> list[str]:
    """Run a saga of ``steps`` steps; return the write statements it made.

    ``failing``: every step has a compensation and the last one fails.
    """
    store = get_store(env.app)
    store.ensure_schema()
    writes: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        words = statement.split()
        if words[0].upper() in ("INSERT", "UPDATE", "DELETE", "WITH"):
            writes.append(" ".join(w for w in words[:4] if w.upper() != "INTO")[:40])

    for engine in store.engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        if failing:
            chain = [env.sig("act", tag=f"s{i}", fail=i == steps - 1) for i in range(steps)]
            result = env.saga(*chain).apply_async()
            with contextlib.suppress(SagaCompensated):
                result.get(timeout=20)
        else:
            chain = [env.sig("note", tag=f"s{i}") for i in range(steps)]
            env.saga(*chain).apply_async().get(timeout=20)
    finally:
        for engine in store.engines:
            event.remove(engine, "before_cursor_execute", count)
    return [" ".join(w.split()[:2]) if not w.startswith("WITH") else w for w in writes]


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_writes_per_step(env: SagaEnv, steps: int) -> None:
    """Start: 1 insert; each step: claim + record; the saga's completion: 1 more."""
    writes = count_writes(env, steps)
    assert writes[0] == "INSERT celery_sagas"
    assert writes.count("INSERT celery_saga_steps") == steps  # the claims
    assert writes.count("UPDATE celery_saga_steps") == steps  # the results
    assert writes.count("UPDATE celery_sagas") == 1  # completed
    assert len(writes) == 2 * steps + 2


def test_writes_on_the_failure_path(env: SagaEnv) -> None:
    """Step 3 of 3 failing: claims and records as usual, the failure with the saga's move,
    a claim and a record per compensation, and the saga's end: 13 writes."""
    writes = count_writes(env, 3, failing=True)
    assert writes[0] == "INSERT celery_sagas"
    assert writes.count("INSERT celery_saga_steps") == 3  # the claims
    # 2 results, 1 failure, 2 compensations claimed and 2 recorded
    assert writes.count("UPDATE celery_saga_steps") == 7
    assert writes.count("UPDATE celery_sagas") == 2  # compensating, then compensated
    assert len(writes) == 13
