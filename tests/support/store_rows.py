"""Sagas and claims written straight through a store, for the tests of its write paths."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from celery_saga.plan import saga_row
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
        execute = Direct._execute

        def counted(direct: Direct, compiled: Any, *args: Any) -> Any:
            done = execute(direct, compiled, *args)
            self.ran += [each.sql.split()[0] for each in compiled[: len(done)]]
            return done

        monkeypatch.setattr(Direct, "_execute", counted)
