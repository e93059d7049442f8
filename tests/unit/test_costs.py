"""What a saga costs, pinned without timing: message bytes per step, statements per saga.

A regression in either shows here as a changed number (the benchmarks measure the time).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from celery.signals import before_task_publish
from kombu.utils.json import dumps
from sqlalchemy import event

from celery_saga import dispatch, signals
from celery_saga._runtime import get_store
from celery_saga.dispatch import COMPENSATE_TASK, HEADER
from celery_saga.status import SagaStatus
from tests.support.envs import SagaEnv, sqlite_thread_env

TIMEOUT = 30


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEnv]:
    with sqlite_thread_env(tmp_path_factory.mktemp("costs"), "costs") as env:
        yield env


class Messages:
    """The task messages published while it is connected: (task name, header, bytes)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], int, int]] = []

    def __call__(self, body: Any = None, headers: Any = None, **_: Any) -> None:
        args, kwargs, embed = body
        own = dumps([args, kwargs, {**embed, "chain": None}]) + dumps(headers)
        full = dumps(body) + dumps(headers)
        self.sent.append((headers["task"], headers.get(HEADER) or {}, len(own), len(full)))
        assert not embed.get("errbacks"), "a step message carries no link_error"

    def steps(self, task: str) -> list[int]:
        """The bytes of each message of ``task``, without the rest of its chain, by index."""
        return [own for name, header, own, _ in self.sent if name == task and header]

    def named(self, task: str) -> int:
        return sum(name == task for name, *_ in self.sent)


@pytest.fixture
def messages() -> Iterator[Messages]:
    capture = Messages()
    before_task_publish.connect(capture, weak=False)
    yield capture
    before_task_publish.disconnect(capture)


class Ended:
    """Set once the saga with this id has ended (from the saga signals, not the store)."""

    def __init__(self) -> None:
        self.saga_id: str | None = None
        self.done = threading.Event()
        self.status: SagaStatus | None = None

    def __call__(self, sender: Any = None, event: Any = None, **_: Any) -> None:
        if event.saga_id == self.saga_id:
            self.status = event.status
            self.done.set()


def run(env: SagaEnv, *steps: Any) -> SagaStatus | None:
    """Start a saga and wait for its end without reading the store (no polls counted)."""
    ended = Ended()
    ends = (signals.saga_completed, signals.saga_compensated, signals.saga_failed)
    for signal in ends:
        signal.connect(ended, weak=False)
    try:
        saga = env.saga(*steps)
        ended.saga_id = saga_id = f"costs-{uuid.uuid4().hex}"
        saga.apply_async(saga_id=saga_id)
        assert ended.done.wait(TIMEOUT), "the saga did not end"
    finally:
        for signal in ends:
            signal.disconnect(ended)
    return ended.status


def statements(env: SagaEnv, *steps: Any) -> tuple[SagaStatus | None, Counter[str]]:
    """Run a saga; the statements it sent to the store, by their first two words.

    With the ends of its transactions (``COMMIT``, ``ROLLBACK``; those of the engine
    in autocommit send nothing, and are left out). On PostgreSQL the driver sends each
    transaction's ``BEGIN`` itself, unseen here: one per ``COMMIT`` or ``ROLLBACK``.
    """
    store = get_store(env.app)
    store.ensure_schema()
    sent: Counter[str] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        words = [w for w in statement.split() if w.upper() not in ("INTO", "FROM")]
        sent[" ".join(words[:2]).replace(",", "")] += 1

    def commit(_conn: Any) -> None:
        sent["COMMIT"] += 1

    def rollback(_conn: Any) -> None:
        sent["ROLLBACK"] += 1

    listeners = [(engine, "before_cursor_execute", count) for engine in store.engines]
    listeners += [(store.engine, "commit", commit), (store.engine, "rollback", rollback)]
    for engine, name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        status = run(env, *steps)
    finally:
        for engine, name, listener in listeners:
            event.remove(engine, name, listener)
    return status, sent


@pytest.mark.parametrize("count", [1, 10, 50])
def test_step_messages_do_not_grow_with_the_step_index(
    env: SagaEnv, messages: Messages, count: int
) -> None:
    """Each step's message, the rest of its chain left out, is within 10 % of the first's."""
    steps = [env.sig("act", tag=f"s{i:02d}", immutable=True) for i in range(count)]
    assert run(env, *steps) is SagaStatus.COMPLETED
    sizes = messages.steps("shop.act")
    assert len(sizes) == count
    assert max(sizes) <= 1.1 * sizes[0], sizes


def test_failing_step_sends_its_compensations_itself(env: SagaEnv, messages: Messages) -> None:
    """A failing step of a 10-step saga carries no errbacks and sends one message per undo."""
    steps = [env.sig("act", tag=f"s{i}", immutable=True, fail=i == 9) for i in range(10)]
    assert run(env, *steps) is SagaStatus.COMPENSATED
    sizes = messages.steps("shop.act")
    assert max(sizes) <= 1.1 * sizes[0], sizes
    assert messages.named(COMPENSATE_TASK) == 9
    assert [e.tag for e in env.ledger.entries(None, "undo")][-9:] == [
        f"s{i}" for i in range(8, -1, -1)
    ]


def _as_sent_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the step messages those of the version before: undo list and link_error."""
    original = dispatch.step_signatures

    def old(app: Any, saga_id: str, plan: Any, *args: Any, **kwargs: Any) -> Any:
        signatures = original(app, saga_id, plan, *args, **kwargs)
        for signature in signatures:
            header = signature.options["headers"][HEADER]
            undo = dispatch.undo_list(plan["steps"], header["i"])
            header.pop("b", None)
            header.pop("v", None)
            header.update(c=bool(undo), u=undo)
            if undo:
                signature.options["link_error"] = [
                    dispatch.compensation_chain(app, saga_id, plan, undo)
                ]
        return signatures

    monkeypatch.setattr(dispatch, "step_signatures", old)


def test_messages_of_the_version_before_still_compensate_once(
    env: SagaEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step message with the old header and its link_error: each compensation is sent once."""
    _as_sent_before(monkeypatch)
    sent: list[str] = []

    def record(headers: Any = None, **_: Any) -> None:
        sent.append(headers["task"])

    before_task_publish.connect(record, weak=False)
    try:
        steps = [env.sig("act", tag=f"o{i}", fail=i == 2) for i in range(3)]
        assert run(env, *steps) is SagaStatus.COMPENSATED
    finally:
        before_task_publish.disconnect(record)
    assert sent.count(COMPENSATE_TASK) == 2
    assert [e.tag for e in env.ledger.entries(None, "undo")][-2:] == ["o1", "o0"]


def test_statements_on_the_success_path(env: SagaEnv) -> None:
    """A 3-step saga that completes makes 8 statements in 7 transactions on SQLite."""
    steps = [env.sig("act", tag=f"s{i}") for i in range(3)]
    status, sent = statements(env, *steps)
    assert status is SagaStatus.COMPLETED
    assert sent == {
        "BEGIN IMMEDIATE": 7,  # the saga's insert, 3 claims, 3 records
        "COMMIT": 7,
        "INSERT celery_sagas": 1,
        "INSERT celery_saga_steps": 3,  # the claims (the first claim creates the row)
        "UPDATE celery_saga_steps": 3,  # the results
        "UPDATE celery_sagas": 1,  # completed, with the last result
    }


def test_statements_on_the_failure_path(env: SagaEnv) -> None:
    """Step 3 of 3 failing, 2 compensations: the failure's write reads the plan it undoes,
    each compensation is a claim and a record, and the last one ends the saga."""
    steps = [env.sig("act", tag=f"f{i}", fail=i == 2) for i in range(3)]
    status, sent = statements(env, *steps)
    assert status is SagaStatus.COMPENSATED
    assert sent == {
        # the saga's insert, 3 claims, 2 records, the failure, 2 x (claim, record), the end
        "BEGIN IMMEDIATE": 12,
        "COMMIT": 12,
        "BEGIN": 1,  # the read of the whole saga that ends it
        "ROLLBACK": 1,
        "INSERT celery_sagas": 1,
        "INSERT celery_saga_steps": 3,  # the claims
        # 2 results, the failure, 2 compensations claimed and 2 recorded
        "UPDATE celery_saga_steps": 7,
        "UPDATE celery_sagas": 2,  # compensating (returning the plan), then compensated
        # the compensations' claims' reads of the step, and the final settle's
        "SELECT celery_saga_steps.saga_id": 3,
        "SELECT celery_sagas.id": 1,
    }
