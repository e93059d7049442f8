"""``@shared_task`` saga steps for the test kit's own tests: they bind to ``saga_app``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from celery_saga import RetryPolicy, current_step, saga_step

#: What the steps and compensations did, in order: ("do" | "undo", tag, idempotency key).
DONE: list[tuple[str, str, str | None]] = []


def _note(action: str, tag: str) -> None:
    context = current_step()
    DONE.append((action, tag, context.idempotency_key if context else None))


@shared_task(name="kit.undo")
def undo(result: Any, tag: str) -> None:
    _note("undo", tag)


@saga_step(compensate="kit.undo")
@shared_task(name="kit.act")
def act(tag: str) -> str:
    _note("do", tag)
    return tag


@saga_step(compensate="kit.undo", retry=RetryPolicy(attempts=3, backoff=0.01))
@shared_task(name="kit.insist")
def insist(tag: str) -> str:
    _note("do", tag)
    return tag
