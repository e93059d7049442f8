"""What ``@saga_step`` attaches to a task, and how to find it again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task

from .retry import RetryPolicy

__all__ = [
    "DEFINITION_ATTR",
    "ORIGINAL_RUN_ATTR",
    "StepDefinition",
    "original_run",
    "step_definition",
    "task_name",
]

DEFINITION_ATTR = "_celery_saga_step"
ORIGINAL_RUN_ATTR = "_celery_saga_original_run"


def task_name(obj: object) -> str:
    """The Celery task name of a task object, a task proxy, or a name string."""
    if isinstance(obj, str):
        return obj
    name = getattr(obj, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"expected a Celery task or a task name, got {obj!r}")
    return name


@dataclass(frozen=True, eq=False)
class StepDefinition:
    """What ``@saga_step`` attached to a task.

    .. versionadded:: 0.1
    """

    compensate: object | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    compensate_on_timeout: bool = False

    @property
    def compensation_name(self) -> str | None:
        """The name of the compensation task (resolved lazily: it may be a lazy task)."""
        return None if self.compensate is None else task_name(self.compensate)


def step_definition(task: Task[Any, Any]) -> StepDefinition | None:
    """The saga step definition bound to a task, if it is one."""
    definition: StepDefinition | None = task.__dict__.get(DEFINITION_ATTR)
    return definition


def original_run(task: Task[Any, Any]) -> Callable[..., Any]:
    """The task's own ``run``, as it was before ``@saga_step`` wrapped it."""
    run: Callable[..., Any] = task.__dict__.get(ORIGINAL_RUN_ATTR) or task.run
    return run
