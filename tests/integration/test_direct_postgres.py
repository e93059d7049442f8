"""On PostgreSQL with psycopg the store's hot writes go to the driver past SQLAlchemy
(``celery_saga.store._direct``): the same rows, the same errors, and SQLAlchemy's path
whenever something listens to the engine's statements."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import bindparam, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidRequestError

from celery_saga._runtime import get_store
from celery_saga.errors import SagaStoreError
from celery_saga.plan import saga_row
from celery_saga.status import SagaStatus, StepStatus
from celery_saga.store import ClaimOutcome, SagaStore
from celery_saga.store._base import StoreBase
from celery_saga.store._direct import Direct
from celery_saga.store.schema import sagas
from tests.support.envs import SagaEnv, thread_env
from tests.support.proxy import TcpProxy
from tests.support.store_rows import (
    Calls,
    claim_step,
    new_saga,
    plan,
    record_the_last_compensation,
    refuse_a_second_claim_and_a_stale_record,
    run_two_steps,
)
from tests.unit.test_costs import run

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(postgres_url: str) -> Iterator[SagaStore]:
    store = SagaStore(postgres_url)
    store.ensure_schema()
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def env(postgres_url: str) -> Iterator[SagaEnv]:
    with thread_env("direct-postgres", postgres_url, postgres_url) as env:
        yield env


def _drop_pooled(store: SagaStore, count: int = 1) -> None:
    """Have the server drop ``count`` connections pooled by the store's autocommit engine."""
    held = [store.engines[-1].raw_connection() for _ in range(count)]
    pids = [c.dbapi_connection.info.backend_pid for c in held]  # type: ignore[union-attr]
    for connection in held:
        connection.close()
    with store.engine.connect() as connection:  # (the other engine's connection)
        for pid in pids:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_a_saga_run_through_the_store_goes_to_the_driver(
    store: SagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storing, claiming and recording a 2-step saga runs each write on the driver,
    and leaves the rows SQLAlchemy's path leaves."""
    calls = Calls(monkeypatch)
    saga_id = run_two_steps(store)
    assert calls.ran == ["INSERT", "INSERT", "UPDATE", "INSERT", "WITH"]
    saga = store.get_saga(saga_id)
    assert saga is not None
    assert saga.status is SagaStatus.COMPLETED
    assert saga.plan == plan(2)
    steps = store.get_steps(saga_id)
    assert [(s.status, s.args, s.kwargs, s.result) for s in steps] == [
        (StepStatus.SUCCEEDED, [0], {"k": "v"}, {"n": 0}),
        (StepStatus.SUCCEEDED, [1], {"k": "v"}, {"n": 1}),
    ]


def test_a_second_claim_and_a_stale_record_answer_as_before(store: SagaStore) -> None:
    """A claim of a step someone holds is not granted, and a record by a token that
    lost the step writes nothing: the RETURNING and row counts read off the driver."""
    refuse_a_second_claim_and_a_stale_record(store)


def test_the_failure_path_returns_the_plan_and_claims_compensations_on_the_driver(
    store: SagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure's one statement returns the stored plan; a compensation is claimed
    with the step's row returned, recorded, and the saga ended, each on the driver."""
    saga_id = new_saga(store)
    claim_step(store, saga_id, 0, "a")
    store.complete_step(saga_id, 0, "a", "r0", last=False)
    claim_step(store, saga_id, 1, "b")
    calls = Calls(monkeypatch)
    error = {"type": "RuntimeError", "message": "boom", "traceback": ""}
    failed = store.fail_step(
        saga_id, 1, "b", error, saga_status=SagaStatus.COMPENSATING,
        step_status=StepStatus.FAILED, attempt=1, plan=True,
    )  # fmt: skip
    assert failed.recorded
    assert failed.moved
    assert failed.plan == plan(2)
    claim = store.claim_compensation(saga_id, 0, "c", 60.0)
    assert claim.outcome is ClaimOutcome.CLAIMED
    assert claim.step is not None
    assert (claim.step.result, claim.step.args, claim.step.started_at is not None) == (
        "r0", [0], True,
    )  # fmt: skip
    assert store.finish_compensation(saga_id, 0, "c")
    assert store.finish_saga_compensation(saga_id)
    assert calls.ran == ["WITH", "UPDATE", "UPDATE", "UPDATE"]
    saga = store.get_saga(saga_id)
    assert saga is not None
    assert saga.status is SagaStatus.COMPENSATED


def test_the_last_compensation_is_recorded_and_the_saga_read_in_one_round_trip(
    store: SagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last compensation's record and the two reads of its saga go to the driver as
    one pipeline each time, owner, stale token or unknown saga alike."""
    calls = Calls(monkeypatch)
    record_the_last_compensation(store)
    assert calls.pipelined == [["UPDATE", "SELECT", "SELECT"]] * 3


def test_a_failed_write_in_a_pipeline_leaves_its_connection_fit_to_reuse(
    postgres_url: str,
) -> None:
    """A pipelined write the server refuses is the store's error, and the one pooled
    connection it ran on is back to no transaction, its next writes and reads working."""
    store = SagaStore(postgres_url, engine_options={"pool_size": 1, "max_overflow": 0})
    store.ensure_schema()
    try:
        saga_id = new_saga(store)
        raw = store.engines[-1].raw_connection()
        pid = raw.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        raw.close()
        with pytest.raises(SagaStoreError, match="invalid input syntax for type integer"):
            store.finish_last_compensation(saga_id, "x", "c")  # type: ignore[arg-type]
        raw = store.engines[-1].raw_connection()
        try:  # the same connection, not one that replaced it
            assert raw.dbapi_connection.info.backend_pid == pid  # type: ignore[union-attr]
            assert raw.dbapi_connection.info.transaction_status == 0  # type: ignore[union-attr]
        finally:
            raw.close()
        assert claim_step(store, saga_id, 0, "a").outcome is ClaimOutcome.CLAIMED
        assert store.finish_last_compensation(saga_id, 0, "c")[1] is not None
    finally:
        store.dispose()


def test_the_status_poll_reads_on_the_driver(
    store: SagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``get_status`` (what ``SagaResult.get`` polls) is one SELECT on the driver."""
    saga_id = new_saga(store)
    calls = Calls(monkeypatch)
    assert store.get_status(saga_id) is SagaStatus.RUNNING
    assert store.get_status("no-such-saga") is None
    assert calls.ran == ["SELECT", "SELECT"]


def test_listeners_on_the_engine_see_every_statement(store: SagaStore) -> None:
    """With a ``before_cursor_execute`` listener on the engine, the writes go through
    SQLAlchemy, so that the listener (a tracer, a test) sees each of them."""
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.split()[0])

    engines = store.engines
    for engine in engines:
        event.listen(engine, "before_cursor_execute", listen)
    try:
        saga_id = new_saga(store, steps=1)
        claim_step(store, saga_id, 0, "t")
        store.complete_step(saga_id, 0, "t", 1, last=True)
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", listen)
    assert seen == ["INSERT", "INSERT", "WITH"]


def test_a_taken_saga_id_raises_as_sqlalchemy_does(store: SagaStore) -> None:
    """A duplicate saga id is SQLAlchemy's IntegrityError off the driver, which
    ``create_saga`` turns into the saga stored before."""
    saga_id = new_saga(store)
    existing = store.create_saga(saga_row(saga_id, plan(2), datetime.now(UTC)))
    assert existing is not None
    assert existing.id == saga_id


def test_a_statement_with_an_in_list_is_left_to_sqlalchemy(store: SagaStore) -> None:
    """A statement whose ``IN`` list SQLAlchemy renders at execution is not run directly."""
    direct = Direct.of(store.engines[-1])
    assert direct is not None
    query = select(sagas.c.id).where(sagas.c.status.in_(["RUNNING", "FAILED"]))
    assert direct.execute(query, {}) is None


def test_an_unreachable_server_is_a_saga_store_error_naming_it(postgres_url: str) -> None:
    """A write when the server cannot be reached raises SagaStoreError saying so."""
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    with proxy.running():
        store = SagaStore(url.set(port=proxy.port).render_as_string(hide_password=False))
        store.ensure_schema()
        proxy.cut()
        with pytest.raises(SagaStoreError, match="cannot be reached"):
            new_saga(store)
        store.dispose()


def test_a_dropped_connection_is_invalidated_and_the_next_write_reconnects(
    store: SagaStore, postgres_url: str
) -> None:
    """A pooled connection the server dropped fails its write with SagaStoreError and
    leaves the pool; the next write gets a fresh connection and succeeds."""
    new_saga(store)  # the autocommit engine's pool holds one connection now
    _drop_pooled(store)
    with pytest.raises(SagaStoreError, match="could not store the saga"):
        new_saga(store)
    saga_id = new_saga(store)
    assert store.get_saga(saga_id) is not None


@pytest.mark.parametrize(
    ("fails", "sent"),
    [
        (False, ["INSERT", "INSERT", "UPDATE", "INSERT", "UPDATE", "INSERT", "WITH"]),
        # the third step fails; its write returns the plan; two compensations claimed
        # and recorded, newest first; the last one's read of the saga (in one round trip
        # with its record); the saga's end
        (True, ["INSERT", "INSERT", "UPDATE", "INSERT", "UPDATE", "INSERT", "WITH"]
               + ["UPDATE", "UPDATE"] * 2 + ["SELECT", "SELECT", "UPDATE"]),
    ],
)  # fmt: skip
def test_a_whole_saga_sends_every_statement_on_the_driver(
    env: SagaEnv, monkeypatch: pytest.MonkeyPatch, fails: bool, sent: list[str]
) -> None:
    """A 3-step saga, completing or compensating 2 steps, sends each of its
    statements to the driver: none through SQLAlchemy, no BEGIN or ROLLBACK."""
    get_store(env.app).ensure_schema()
    calls = Calls(monkeypatch)
    through_sqlalchemy: list[str] = []
    for name in ("_write", "_write_one", "_read"):
        original = getattr(StoreBase, name)

        def spied(store: Any, doing: str, *args: Any, _original: Any = original, **kw: Any) -> Any:
            through_sqlalchemy.append(doing)
            return _original(store, doing, *args, **kw)

        monkeypatch.setattr(StoreBase, name, spied)
    steps = [env.sig("act", tag=f"d{i}", fail=fails and i == 2) for i in range(3)]
    status = run(env, *steps)
    assert status is (SagaStatus.COMPENSATED if fails else SagaStatus.COMPLETED)
    assert calls.ran == sent
    assert calls.pipelined == ([["UPDATE", "SELECT", "SELECT"]] if fails else [])
    assert through_sqlalchemy == []


def test_a_read_that_meets_a_dropped_connection_is_run_again(store: SagaStore) -> None:
    """``load_saga`` on the driver, meeting a pooled connection the server dropped,
    reads again on a fresh one: the caller sees the saga, not an error."""
    saga_id = new_saga(store)
    _drop_pooled(store)
    loaded = store.load_saga(saga_id)
    assert loaded is not None
    assert loaded[0].id == saga_id


def test_a_store_that_creates_no_tables_loads_a_saga_before_its_first_read(
    store: SagaStore, postgres_url: str
) -> None:
    """With ``create_tables=False`` (nothing connects first), the first ``load_saga``
    reads the saga: on SQLAlchemy's path until the server's isolation level is known."""
    saga_id = new_saga(store)
    fresh = SagaStore(postgres_url, create_tables=False)
    try:
        for _ in range(2):  # the first before any connection, the second on the driver
            loaded = fresh.load_saga(saga_id)
            assert loaded is not None
            assert loaded[0].id == saga_id
    finally:
        fresh.dispose()


def test_a_dropped_server_invalidates_every_pooled_connection(store: SagaStore) -> None:
    """After the server dropped all of a pool's connections, one write fails and the
    writes after it get fresh connections, as on SQLAlchemy's path (the pool is
    invalidated, not only the connection that met the error)."""
    _drop_pooled(store, count=3)  # three pooled connections, all dropped
    with pytest.raises(SagaStoreError):
        new_saga(store)
    for _ in range(3):
        assert store.get_saga(new_saga(store)) is not None


def test_none_in_a_json_column_is_stored_as_sqlalchemy_stores_it(store: SagaStore) -> None:
    """A step result of None is JSON ``null`` on the driver path, as through SQLAlchemy."""
    saga_id = new_saga(store)
    claim_step(store, saga_id, 0, "t")
    store.complete_step(saga_id, 0, "t", None, last=False)
    with store.engine.connect() as connection:
        kind = connection.execute(
            text("SELECT jsonb_typeof(result) FROM celery_saga_steps WHERE saga_id = :id"),
            {"id": saga_id},
        ).scalar_one()
    assert kind == "null"


def test_a_missing_parameter_is_an_error_not_a_null(store: SagaStore) -> None:
    """A statement run without one of its parameters raises, as SQLAlchemy does."""
    direct = Direct.of(store.engines[-1])
    assert direct is not None
    query = select(sagas.c.id).where(sagas.c.id == bindparam("p_saga"))
    with pytest.raises(InvalidRequestError, match="p_saga"):
        direct.execute(query, {})


def test_an_engine_that_logs_its_statements_keeps_sqlalchemys_path(postgres_url: str) -> None:
    """``echo`` on the engine (it logs every statement) sends them through SQLAlchemy."""
    store = SagaStore(postgres_url, engine_options={"echo": True})
    try:
        direct = Direct.of(store.engines[-1])
        assert direct is not None
        assert direct.watched
    finally:
        store.dispose()
