"""Sagas and claims written straight through a store, for the tests of its write paths."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from celery_saga.plan import saga_row
from celery_saga.store import Claim, SagaStore
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
