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
from datetime import datetime
from typing import Any

from celery import Celery, Signature
from celery.canvas import _chain, chord, group
from kombu.utils.json import dumps as json_dumps

from ._values import json_problem, unstorable
from .config import get_config
from .definition import original_run, step_definition
from .errors import SagaConfigurationError, SagaValidationError
from .status import SagaStatus
from .store.schema import NAME_LENGTH, VERSION_LENGTH
from .waits import WAIT_TASK, Wait

__all__ = [
    "CHILD_TASK",
    "PLAN_VERSION",
    "SagaPlan",
    "SagaSpec",
    "build_plan",
    "plan_hash",
    "saga_row",
]

#: The stored plan's form: 2 added parallel groups (``branch`` on their members),
#: waits (``wait`` on their steps) and child sagas (``child``: the child's plan).
PLAN_VERSION = 2
#: The internal task a child saga stage travels as (and the compensation that undoes
#: a completed child as a unit).
CHILD_TASK = "celery_saga.child"
#: Signature options that belong to one publication, not to the plan.
_TRANSIENT_OPTIONS = frozenset(
    {"task_id", "parent_id", "root_id", "group_id", "group_index", "chord", "chain", "reply_to"}
)
_UNSUPPORTED_OPTIONS = ("link", "link_error")


class SagaSpec:
    """What ``saga(...)`` describes: its steps and options (:class:`~celery_saga.Saga`).

    Given as a stage of another saga, it runs as a child saga.
    """

    steps: tuple[Any, ...]
    name: str
    deadline: float | None
    fail_fast: bool
    version: str | None


@dataclass(frozen=True)
class SagaPlan:
    """The checked, JSON-ready description of a saga, as stored in ``celery_sagas.plan``.

    .. versionadded:: 0.1
    """

    name: str
    steps: tuple[Mapping[str, Any], ...]
    deadline: float | None = None
    fail_fast: bool = False
    version: str | None = None  #: ``saga(..., version=)``: kept with the plan

    def as_json(self) -> dict[str, Any]:
        """The stored form."""
        stored = {
            "version": 1,  # a saga without groups keeps the form (and hash) it always had
            "name": self.name,
            "steps": [dict(s) for s in self.steps],
        }
        if self.deadline is not None:  # only when set: older plans keep their hash
            stored["deadline"] = self.deadline
        if self.version is not None:
            stored["saga_version"] = self.version
        if any(key in step for step in self.steps for key in ("branch", "wait", "child")):
            stored["version"] = PLAN_VERSION
            if self.fail_fast:
                stored["fail_fast"] = True
        return stored

    @property
    def hash(self) -> str:
        """sha256 of the plan: the same saga_id with another hash is a conflict."""
        return plan_hash(self.as_json())


def plan_hash(stored: Mapping[str, Any]) -> str:
    """sha256 of a stored plan."""
    encoded = json_dumps(stored, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


def saga_row(
    saga_id: str, stored: Mapping[str, Any], now: datetime, **links: Any
) -> dict[str, Any]:
    """The row a new saga is stored as, ``RUNNING`` (``links``: a child's parent)."""
    return {
        "id": saga_id,
        "name": stored["name"],
        "status": SagaStatus.RUNNING,
        "plan": stored,
        "plan_hash": plan_hash(stored),
        "step_count": len(stored["steps"]),
        "version": stored.get("saga_version"),
        "created_at": now,
        "updated_at": now,
        **links,
    }


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


def _signature_step(step: Any) -> Signature[Any]:
    """A single step: a plain signature (anything else is refused with what to write)."""
    if isinstance(step, Signature) and type(step) is Signature:
        return step
    if isinstance(step, Signature):
        raise SagaValidationError(
            f"{type(step).__name__} signatures are not supported as saga steps here "
            f"(got {step!r}); give each step as task.s(...) or task.si(...), a chain of "
            f"them, or a group(...) of those"
        )
    raise SagaValidationError(
        f"saga steps are Celery signatures such as task.s(...) or task.si(...); got {step!r}"
    )


def _branch(member: Any) -> list[Signature[Any]]:
    """A group member: one step, or a chain of steps (a branch)."""
    if isinstance(member, _chain):
        steps: list[Signature[Any]] = []
        for step in member.tasks:
            steps.extend(_branch(step))
        return steps
    if isinstance(member, Wait | SagaSpec):
        raise SagaValidationError(
            "wait_for(), sleep() and child sagas are stages of their own, not members of a group"
        )
    if isinstance(member, group | chord):
        raise SagaValidationError(
            f"a group inside a group member is not supported (got {member!r}); make it a "
            f"stage of its own: saga(..., group(...), group(...), ...)"
        )
    return [_signature_step(member)]


def _group(members: group) -> _Stage:
    branches = [_branch(member) for member in members.tasks]
    if not branches:
        raise SagaValidationError("a group in a saga needs at least one member")
    return branches


#: A stage as given: one step, the branches of a group, a wait, or a child saga.
_Stage = Signature[Any] | list[list[Signature[Any]]] | Wait | SagaSpec


def _stages(steps: Sequence[Any]) -> list[_Stage]:
    """The saga's stages: chains taken step by step, a chord as its group then its body."""
    stages: list[_Stage] = []
    for step in steps:
        if isinstance(step, _chain):
            stages.extend(_stages(step.tasks))
        elif isinstance(step, chord):  # what chain(..., group(...), next) becomes
            stages.append(_group(group(step.tasks)))
            stages.extend(_stages([step.body]))
        elif isinstance(step, group):
            stages.append(_group(step))
        elif isinstance(step, Wait | SagaSpec):
            stages.append(step)
        else:
            stages.append(_signature_step(step))
    return stages


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


def _step(
    app: Celery, sig: Signature[Any], index: int, stage: int, limit: int, *, passed: bool
) -> dict[str, Any]:
    """One step as the plan stores it (``passed``: a ``.s()`` here gets a result first)."""
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
        options.setdefault("time_limit", definition.timeout + _hard_limit_grace(definition.timeout))
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
    _check_binding(app.tasks[task_name], args, kwargs, passed=passed and not sig.immutable)
    step = {
        "index": index,
        "stage": stage,
        "task": task_name,
        "args": args,
        "kwargs": kwargs,
        "options": options,
        "immutable": bool(sig.immutable),
        "compensate": compensate,
    }
    if definition.compensate_on_timeout:  # only when set: older plans keep their hash
        step["undo_timeout"] = True
    return step


def _wait_step(wait: Wait, index: int, stage: int) -> dict[str, Any]:
    """A wait or sleep as the plan stores it: a step of the internal wait task."""
    return {
        "index": index,
        "stage": stage,
        "task": WAIT_TASK,
        "args": [],
        "kwargs": {},
        "options": {},
        "immutable": wait.signal is not None,  # a sleep passes the result before it on
        "compensate": None,
        "wait": wait.as_plan(),
    }


def _child_step(plan: SagaPlan, index: int, stage: int) -> dict[str, Any]:
    """A child saga as its parent's plan stores it: a step of the internal child task.

    The child's first ``.s()`` step gets the result before it; a completed child is
    undone as a unit (its own compensations, in reverse) when the parent compensates.
    """
    return {
        "index": index,
        "stage": stage,
        "task": CHILD_TASK,
        "args": [],
        "kwargs": {},
        "options": {},
        "immutable": False,
        "compensate": CHILD_TASK,
        "child": plan.as_json(),
    }


def build_plan(
    app: Celery,
    signatures: Sequence[Any],
    name: str,
    deadline: float | None = None,
    fail_fast: bool = False,
    version: str | None = None,
    *,
    fed: bool = False,
) -> SagaPlan:
    """Check the steps and describe them as a plan; raise before anything is stored.

    ``fed``: the saga is a child saga after another stage: its first ``.s()`` step gets
    that stage's result.
    """
    if not isinstance(name, str) or not name or len(name) > NAME_LENGTH:
        raise SagaValidationError(
            f"saga name must be a non-empty string of at most "
            f"{NAME_LENGTH} characters, got {name!r}"
        )
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0
    ):
        raise SagaValidationError(f"deadline= takes seconds > 0, got {deadline!r}")
    if version is not None and (
        not isinstance(version, str) or not version or len(version) > VERSION_LENGTH
    ):
        raise SagaValidationError(
            f"version= takes a string of 1 to {VERSION_LENGTH} characters, got {version!r}"
        )
    if not isinstance(fail_fast, bool):
        raise SagaValidationError(f"fail_fast= takes True or False, got {fail_fast!r}")
    stages = _stages(signatures)
    limit = get_config(app).max_result_bytes
    if not stages:
        raise SagaValidationError("a saga needs at least one step")
    steps: list[dict[str, Any]] = []
    for number, stage in enumerate(stages):
        if isinstance(stage, Wait):
            steps.append(_wait_step(stage, len(steps), number))
            continue
        if isinstance(stage, SagaSpec):
            child = build_plan(
                app, stage.steps, stage.name, stage.deadline, stage.fail_fast, stage.version,
                fed=number > 0 or fed,
            )  # fmt: skip
            steps.append(_child_step(child, len(steps), number))
            continue
        if isinstance(stage, Signature):
            passed = number > 0 or fed
            steps.append(_step(app, stage, len(steps), number, limit, passed=passed))
            continue
        for branch_number, branch in enumerate(stage):
            for position, sig in enumerate(branch):
                passed = number > 0 or position > 0 or fed
                step = _step(app, sig, len(steps), number, limit, passed=passed)
                step["branch"] = branch_number
                steps.append(step)
    return SagaPlan(
        name=name,
        steps=tuple(steps),
        deadline=None if deadline is None else float(deadline),
        fail_fast=fail_fast,
        version=version,
    )
