"""Decimal, datetime, UUID and bytes pass through a saga as themselves (kombu's JSON)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from celery import Celery

from celery_saga import SagaCompensated, saga
from tests.support.json_tasks import RECEIVED

VALUES: dict[str, Any] = {
    "amount": Decimal("19.990000000000000001"),
    "at": datetime(2026, 12, 1, 12, 30, 5, 123456, tzinfo=UTC),
    "day": date(2026, 12, 1),
    "id": uuid.UUID("6f1c2b9e-2d4a-4c55-9b1e-0d2f3a4b5c6d"),
    "text": b"caf\xc3\xa9",
    "raw": b"\x00\xff\x10",
}


@pytest.fixture
def saga_includes() -> Sequence[str]:
    return ["tests.support.json_tasks"]


@pytest.fixture(autouse=True)
def _forget_what_was_received() -> Iterator[None]:
    RECEIVED.clear()
    yield
    RECEIVED.clear()


def same(value: Any) -> bool:
    """Equal to VALUES, and every value of the very same type."""
    return value == VALUES and all(type(value[k]) is type(v) for k, v in VALUES.items())


def test_values_reach_the_next_step_and_the_result(saga_app: Celery, saga_worker: Any) -> None:
    """A step's argument and result, the next step's input and result.get() keep their types."""
    result = saga(
        saga_app.signature("json.echo", args=(VALUES,)),
        saga_app.signature("json.passed"),
        name="json",
        app=saga_app,
    ).apply_async()

    assert same(result.get(timeout=30))
    assert [who for who, _ in RECEIVED] == ["echo", "passed"]
    assert all(same(value) for _, value in RECEIVED)
    first = result.steps[0]
    assert same(first.args[0])  # as stored
    assert same(first.result)


def test_values_reach_the_compensation(saga_app: Celery, saga_worker: Any) -> None:
    """The compensation gets the step's stored result and arguments with their types."""
    result = saga(
        saga_app.signature("json.echo", args=(VALUES,)),
        saga_app.signature("json.refuse", immutable=True),
        name="json-undo",
        app=saga_app,
    ).apply_async()

    with pytest.raises(SagaCompensated):
        result.get(timeout=30)
    received = dict(RECEIVED)
    assert same(received["compensation result"])
    assert same(received["compensation argument"])
