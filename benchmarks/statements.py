"""The client CPU of each durable write of a 3-step saga, through the store and at the floor.

Every saga the store knows costs these seven writes on the success path: its insert (the
producer), then per step a claim and a record (the worker; the last record completes the
saga). This script makes ``--count`` sagas of three steps on a fresh database and times
each kind of write with ``time.process_time`` in this process only (the client's CPU,
not PostgreSQL's), the minimum over ``--rounds`` rounds; beside them the floor: the
same compiled statement with the same values sent by psycopg on one held connection and
cursor, with nothing of the library around it. Run it with ``PYTHONPATH`` pointing at
another checkout to compare two versions of the library on the same machine::

    python benchmarks/statements.py                      # --count 2000 --rounds 5
    PYTHONPATH=/tmp/before python benchmarks/statements.py
"""

from __future__ import annotations

import argparse
import functools
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from throughput import fresh_database

import celery_saga
from celery_saga import SagaStatus
from celery_saga.plan import saga_row
from celery_saga.store import ClaimOutcome, Completion, SagaStore
from celery_saga.store._rows import utcnow
from celery_saga.store._statements import COMPLETE_STEP
from celery_saga.store.engine import make_engine

STEPS = 3


def plan(name: str) -> dict[str, Any]:
    """A stored plan of three steps, as a saga of ``bench_app`` stores it."""
    steps = [{"task": "bench_app.noop", "compensate": "bench_app.undo"} for _ in range(STEPS)]
    return {"name": name, "steps": steps}


def insert_one(store: SagaStore, rows: dict[str, dict[str, Any]], saga_id: str) -> None:
    """Store the saga, as ``saga(...).apply_async()`` does before its first message."""
    existing = store.create_saga(rows[saga_id])
    assert existing is None  # (None: stored, the id was free)


def claim_one(
    store: SagaStore, index: int, tokens: dict[str, str], saga_id: str, **names: str
) -> None:
    """Claim step ``index`` of the saga, as its step task does."""
    claimed = store.claim_step(saga_id, index, tokens[saga_id], [], {}, 30.0, stage=index, **names)
    assert claimed.outcome is ClaimOutcome.CLAIMED


def record_one(
    store: SagaStore, index: int, tokens: dict[str, str], saga_id: str, *, last: bool
) -> None:
    """Record step ``index``'s result, as its step task does (the last completes the saga)."""
    done = store.complete_step(saga_id, index, tokens[saga_id], 1, last=last)
    assert done is (Completion.COMPLETED if last else Completion.RECORDED)


def main() -> None:
    """Time each write of ``--count`` sagas, ``--rounds`` times; print the minimum of each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="sagas per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the minimum is shown)")
    options = parser.parse_args()
    print(f"celery_saga from {Path(celery_saga.__file__).parent}", flush=True)
    url = fresh_database("postgres")
    store = SagaStore(url)
    store.ensure_schema()
    stored = plan("bench")
    best: dict[str, float] = {}

    def timed(kind: str, write: Callable[[str], object], ids: list[str]) -> None:
        """``write`` for each saga id; the client CPU per call kept if it is the least yet."""
        started = time.process_time()
        for saga_id in ids:
            write(saga_id)
        spent = (time.process_time() - started) / len(ids) * 1e3
        best[kind] = min(best.get(kind, spent), spent)

    for _ in range(options.rounds):
        ids = [uuid.uuid4().hex for _ in range(options.count)]
        tokens = {saga_id: uuid.uuid4().hex for saga_id in ids}
        rows = {saga_id: saga_row(saga_id, stored, utcnow()) for saga_id in ids}
        timed("insert the saga", functools.partial(insert_one, store, rows), ids)
        for index in range(STEPS):
            last = index == STEPS - 1
            claim = functools.partial(
                claim_one, store, index, tokens, task="bench_app.noop", compensate="bench_app.undo"
            )
            timed(f"claim step {index + 1}", claim, ids)
            record = functools.partial(record_one, store, index, tokens, last=last)
            timed(f"record step {index + 1}" + (" (completes)" if last else ""), record, ids)
    # the floor: a record's statement and values, sent again and again by psycopg alone
    # on one held connection and cursor, in autocommit as the store's writes are (after
    # its first run it matches no row: to the client that is the same work)
    direct = store._direct
    assert direct is not None, "the store has no driver path (psycopg 3 is needed)"
    saga_id = ids[0]
    params = {
        "p_saga": saga_id, "p_index": 0, "p_token": tokens[saga_id],
        "p_result": 1, "p_now": utcnow(),
    }  # fmt: skip
    compiled = direct._compile(COMPLETE_STEP, params)
    assert compiled is not None
    values = direct._values(compiled, params)
    engine = make_engine(url, {"isolation_level": "AUTOCOMMIT"})
    floor = "floor: the record on psycopg alone"
    with engine.connect() as held:
        driver: Any = held.connection.dbapi_connection
        assert isinstance(driver, psycopg.Connection)
        cursor = driver.cursor()
        for _ in ids:  # (warmed up, as the store was by its writes)
            cursor.execute(compiled.sql, values)
        for _ in range(options.rounds):
            timed(floor, lambda _: cursor.execute(compiled.sql, values), ids)
    engine.dispose()
    completed = sum(store.get_status(i) is SagaStatus.COMPLETED for i in ids)
    store.dispose()
    print(f"the last round's sagas completed: {completed} of {len(ids)}")
    print(f"\nclient CPU ms per write, min of {options.rounds} rounds of {options.count}:")
    for kind, spent in best.items():
        print(f"  {kind:<40} {spent:.3f}")
    print(f"  {'a 3-step saga, the seven writes':<40} "
          f"{sum(v for k, v in best.items() if k != floor):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
