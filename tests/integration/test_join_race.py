"""The group join under a race: members finishing at the same instant, on every store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from celery_saga.status import SagaStatus
from celery_saga.store import Completion, EncodedJSON, Join, SagaStore, utcnow
from tests.support.services import MYSQL_ADMIN_URL, POSTGRES_ADMIN_URL, require, scratch_database

MEMBERS = 6
ROUNDS = 15


@contextmanager
def _store(service: str, tmp_path: Path) -> Iterator[SagaStore]:
    if service == "sqlite":
        store = SagaStore(f"sqlite:///{tmp_path / 'race.sqlite3'}")
        yield store
        store.dispose()
        return
    require(service)
    admin, dialect = {
        "postgres": (POSTGRES_ADMIN_URL, "postgresql"),
        "mysql": (MYSQL_ADMIN_URL, "mysql"),
    }[service]
    with scratch_database(admin, dialect) as url:
        store = SagaStore(url, engine_options={"pool_size": MEMBERS + 2})
        try:
            yield store
        finally:
            store.dispose()


def _group_saga(store: SagaStore, saga_id: str, final: bool) -> None:
    """A saga of one group of MEMBERS members (then a step, unless ``final``), all claimed."""
    steps: list[dict[str, Any]] = [
        {"index": i, "stage": 0, "branch": i, "task": "t", "args": [], "kwargs": {},
         "options": {}, "immutable": True, "compensate": None}
        for i in range(MEMBERS)
    ]  # fmt: skip
    if not final:
        steps.append({**steps[0], "index": MEMBERS, "stage": 1})
        del steps[-1]["branch"]
    now = utcnow()
    store.create_saga(
        {"id": saga_id, "name": "race", "status": SagaStatus.RUNNING,
         "plan": {"version": 2, "name": "race", "steps": steps}, "plan_hash": "0" * 64,
         "step_count": len(steps), "created_at": now, "updated_at": now}
    )  # fmt: skip
    for i in range(MEMBERS):
        claim = store.claim_step(
            saga_id, i, f"k{i}", [], {}, 60, stage=0, task="t", compensate=None
        )
        assert claim.token == f"k{i}"


def _race(store: SagaStore, saga_id: str, final: bool) -> list[Join]:
    """Every member records its result at the same instant, each from a thread of its own."""
    barrier = threading.Barrier(MEMBERS)
    outcomes: list[Any] = [None] * MEMBERS

    def finish(i: int) -> None:
        barrier.wait()
        outcomes[i] = store.join_stage(
            saga_id, i, f"k{i}", EncodedJSON(f'{{"m": {i}}}'),
            ends=list(range(MEMBERS)), final=final,
        )  # fmt: skip

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(MEMBERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.parametrize(
    "service",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
@pytest.mark.parametrize("final", [False, True], ids=["then a step", "last stage"])
def test_exactly_one_member_joins(service: str, final: bool, tmp_path: Path) -> None:
    """Of a group's members recording their results at once, exactly one sees all of them
    (with every result, in member order) and, for a last stage, the saga completes once."""
    with _store(service, tmp_path) as store:
        for round_number in range(ROUNDS):
            saga_id = f"race-{final}-{round_number}"
            _group_saga(store, saga_id, final)
            outcomes = _race(store, saga_id, final)
            joined = Completion.COMPLETED if final else Completion.JOINED
            kinds = sorted(o.outcome.value for o in outcomes)
            assert kinds == sorted([joined.value] + [Completion.RECORDED.value] * (MEMBERS - 1))
            (winner,) = (o for o in outcomes if o.outcome is joined)
            assert list(winner.results) == [{"m": i} for i in range(MEMBERS)]
            expected = SagaStatus.COMPLETED if final else SagaStatus.RUNNING
            assert store.get_status(saga_id) is expected


def test_member_recorded_after_a_stop_is_halted(tmp_path: Path) -> None:
    """A member that succeeds after its saga was stopped is recorded (to be undone), not joined."""
    with _store("sqlite", tmp_path) as store:
        _group_saga(store, "halted", final=False)
        assert store.cancel_saga("halted", {"type": "x", "message": "stop", "traceback": ""})
        join = store.join_stage(
            "halted", 0, "k0", EncodedJSON("1"), ends=list(range(MEMBERS)), final=False
        )
        assert join.outcome is Completion.HALTED
        assert store.get_steps("halted")[0].result == 1
        lost = store.join_stage(
            "halted", 1, "not-mine", EncodedJSON("1"), ends=list(range(MEMBERS)), final=False
        )
        assert lost.outcome is Completion.LOST
