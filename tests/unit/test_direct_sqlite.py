"""On a SQLite file the store's hot writes go to ``sqlite3`` past SQLAlchemy
(``celery_saga.store._direct``), each in a ``BEGIN IMMEDIATE`` transaction of its own:
the same rows, the same errors, and SQLAlchemy's path for what it converts."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from celery_saga.errors import SagaStoreError
from celery_saga.plan import saga_row
from celery_saga.status import SagaStatus, StepStatus
from celery_saga.store import ClaimOutcome, Completion, SagaStore
from celery_saga.store._direct import _CURSOR, Direct, Written
from celery_saga.store._statements import (
    CLAIM_COMPENSATION_RETURNING,
    COMPLETE_SAGA,
    COMPLETE_STEP,
)
from tests.support.store_rows import (
    Calls,
    claim_step,
    new_saga,
    plan,
    record_the_last_compensation,
    refuse_a_second_claim_and_a_stale_record,
    run_two_steps,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "direct.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[SagaStore]:
    store = SagaStore(f"sqlite:///{path}")
    store.ensure_schema()
    yield store
    store.dispose()


def test_a_saga_run_through_the_store_goes_to_the_driver(
    store: SagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storing a 2-step saga, claiming its steps and recording them run on the driver
    (the last record and the saga's completion in one transaction), and leave the rows
    SQLAlchemy's path leaves."""
    calls = Calls(monkeypatch)
    saga_id = run_two_steps(store)
    assert calls.ran == ["INSERT", "INSERT", "UPDATE", "INSERT", "UPDATE", "UPDATE"]
    saga = store.get_saga(saga_id)
    assert saga is not None
    assert saga.status is SagaStatus.COMPLETED
    assert saga.plan == plan(2)
    steps = store.get_steps(saga_id)
    assert [(s.status, s.args, s.kwargs, s.result, s.attempts) for s in steps] == [
        (StepStatus.SUCCEEDED, [0], {"k": "v"}, {"n": 0}, 1),
        (StepStatus.SUCCEEDED, [1], {"k": "v"}, {"n": 1}, 1),
    ]
    assert all(isinstance(s.started_at, datetime) for s in steps)


def test_a_second_claim_and_a_stale_record_answer_as_before(store: SagaStore) -> None:
    """A claim of a step someone holds is not granted, and a record by a token that
    lost the step writes nothing: the RETURNING and row counts read off sqlite3."""
    refuse_a_second_claim_and_a_stale_record(store)


def test_a_retried_step_is_claimed_by_its_update_with_the_attempt_returned(
    store: SagaStore,
) -> None:
    """A step given back for a retry is claimed again by the UPDATE ... RETURNING on the
    driver, which reads the attempt number back."""
    saga_id = new_saga(store)
    assert claim_step(store, saga_id, 0, "first").attempt == 1
    store.release_step(saga_id, 0, "first", {"type": "E", "message": "again"}, None)
    again = claim_step(store, saga_id, 0, "second")
    assert (again.outcome, again.attempt) == (ClaimOutcome.CLAIMED, 2)


def test_a_stale_last_record_completes_nothing(store: SagaStore) -> None:
    """The last step recorded by a token that lost it writes nothing and leaves the
    saga running: the completion is not run after a record that matched no row."""
    saga_id = new_saga(store, steps=1)
    claim_step(store, saga_id, 0, "owner")
    assert store.complete_step(saga_id, 0, "other", 1, last=True) is Completion.LOST
    saga = store.get_saga(saga_id)
    assert saga is not None
    assert saga.status is SagaStatus.RUNNING
    assert store.complete_step(saga_id, 0, "owner", 1, last=True) is Completion.COMPLETED


def test_returned_json_and_timestamps_are_left_to_sqlalchemy(store: SagaStore) -> None:
    """A statement returning columns SQLAlchemy converts (SQLite keeps JSON and
    timestamps as text) is not run directly; a plain record is."""
    direct = Direct.of(store.engine)
    assert direct is not None
    params = {"p_saga": "x", "p_index": 0, "p_token": "t", "p_lease": None, "p_now": None}
    assert direct.execute(CLAIM_COMPENSATION_RETURNING, params) is None
    record = {"p_saga": "x", "p_index": 0, "p_token": "t", "p_result": "1", "p_now": None}
    written = direct.execute(COMPLETE_STEP, record)
    assert written is not None
    assert written.rowcount == 0


def test_a_taken_saga_id_rolls_back_and_the_connection_writes_again(store: SagaStore) -> None:
    """A duplicate saga id is SQLAlchemy's IntegrityError off the driver (``create_saga``
    returns the saga stored before), and its transaction is rolled back: the pooled
    connection takes the next write."""
    saga_id = new_saga(store)
    existing = store.create_saga(saga_row(saga_id, plan(2), datetime.now(UTC)))
    assert existing is not None
    assert existing.id == saga_id
    assert store.get_saga(new_saga(store)) is not None


def test_a_write_waits_for_another_connection_s_write_lock(store: SagaStore, path: Path) -> None:
    """While another connection holds the write lock the write waits (``BEGIN IMMEDIATE``
    under the busy timeout) and succeeds once it is let go, instead of failing."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, other.commit)
    timer.start()
    try:
        saga_id = new_saga(store)
    finally:
        timer.join()
        other.close()
    assert store.get_saga(saga_id) is not None


def test_a_lock_held_past_the_busy_timeout_is_a_saga_store_error(
    path: Path, store: SagaStore
) -> None:
    """A write that cannot get the write lock within the busy timeout raises
    SagaStoreError naming what it could not do, and writes nothing."""
    quick = SagaStore(f"sqlite:///{path}")

    @event.listens_for(quick.engine, "connect")
    def _short_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout = 50")

    quick.ensure_schema()
    saga_id = f"direct-{uuid.uuid4().hex}"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(SagaStoreError, match=r"could not store the saga.*locked"):
            quick.create_saga(saga_row(saga_id, plan(2), datetime.now(UTC)))
    finally:
        other.rollback()
        other.close()
    assert quick.get_saga(saga_id) is None
    assert quick.get_saga(new_saga(quick)) is not None  # and the connection writes again
    quick.dispose()


def test_listeners_on_the_engine_see_every_statement(store: SagaStore) -> None:
    """With a ``before_cursor_execute`` listener on the engine, the writes go through
    SQLAlchemy, so that the listener sees each of them (its BEGIN IMMEDIATE too)."""
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.split()[0])

    event.listen(store.engine, "before_cursor_execute", listen)
    try:
        saga_id = new_saga(store, steps=1)
        claim_step(store, saga_id, 0, "t")
    finally:
        event.remove(store.engine, "before_cursor_execute", listen)
    assert seen == ["BEGIN", "INSERT", "BEGIN", "INSERT"]


def test_a_database_in_memory_keeps_sqlalchemy_s_path() -> None:
    """An in-memory database (one connection its threads share) has no direct path."""
    store = SagaStore("sqlite://")
    try:
        assert Direct.of(store.engine) is None
    finally:
        store.dispose()


def test_a_parameter_that_cannot_be_encoded_raises_before_anything_is_sent(
    store: SagaStore,
) -> None:
    """A bind processor's error (a value JSON cannot encode) is raised as itself, with
    nothing sent and the pool's connection kept for the next write."""
    direct = Direct.of(store.engine)
    assert direct is not None
    record = {"p_saga": "x", "p_index": 0, "p_token": "t", "p_result": object(), "p_now": None}
    with pytest.raises(TypeError):
        direct.execute(COMPLETE_STEP, record)
    assert store.get_saga(new_saga(store)) is not None


def test_an_interrupted_write_rolls_back_and_raises_the_interruption(store: SagaStore) -> None:
    """An interruption between two statements of one transaction (a signal, a soft time
    limit) is raised as itself; what the first wrote is rolled back."""
    direct = Direct.of(store.engine)
    assert direct is not None
    saga_id = new_saga(store, steps=1)
    claim_step(store, saga_id, 0, "t")
    params = {"p_saga": saga_id, "p_index": 0, "p_token": "t", "p_result": "1", "p_now": None}

    def interrupt(_written: Any) -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        direct.execute_in_turn((COMPLETE_STEP, COMPLETE_SAGA), params, go_on=interrupt)
    assert store.get_steps(saga_id)[0].status is StepStatus.RUNNING
    assert store.complete_step(saga_id, 0, "t", 1, last=True) is Completion.COMPLETED


def test_a_sqlite_without_returning_keeps_sqlalchemy_s_path(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a SQLite older than 3.35 (no RETURNING) the writes stay on SQLAlchemy's path,
    and a step's first claim is granted."""
    for module in (sqlite3, sqlite3.dbapi2):
        monkeypatch.setattr(module, "sqlite_version_info", (3, 31, 1))
    old = SagaStore(f"sqlite:///{path}")
    try:
        assert not old.engine.dialect.insert_returning
        assert Direct.of(old.engine) is None
        saga_id = new_saga(old, steps=1)
        claim = claim_step(old, saga_id, 0, "t")
        assert (claim.outcome, claim.attempt) == (ClaimOutcome.CLAIMED, 1)
    finally:
        old.dispose()


def test_the_status_poll_reads_on_the_driver_without_the_write_lock(
    store: SagaStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``get_status`` (what ``SagaResult.get`` polls) is one SELECT on the driver, with no
    ``BEGIN IMMEDIATE``: it answers at once while another connection holds the write lock."""
    saga_id = new_saga(store)
    calls = Calls(monkeypatch)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        assert store.get_status(saga_id) is SagaStatus.RUNNING
        assert store.get_status("no-such-saga") is None
        assert time.monotonic() - started < 1.0  # (a write would wait up to 30 s)
    finally:
        other.rollback()
        other.close()
    assert calls.ran == ["SELECT", "SELECT"]


def test_the_last_compensation_is_recorded_and_the_saga_read_after_it(store: SagaStore) -> None:
    """On SQLite the last compensation's record, then the read of its saga after its
    commit, answer as on PostgreSQL (there in one round trip)."""
    record_the_last_compensation(store)


def test_each_pooled_connection_keeps_one_cursor_across_writes(tmp_path: Path) -> None:
    """Writes on the driver reuse the cursor kept with their pooled connection, and an
    invalidated connection's replacement gets a cursor of its own."""
    one = SagaStore(f"sqlite:///{tmp_path / 'one.sqlite3'}", engine_options={
        "pool_size": 1, "max_overflow": 0,
    })  # fmt: skip

    def kept_cursor() -> Any:
        connection = one.engine.raw_connection()
        try:
            cursor = connection.info[_CURSOR]
            assert cursor.connection is connection.dbapi_connection
            return cursor
        finally:
            connection.close()

    try:
        one.ensure_schema()
        saga_id = new_saga(one, steps=2)
        kept = kept_cursor()
        for index in range(2):
            claim_step(one, saga_id, index, "t")
            done = one.complete_step(saga_id, index, "t", index, last=index == 1)
            assert done is not Completion.LOST
            assert kept_cursor() is kept
        connection = one.engine.raw_connection()
        connection.invalidate()
        connection.close()
        assert one.get_status(saga_id) is SagaStatus.COMPLETED
        assert kept_cursor() is not kept
    finally:
        one.dispose()


def test_a_pool_sharing_one_connection_keeps_no_cursor(tmp_path: Path) -> None:
    """On a pool that hands one connection to several threads at once, each call makes
    a cursor of its own and closes it (kept, their results would mix)."""
    shared = SagaStore(f"sqlite:///{tmp_path / 'shared.sqlite3'}", engine_options={
        "poolclass": StaticPool, "connect_args": {"check_same_thread": False},
    })  # fmt: skip
    try:
        shared.ensure_schema()
        direct = Direct(shared.engine, begin="BEGIN IMMEDIATE")
        params = {"p_saga": "x", "p_index": 0, "p_token": "t", "p_result": "1", "p_now": None}
        assert direct.execute(COMPLETE_STEP, params) == Written(0, [])
        connection = shared.engine.raw_connection()
        try:
            assert _CURSOR not in connection.info
        finally:
            connection.close()
    finally:
        shared.dispose()
