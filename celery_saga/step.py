"""``@saga_step``: mark a Celery task as a saga step, with its compensation.

The decorator does not replace the task: it returns the very object it was given, so
the task keeps its name, queue, routing, rate limit and retry options, and ``.delay()``
outside a saga behaves exactly as before. What changes is the task's ``run``: when a
message carries the saga header, the step is claimed in the store, run, and its result
recorded; without the header the original function runs untouched.

Tasks made by ``@app.task`` are bound at once (or when Celery evaluates the lazy task);
``@shared_task`` tasks are bound when an app that went through
:func:`celery_saga.install` is finalized.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from celery import Celery, Task
from celery.local import PromiseProxy, Proxy

from .definition import (
    DEFINITION_ATTR,
    ORIGINAL_RUN_ATTR,
    StepDefinition,
    step_definition,
    task_name,
)
from .retry import RetryPolicy
from .worker import run_step

__all__ = ["StepDefinition", "bind_steps", "saga_step", "step_definition", "task_name"]

TaskT = TypeVar("TaskT")

#: Step definitions by the function behind the task (for lazy and shared tasks).
_BY_FUNCTION: dict[Callable[..., Any], StepDefinition] = {}
#: Step definitions by task name (for class-based tasks).
_BY_NAME: dict[str, StepDefinition] = {}


def _is_proxy(obj: object) -> bool:
    return type(obj) in (Proxy, PromiseProxy)


def _underlying_function(obj: object) -> Callable[..., Any] | None:
    """The function a task was made from, without evaluating a lazy task."""
    if type(obj) is PromiseProxy and not obj.__evaluated__():
        args = object.__getattribute__(obj, "_Proxy__args")
        fun = args[0] if args else None
        return fun if callable(fun) else None
    if type(obj) is Proxy:  # @shared_task: the proxy's factory closes over the function
        factory = object.__getattribute__(obj, "_Proxy__local")
        fun = inspect.getclosurevars(factory).nonlocals.get("fun")
        return fun if callable(fun) else None
    if isinstance(obj, Task):
        return _task_function(obj)
    return None


def _task_function(task: Task[Any, Any]) -> Callable[..., Any] | None:
    wrapped = getattr(task, "__wrapped__", None)
    wrapped = getattr(wrapped, "__func__", wrapped)
    return wrapped if callable(wrapped) else None


def _bind(task: Task[Any, Any], definition: StepDefinition) -> None:
    """Wrap the task's ``run`` so it runs as a saga step when the saga header is present."""
    if task.__dict__.get(DEFINITION_ATTR) is definition:
        return
    original: Callable[..., Any] = task.__dict__.get(ORIGINAL_RUN_ATTR) or task.run

    def run(*args: Any, **kwargs: Any) -> Any:
        return run_step(task, definition, original, args, kwargs)

    run.__name__ = getattr(original, "__name__", "run")
    run.__doc__ = getattr(original, "__doc__", None)
    task.__dict__[ORIGINAL_RUN_ATTR] = original
    task.__dict__[DEFINITION_ATTR] = definition
    task.run = run  # type: ignore[method-assign]


def bind_steps(app: Celery) -> None:
    """Bind every registered saga step among the app's tasks (idempotent)."""
    for task in list(app.tasks.values()):
        function = _task_function(task)
        definition = (_BY_FUNCTION.get(function) if function else None) or _BY_NAME.get(task.name)
        if definition is not None:
            _bind(task, definition)


def _check_compensate(compensate: object) -> None:
    if compensate is None or isinstance(compensate, str) or _is_proxy(compensate):
        return
    if isinstance(compensate, Task):
        return
    raise TypeError(
        f"compensate= takes a Celery task (decorated with @app.task or @shared_task) or a "
        f"task name string, got {compensate!r}"
    )


def _decorate(task: Any, definition: StepDefinition) -> Any:
    if type(task) is PromiseProxy and not task.__evaluated__():
        function = _underlying_function(task)
        if function is not None:
            _BY_FUNCTION[function] = definition
        task.__then__(lambda: _bind(task._get_current_object(), definition))
        return task
    if type(task) is Proxy:
        function = _underlying_function(task)
        if function is None:
            raise TypeError(f"@saga_step cannot find the function behind {task!r}")
        _BY_FUNCTION[function] = definition
        return task
    if type(task) is PromiseProxy:
        task = task._get_current_object()
    if not isinstance(task, Task):
        raise TypeError(
            "@saga_step goes on top of a Celery task: write @saga_step(...) above "
            f"@app.task or @shared_task (got {task!r})"
        )
    function = _task_function(task)
    if function is not None:
        _BY_FUNCTION[function] = definition
    else:
        _BY_NAME[task.name] = definition
    _bind(task, definition)
    return task


@overload
def saga_step(task: TaskT, /) -> TaskT: ...


@overload
def saga_step(
    *,
    compensate: object | None = None,
    retry: RetryPolicy | int | Mapping[str, Any] | None = None,
    timeout: float | None = None,
    compensate_on_timeout: bool = False,
) -> Callable[[TaskT], TaskT]: ...


def saga_step(
    task: Any = None,
    /,
    *,
    compensate: object | None = None,
    retry: RetryPolicy | int | Mapping[str, Any] | None = None,
    timeout: float | None = None,
    compensate_on_timeout: bool = False,
) -> Any:
    """Mark a Celery task as a saga step.

    Stack it on top of ``@app.task`` or ``@shared_task``::

        @saga_step(compensate=refund_payment)
        @app.task
        def charge_payment(order_id, amount): ...

    Args:
        task: the task, when used bare as ``@saga_step`` (no compensation).
        compensate: the task that undoes this step: a task object or a task name. It is
            called as ``compensate(result, *args, **kwargs)`` with the step's stored
            result and the arguments the step ran with. A step without one is taken as
            needing no undo.
        retry: a :class:`~celery_saga.RetryPolicy` (or a number of attempts, or a
            mapping of its fields): how often and how soon a failing attempt is
            retried before the step fails for good and the saga compensates.
        timeout: seconds one attempt may run: the message's soft time limit (the step
            gets ``SoftTimeLimitExceeded`` and fails) and, a little later, its hard
            time limit (the worker kills the process). Needs a pool that enforces time
            limits (prefork). A task's own ``time_limit`` options are used if given.
        compensate_on_timeout: a step that timed out may have taken effect (in doubt):
            compensate it too, first, with a ``None`` result.

    .. versionadded:: 0.1
    """
    _check_compensate(compensate)
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise TypeError(f"timeout= takes a number of seconds > 0, got {timeout!r}")
    if compensate_on_timeout and compensate is None:
        raise TypeError("compensate_on_timeout=True needs compensate=: there is nothing to undo")
    definition = StepDefinition(
        compensate=compensate,
        retry=RetryPolicy.of(retry),
        timeout=None if timeout is None else float(timeout),
        compensate_on_timeout=bool(compensate_on_timeout),
    )
    if task is not None:
        return _decorate(task, definition)

    def decorator(inner: TaskT) -> TaskT:
        decorated: TaskT = _decorate(inner, definition)
        return decorated

    return decorator
