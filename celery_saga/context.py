"""Who is running: :func:`current_step` inside a saga step or compensation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["StepContext", "current_step", "running"]

_IDEMPOTENCY_NAMESPACE = uuid.UUID("7d2c8f0e-5b1a-4b8e-9a53-3c1f0f6a9e21")


@dataclass(frozen=True)
class StepContext:
    """Who is running: returned by :func:`current_step` inside a saga step or compensation.

    .. versionadded:: 0.1
    """

    saga_id: str
    saga_name: str
    step_index: int
    step_name: str
    attempt: int
    compensating: bool = False

    @property
    def idempotency_key(self) -> str:
        """A key that stays the same across retries and redeliveries of this step.

        Pass it to payment-style APIs. The compensation of a step has its own key.
        """
        role = "compensate" if self.compensating else "step"
        name = f"{self.saga_id}\x00{self.step_index}\x00{role}"
        return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, name))


_current: ContextVar[StepContext | None] = ContextVar("celery_saga_current_step", default=None)


def current_step() -> StepContext | None:
    """The saga step (or compensation) running in this context, or None outside one.

    .. versionadded:: 0.1
    """
    return _current.get()


@contextmanager
def running(context: StepContext) -> Iterator[None]:
    """Make ``context`` what :func:`current_step` returns inside the block."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
