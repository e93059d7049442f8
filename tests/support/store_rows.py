"""Sagas and claims written straight through a store, for the tests of its write paths."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from celery_saga.plan import saga_row
from celery_saga.status import SagaStatus, StepStatus
from celery_saga.store import Claim, ClaimOutcome, Completion, SagaStore
from celery_saga.store._direct import Direct


def plan(steps: int) -> dict[str, Any]:
    """A straight-line plan of ``steps`` steps of ``shop.act``, undone by ``shop.undo``."""
    return {
        "name": "direct",
        "steps": [
            {"index": i, "stage": i, "task": "shop.act", "compensate": "shop.undo"}
            for i in range(steps)
        ],
    }


def new_saga(store: SagaStore, steps: int = 2) -> str:
    """A new saga of :func:`plan` stored; its id."""
    saga_id = f"direct-{uuid.uuid4().hex}"
    assert store.create_saga(saga_row(saga_id, plan(steps), datetime.now(UTC))) is None
    return saga_id


def claim_step(store: SagaStore, saga_id: str, index: int, token: str) -> Claim:
    """Step ``index`` claimed with ``token`` (its args ``[index]``, kwargs ``{"k": "v"}``)."""
    return store.claim_step(
        saga_id, index, token, [index], {"k": "v"}, 60.0,
        stage=index, task="shop.act", compensate="shop.undo",
    )  # fmt: skip


def run_two_steps(store: SagaStore) -> str:
    """A 2-step saga stored, each step claimed (its first attempt) and recorded; its id."""
    saga_id = new_saga(store)
    for index in (0, 1):
        claim = claim_step(store, saga_id, index, f"t{index}")
        assert claim.outcome is ClaimOutcome.CLAIMED
        assert claim.attempt == 1
        done = store.complete_step(saga_id, index, f"t{index}", {"n": index}, last=index == 1)
        assert done is (Completion.COMPLETED if index == 1 else Completion.RECORDED)
    return saga_id


def refuse_a_second_claim_and_a_stale_record(store: SagaStore) -> None:
    """A held step's claim by another token is BUSY; a record by a token that lost the
    step writes nothing (LOST), the owner's is recorded."""
    saga_id = new_saga(store)
    assert claim_step(store, saga_id, 0, "owner").outcome is ClaimOutcome.CLAIMED
    assert claim_step(store, saga_id, 0, "other").outcome is ClaimOutcome.BUSY
    assert store.complete_step(saga_id, 0, "other", 1, last=False) is Completion.LOST
    assert store.complete_step(saga_id, 0, "owner", 1, last=False) is Completion.RECORDED


class Calls:
    """Counts the statements the driver path ran, by first word (and passes each call on)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ran: list[str] = []
        self.pipelined: list[list[str]] = []  # those sent together, in one round trip
        execute = Direct._execute

        def counted(direct: Direct, compiled: Any, *args: Any, **kwargs: Any) -> Any:
            done = execute(direct, compiled, *args, **kwargs)
            ran = [each.sql.split()[0] for each in compiled[: len(done)]]
            self.ran += ran
            if kwargs.get("pipelined"):
                self.pipelined.append(ran)
            return done

        monkeypatch.setattr(Direct, "_execute", counted)


def record_the_last_compensation(store: SagaStore) -> None:
    """The last compensation's record reads the whole saga after it: the owner's is
    recorded (the step read as compensated), a stale token's writes nothing but still
    reads the saga, and a saga the store does not know reads as None."""
    saga_id = new_saga(store)
    claim_step(store, saga_id, 0, "a")
    store.complete_step(saga_id, 0, "a", "r0", last=False)
    claim_step(store, saga_id, 1, "b")
    error = {"type": "RuntimeError", "message": "boom", "traceback": ""}
    assert store.fail_step(
        saga_id, 1, "b", error, saga_status=SagaStatus.COMPENSATING,
        step_status=StepStatus.FAILED, attempt=1,
    )  # fmt: skip
    assert store.claim_compensation(saga_id, 0, "c", 60.0).outcome is ClaimOutcome.CLAIMED
    recorded, read = store.finish_last_compensation(saga_id, 0, "stale")
    assert not recorded
    assert read is not None
    assert [s.status for s in read[1]] == [StepStatus.COMPENSATING, StepStatus.FAILED]
    recorded, read = store.finish_last_compensation(saga_id, 0, "c")
    assert recorded
    assert read is not None
    saga, steps = read
    assert (saga.id, saga.status, saga.plan) == (saga_id, SagaStatus.COMPENSATING, plan(2))
    assert [(s.index, s.status, s.result) for s in steps] == [
        (0, StepStatus.COMPENSATED, "r0"), (1, StepStatus.FAILED, None),
    ]  # fmt: skip
    assert steps[0].compensation_finished_at is not None
    assert store.finish_last_compensation(f"{saga_id}-unknown", 0, "c") == (False, None)
