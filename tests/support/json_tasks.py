"""``@shared_task`` saga steps that pass kombu's JSON types along, for test_json_values."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from celery_saga import saga_step

#: What each step and the compensation received, in order: (who, value).
RECEIVED: list[tuple[str, Any]] = []


class Refused(Exception):
    """The error the failing step raises on purpose."""


@shared_task(name="json.forget")
def forget(result: Any, value: Any) -> None:
    RECEIVED.append(("compensation result", result))
    RECEIVED.append(("compensation argument", value))


@saga_step(compensate="json.forget")
@shared_task(name="json.echo")
def echo(value: Any) -> Any:
    RECEIVED.append(("echo", value))
    return value


@saga_step
@shared_task(name="json.passed")
def passed(previous: Any) -> Any:
    RECEIVED.append(("passed", previous))
    return previous


@saga_step
@shared_task(name="json.refuse")
def refuse() -> None:
    raise Refused("no")
