"""``saga(...)``: turn Celery signatures into a stored plan and a chain of step messages.

The plan (every step's task, arguments, options and compensation) is stored with the
saga, so anything that needs to drive the saga later (a resume, a recovery sweep)
rebuilds the same messages from the store with :func:`build_chain`.
"""

from __future__ import annotations

import difflib
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Signature, chain
from celery.app import app_or_default
from celery.canvas import _chain
from celery.utils.saferepr import saferepr
from kombu.utils.json import dumps as json_dumps

from . import _observe, signals
from ._runtime import get_store
from .compensation import COMPENSATE_TASK
from .config import get_config
from .errors import SagaConfigurationError, SagaConflictError, SagaValidationError
from .execution import HEADER
from .result import SagaResult
from .signals import SagaEvent
from .status import SagaStatus
from .step import step_definition
from .store import utcnow
from .store.schema import ID_LENGTH, NAME_LENGTH

__all__ = ["Saga", "SagaPlan", "build_chain", "publish", "saga", "step_signatures", "step_task_id"]

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


def step_task_id(saga_id: str, index: int) -> str:
    """The Celery task id of a saga's forward step (stable: the same on every publication)."""
    return f"{saga_id}:{index}"


def _json_error(value: Any) -> str | None:
    try:
        json_dumps(value)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _check_json(value: Any, what: str, step: str) -> None:
    problem = _json_error(value)
    if problem is not None:
        raise SagaValidationError(
            f"{what} of saga step {step!r} is not JSON-serialisable ({problem}); saga "
            f"steps pass arguments through JSON: pass ids or plain data (dict, list, str, "
            f"numbers) instead"
        )


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
        if _json_error([args, kwargs, options]) is not None:  # find which one, to say so
            for position, value in enumerate(args):
                _check_json(value, f"argument {position + 1}", task_name)
            for key, value in kwargs.items():
                _check_json(value, f"keyword argument {key!r}", task_name)
            _check_json(options, "the options", task_name)
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


def _compensation_route(app: Celery, compensate: str) -> dict[str, Any]:
    """Send a compensation to the queue its own task would go to."""
    queue = getattr(app.tasks[compensate], "queue", None) if compensate in app.tasks else None
    if queue is None:
        route = app.amqp.router.route({}, compensate, (), {})
        destination = route.get("queue")
        queue = getattr(destination, "name", destination)
    return {"queue": queue} if isinstance(queue, str) and queue else {}


def compensation_chain(
    app: Celery,
    saga_id: str,
    plan: Mapping[str, Any],
    undo: Sequence[int],
    routes: dict[str, dict[str, Any]] | None = None,
) -> Signature[Any] | None:
    """The ``celery_saga.compensate`` messages of the given steps, in the order given.

    The last one carries ``last=True``: it ends the saga. ``routes`` caches each
    compensation's queue across calls.
    """
    steps: Sequence[Mapping[str, Any]] = plan["steps"]
    routes = {} if routes is None else routes
    signatures = []
    for position, index in enumerate(undo):
        compensate = steps[index]["compensate"]
        if compensate not in routes:
            routes[compensate] = _compensation_route(app, compensate)
        signatures.append(
            app.signature(
                COMPENSATE_TASK,
                args=(saga_id, index),
                kwargs={"last": position == len(undo) - 1, "name": plan["name"]},
                immutable=True,
                **routes[compensate],
            )
        )
    if not signatures:
        return None
    return signatures[0] if len(signatures) == 1 else chain(*signatures, app=app)


def step_signatures(
    app: Celery,
    saga_id: str,
    plan: Mapping[str, Any],
    start: int = 0,
    created: datetime | None = None,
    previous: Sequence[Any] = (),
) -> list[Signature[Any]]:
    """The messages of a stored plan's steps from ``start`` on, each with its errbacks.

    ``created`` (naive UTC, when the saga was stored) lets workers report durations.
    ``previous`` is ``(result,)`` of the step before ``start``: what a mutable first
    step gets as its first argument, as Celery's chain would have passed it.
    """
    started = None if created is None else created.replace(tzinfo=UTC).timestamp()
    steps: list[Mapping[str, Any]] = plan["steps"]
    count = len(steps)
    routes: dict[str, dict[str, Any]] = {}
    signatures: list[Signature[Any]] = []
    redacting = get_config(app).redact is not None
    for step in steps[start:]:
        index = step["index"]
        undo = [s["index"] for s in reversed(steps[:index]) if s["compensate"]]
        if step.get("undo_timeout"):  # in doubt if it times out: undo it first then
            undo.insert(0, index)
        errback = compensation_chain(app, saga_id, plan, undo, routes)
        options = dict(step["options"])
        options["task_id"] = step_task_id(saga_id, index)
        # The saga store keeps the step's result: no copy in Celery's result backend.
        options["ignore_result"] = True
        options["headers"] = {
            **(options.get("headers") or {}),
            HEADER: {
                "id": saga_id,
                "i": index,
                "n": count,
                "c": errback is not None,
                "s": step["stage"],
                "name": plan["name"],
                "t": started,
                "d": started + plan["deadline"] if started and plan.get("deadline") else None,
            },
        }
        if errback is not None:
            options["link_error"] = [errback]
        if redacting:  # what Celery's logs, events and Flower show of the arguments
            options["argsrepr"] = saferepr(
                _observe.redact(app, step["task"], "args", tuple(step["args"]))
            )
            options["kwargsrepr"] = saferepr(
                _observe.redact(app, step["task"], "kwargs", dict(step["kwargs"]))
            )
        args = tuple(step["args"])
        if index == start and not step["immutable"]:
            args = (*previous, *args)
        signatures.append(
            app.signature(
                step["task"],
                args=args,
                kwargs=dict(step["kwargs"]),
                options=options,
                immutable=step["immutable"],
            )
        )
    return signatures


def build_chain(
    app: Celery,
    saga_id: str,
    plan: Mapping[str, Any],
    start: int = 0,
    created: datetime | None = None,
) -> Signature[Any]:
    """The Celery chain of a stored plan's steps from ``start`` on."""
    signatures = step_signatures(app, saga_id, plan, start, created)
    return signatures[0] if len(signatures) == 1 else chain(*signatures, app=app)


def publish(
    app: Celery,
    saga_id: str,
    plan: Mapping[str, Any],
    start: int = 0,
    created: datetime | None = None,
    previous: Sequence[Any] = (),
) -> None:
    """Send a stored plan's steps from ``start`` on, as one Celery chain.

    The same message ``build_chain(...).apply_async()`` sends (the first step, carrying
    the rest in its ``chain`` field), without the chain's pass that clones and freezes
    every signature: these were all made just now, with their task ids set.
    """
    first, *rest = step_signatures(app, saga_id, plan, start, created, previous)
    first.apply_async(chain=rest[::-1] or None)


class Saga:
    """A saga ready to start: what :func:`saga` returns.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        steps: Sequence[Any],
        name: str,
        app: Celery | None = None,
        deadline: float | None = None,
    ) -> None:
        self.steps = tuple(steps)
        self.name = name
        self._app = app
        self.deadline = deadline

    @property
    def app(self) -> Celery:
        """The Celery app: the one given, else the first step's, else the current app."""
        if self._app is not None:
            return self._app
        for step in self.steps:
            app = getattr(step, "_app", None)
            if app is not None:
                return app  # type: ignore[no-any-return]
        return app_or_default(None)

    def plan(self) -> SagaPlan:
        """Check the steps and return the plan that :meth:`apply_async` would store."""
        return build_plan(self.app, self.steps, self.name, self.deadline)

    def apply_async(self, saga_id: str | None = None) -> SagaResult:
        """Store the saga and send its first step.

        Idempotent on ``saga_id``: starting an id that exists with the same plan returns
        the existing saga without sending anything; with a different plan it raises
        :class:`~celery_saga.SagaConflictError`. Bad input raises before anything is
        stored or sent.
        """
        app = self.app
        if COMPENSATE_TASK not in app.tasks:
            raise SagaConfigurationError(
                "celery_saga is not installed on this app: call celery_saga.install(app) "
                "where the app is created"
            )
        if app.conf.task_always_eager:
            raise SagaConfigurationError(
                "sagas need a real worker: task_always_eager would run every step inline "
                "in the caller; in tests use a worker (see celery_saga's testing guide)"
            )
        plan = self.plan()
        if saga_id is None:
            saga_id = str(uuid.uuid4())
        elif not isinstance(saga_id, str) or not saga_id or len(saga_id) > ID_LENGTH:
            raise SagaValidationError(
                f"saga_id must be a non-empty string of at most {ID_LENGTH} characters, "
                f"got {saga_id!r}"
            )
        stored = plan.as_json()
        now = utcnow()
        saga_row = {
            "id": saga_id,
            "name": plan.name,
            "status": SagaStatus.RUNNING,
            "plan": stored,
            "plan_hash": plan.hash,
            "step_count": len(plan.steps),
            "created_at": now,
            "updated_at": now,
        }
        store = get_store(app)
        existing = store.create_saga(saga_row)
        if existing is not None:
            if existing.plan_hash != plan.hash:
                raise SagaConflictError(
                    saga_id,
                    f"saga {saga_id!r} exists already with a different plan "
                    f"({existing.name!r}, {existing.step_count} steps, {existing.status}); "
                    f"use a new saga_id for a different operation",
                )
            return SagaResult(saga_id, app=app)
        try:
            with _observe.publishing(app, saga_id, plan.name):
                publish(app, saga_id, stored, created=now)
        except BaseException:
            store.delete_saga(saga_id)  # nothing half-stored: the saga was never sent
            raise
        signals.saga_started.send(
            sender=plan.name, event=SagaEvent(saga_id, plan.name, SagaStatus.RUNNING)
        )
        return SagaResult(saga_id, app=app)


def saga(
    *steps: Any, name: str = "saga", app: Celery | None = None, deadline: float | None = None
) -> Saga:
    """Describe a saga: steps run in order; on a step's failure the ones before are undone.

    Args:
        steps: Celery signatures of ``@saga_step`` tasks (``task.s(...)`` passes the
            previous step's result as first argument, ``task.si(...)`` does not);
            a ``chain`` of them is taken step by step.
        name: the saga's name, shown in the store, the CLI and traces.
        app: the Celery app (default: the steps' app).
        deadline: seconds from the start after which no new step starts: the saga is
            then compensated (a step running at that moment finishes first).

    .. versionadded:: 0.1
    """
    return Saga(steps, name=name, app=app, deadline=deadline)
