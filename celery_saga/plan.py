"""``saga(...)``'s steps checked and described as the plan stored with the saga.

Everything a worker could trip on later is refused here, before anything is stored or
sent: an unknown task or compensation, a task that is not a saga step, arguments that
are not JSON or that the store cannot keep, arguments that do not fit the task's
signature, callbacks on steps, the pickle serializer.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery, Signature
from celery.canvas import _chain
from kombu.utils.json import dumps as json_dumps

from ._values import json_problem, unstorable
from .config import get_config
from .definition import original_run, step_definition
from .errors import SagaConfigurationError, SagaValidationError
from .store.schema import NAME_LENGTH

__all__ = ["PLAN_VERSION", "SagaPlan", "build_plan"]

PLAN_VERSION = 1
#: Signature options that belong to one publication, not to the plan.
_TRANSIENT_OPTIONS = frozenset(
    {"task_id", "parent_id", "root_id", "group_id", "group_index", "chord", "chain", "reply_to"}
)
_UNSUPPORTED_OPTIONS = ("link", "link_error")


@dataclass(frozen=True)
class SagaPlan:
    """The checked, JSON-ready description of a saga, as stored in ``celery_sagas.plan``.

    .. versionadded:: 0.1
    """

    name: str
    steps: tuple[Mapping[str, Any], ...]
    deadline: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The stored form."""
        stored = {
            "version": PLAN_VERSION,
            "name": self.name,
            "steps": [dict(s) for s in self.steps],
        }
        if self.deadline is not None:  # only when set: older plans keep their hash
            stored["deadline"] = self.deadline
        return stored

    @property
    def hash(self) -> str:
        """sha256 of the plan: the same saga_id with another hash is a conflict."""
        encoded = json_dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()


def _check_json(value: Any, what: str, step: str) -> None:
    problem = json_problem(value)
    if problem is not None:
        raise SagaValidationError(
            f"{what} of saga step {step!r} is not JSON-serialisable ({problem}); saga "
            f"steps pass arguments through JSON: pass ids or plain data (dict, list, str, "
            f"numbers) instead"
        )


def _check_storable(
    args: list[Any], kwargs: dict[str, Any], encoded: str, step: str, limit: int
) -> None:
    """Refuse arguments the store cannot keep: they would fail every write, forever.

    ``encoded``: ``[args, kwargs]`` as JSON.
    """
    problem = unstorable([args, kwargs], encoded)
    if problem is not None:
        raise SagaValidationError(
            f"the arguments of saga step {step!r} hold {problem}; the saga store cannot "
            f"keep that: strip or encode it (e.g. base64) before starting the saga"
        )
    size = len(encoded)
    if size > limit:
        raise SagaValidationError(
            f"the arguments of saga step {step!r} are {size} bytes of JSON, over the "
            f"saga_max_result_bytes limit of {limit}; store large data elsewhere and "
            f"pass a reference to it"
        )


def _check_binding(task: Any, args: list[Any], kwargs: dict[str, Any], *, passed: bool) -> None:
    """Refuse arguments that do not fit the task's signature.

    The worker would raise ``TypeError`` at every delivery. ``passed``: a ``.s()``
    after another step also gets that step's result first.
    """
    signature = _signature(original_run(task))
    if signature is None:
        return
    given = [_PREVIOUS, *args] if passed else args
    try:
        signature.bind(*given, **kwargs)
    except TypeError as exc:
        previous = " (after the previous step's result, which .s() passes first)"
        raise SagaValidationError(
            f"the arguments of saga step {task.name!r} do not fit its signature "
            f"{task.name}{signature}: {exc}{previous if passed else ''}; fix the "
            f"arguments, or use .si(...) if the step should not get the previous result"
        ) from exc


_PREVIOUS = object()  # stands for the previous step's result when binding


@functools.lru_cache(maxsize=1024)
def _signature(run: Callable[..., Any]) -> inspect.Signature | None:
    """The signature of a task's function (None: it has none to check against)."""
    try:
        return inspect.signature(run)
    except (TypeError, ValueError):
        return None


def _flatten(steps: Sequence[Any]) -> list[Signature[Any]]:
    flat: list[Signature[Any]] = []
    for step in steps:
        if isinstance(step, _chain):
            flat.extend(_flatten(step.tasks))
        elif isinstance(step, Signature) and type(step) is Signature:
            flat.append(step)
        elif isinstance(step, Signature):
            raise SagaValidationError(
                f"{type(step).__name__} signatures are not supported as saga steps yet "
                f"(got {step!r}); give each step as task.s(...) or task.si(...)"
            )
        else:
            raise SagaValidationError(
                f"saga steps are Celery signatures such as task.s(...) or task.si(...); "
                f"got {step!r}"
            )
    return flat


def _unknown_task(app: Celery, name: str, role: str) -> SagaValidationError:
    close = difflib.get_close_matches(name, list(app.tasks.keys()), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return SagaValidationError(f"{role} {name!r} is not a task registered with this app.{hint}")


def _check_serializer(app: Celery, name: str, options: Mapping[str, Any]) -> None:
    task = app.tasks[name]
    serializer = options.get("serializer") or task.serializer or app.conf.task_serializer
    if serializer == "pickle":
        raise SagaConfigurationError(
            f"saga step {name!r} would be sent with the pickle serializer; sagas store and "
            f"pass values as JSON: set task_serializer='json' (and drop serializer='pickle' "
            f"from the task)"
        )


def _hard_limit_grace(timeout: float) -> float:
    """How long after the soft time limit the hard one kills the process."""
    return max(2.0, timeout * 0.1)


def build_plan(
    app: Celery, signatures: Sequence[Any], name: str, deadline: float | None = None
) -> SagaPlan:
    """Check the steps and describe them as a plan; raise before anything is stored."""
    if not isinstance(name, str) or not name or len(name) > NAME_LENGTH:
        raise SagaValidationError(
            f"saga name must be a non-empty string of at most "
            f"{NAME_LENGTH} characters, got {name!r}"
        )
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0
    ):
        raise SagaValidationError(f"deadline= takes seconds > 0, got {deadline!r}")
    flat = _flatten(signatures)
    limit = get_config(app).max_result_bytes
    if not flat:
        raise SagaValidationError("a saga needs at least one step")
    steps: list[dict[str, Any]] = []
    for index, sig in enumerate(flat):
        task_name = sig.task
        if not task_name or task_name not in app.tasks:
            raise _unknown_task(app, str(task_name), "saga step")
        definition = step_definition(app.tasks[task_name])
        if definition is None:
            raise SagaValidationError(
                f"task {task_name!r} is not a saga step: decorate it with "
                f"@saga_step(compensate=...) above @app.task (compensate is optional)"
            )
        compensate = definition.compensation_name
        if compensate is not None and compensate not in app.tasks:
            raise _unknown_task(app, compensate, f"compensation of saga step {task_name!r},")
        options = {k: v for k, v in sig.options.items() if k not in _TRANSIENT_OPTIONS}
        for option in _UNSUPPORTED_OPTIONS:
            if options.pop(option, None):
                raise SagaValidationError(
                    f"saga step {task_name!r} has {option}=; callbacks on saga steps are "
                    f"not supported: use @saga_step(compensate=...) for undo, and the "
                    f"saga's result or signals for what follows"
                )
        _check_serializer(app, task_name, options)
        if definition.timeout is not None:
            options.setdefault("soft_time_limit", definition.timeout)
            options.setdefault(
                "time_limit", definition.timeout + _hard_limit_grace(definition.timeout)
            )
        args = list(sig.args)
        kwargs = dict(sig.kwargs)
        try:  # encoded once: the checks below measure and look through this JSON
            encoded = json_dumps([args, kwargs])
            json_dumps(options)
        except (TypeError, ValueError):  # find which one, to say so
            for position, value in enumerate(args):
                _check_json(value, f"argument {position + 1}", task_name)
            for key, value in kwargs.items():
                _check_json(value, f"keyword argument {key!r}", task_name)
            _check_json(options, "the options", task_name)
            raise
        _check_storable(args, kwargs, encoded, task_name, limit)
        _check_binding(app.tasks[task_name], args, kwargs, passed=index > 0 and not sig.immutable)
        step = {
            "index": index,
            "stage": index,
            "task": task_name,
            "args": args,
            "kwargs": kwargs,
            "options": options,
            "immutable": bool(sig.immutable),
            "compensate": compensate,
        }
        if definition.compensate_on_timeout:  # only when set: older plans keep their hash
            step["undo_timeout"] = True
        steps.append(step)
    return SagaPlan(
        name=name, steps=tuple(steps), deadline=None if deadline is None else float(deadline)
    )
