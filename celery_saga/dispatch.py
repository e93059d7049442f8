"""The Celery messages of a saga, built in one place.

Forward steps travel as a Celery chain: each step message carries the saga header
(:data:`HEADER`: saga id, step index, step count, whether a step before it has a
compensation, the deadline), of the same size at every position in the saga. The step
task sends the next step itself once its result is committed (:func:`send_next`), so a
failed publish never looks like a failed step to Celery; on a final failure it sends
the chain of immutable ``celery_saga.compensate`` messages of the steps before it,
newest first, built from the plan its failure's write read (:func:`send_compensations`).
Messages sent by earlier versions carry that chain as ``link_error`` instead, with the
steps to undo listed in the header (``u``, or ``c``): they still run.
Everything here is rebuilt from the stored plan, so the recovery sweep and the
operator's commands send the very same messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

from celery import Celery, Signature, Task, chain
from celery.exceptions import Ignore, Reject, Retry
from celery.utils.log import get_task_logger
from celery.utils.saferepr import saferepr

from . import _observe
from .config import get_config
from .errors import SagaStoreError
from .machine import Delivery, Topology
from .store.schema import ID_LENGTH

__all__ = [
    "COMPENSATE_TASK",
    "HEADER",
    "build_chain",
    "child_saga_id",
    "compensation_chain",
    "compensation_delivery",
    "compensation_task_id",
    "guarded",
    "publish",
    "publish_stage",
    "register_internal",
    "republish",
    "resend_later",
    "retry_later",
    "revoke",
    "send_compensations",
    "send_next",
    "step_delivery",
    "step_signatures",
    "step_task_id",
    "undo_list",
]

logger = get_task_logger("celery_saga.execution")

T = TypeVar("T")

_MAX_STORE_RETRY_DELAY = 30.0

#: The message header that makes a task run as a saga step.
HEADER = "celery_saga"
#: The internal task that runs one compensation.
COMPENSATE_TASK = "celery_saga.compensate"


def register_internal(app: Celery, name: str, body: Callable[..., Any]) -> None:
    """Register one of celery_saga's internal tasks (compensation, wait, child saga).

    Bound, acknowledged after it ran, given back if its worker is lost, no result kept.
    """
    app.task(
        name=name,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        shared=False,
    )(body)


def step_task_id(saga_id: str, index: int) -> str:
    """The Celery task id of a saga's forward step (stable: the same on every publication)."""
    return f"{saga_id}:{index}"


def child_saga_id(saga_id: str, index: int) -> str:
    """The id of the child saga that step ``index`` runs: the same on every delivery.

    ``<parent id>.<step>``; for a parent id too long for that, its sha256 stands in.
    """
    child = f"{saga_id}.{index}"
    if len(child) > ID_LENGTH:
        child = f"{hashlib.sha256(saga_id.encode()).hexdigest()}.{index}"
    return child


def compensation_task_id(saga_id: str, index: int) -> str:
    """The Celery task id of the compensation of a saga's step."""
    return f"{saga_id}:{index}:compensate"


def step_delivery(header: Mapping[str, Any]) -> Delivery:
    """What a step message's saga header says, for the state machine.

    A message sent by this release names only the first of the steps its failure
    undoes (``v``: itself, when in doubt; ``b``: the newest step before it with a
    compensation): enough to tell whether there is anything to undo. The whole list
    comes from the plan that the failure's write reads (see :func:`undo_list`).
    """
    index: int = header["i"]
    parent_id, parent_step = header.get("up") or (None, None)
    undo = header.get("u")
    if undo is None and "c" in header:  # sent before the header listed them
        undo = list(range(index - 1, -1, -1)) if header["c"] else []
    elif undo is None:
        undo = [index] if header.get("v") else []
        if header.get("b") is not None:
            undo.append(header["b"])
    return Delivery(
        saga_id=header["id"],
        name=header.get("name", ""),
        index=index,
        count=header["n"],
        undo=tuple(undo),
        deadline=header.get("d"),
        started=header.get("t"),
        stage=header.get("s", index),
        grouped=bool(header.get("g")),
        member=bool(header.get("m")),
        ends=tuple(header.get("j") or ()),
        final=bool(header.get("l")),
        parent_id=parent_id,
        parent_step=parent_step,
    )


def compensation_delivery(saga_id: str, index: int, name: str, last: bool) -> Delivery:
    """What a compensation message says, for the state machine."""
    return Delivery(saga_id=saga_id, name=name, index=index, count=0, last=last)


def _compensation_route(app: Celery, compensate: str) -> dict[str, Any]:
    """Send a compensation to the queue its own task would go to."""
    queue = getattr(app.tasks[compensate], "queue", None) if compensate in app.tasks else None
    if queue is None:
        route = app.amqp.router.route({}, compensate, (), {})
        destination = route.get("queue")
        queue = getattr(destination, "name", destination)
    return {"queue": queue} if isinstance(queue, str) and queue else {}


def _compensation_signatures(
    app: Celery,
    saga_id: str,
    plan: Mapping[str, Any],
    undo: Sequence[int],
) -> list[Signature[Any]]:
    """The ``celery_saga.compensate`` messages of the given steps, in the order given.

    The last one carries ``last=True``: it settles the saga. Each is shown in Celery's
    logs, events and Flower under the compensation's own task name (``shadow``), with
    the task id ``<saga id>:<step>:compensate``.
    """
    steps: Sequence[Mapping[str, Any]] = plan["steps"]
    routes: dict[str, dict[str, Any]] = {}
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
                # what Celery's logs, events and Flower show: the user's task, the step
                shadow=compensate,
                task_id=compensation_task_id(saga_id, index),
                **routes[compensate],
            )
        )
    return signatures


def compensation_chain(
    app: Celery,
    saga_id: str,
    plan: Mapping[str, Any],
    undo: Sequence[int],
) -> Signature[Any] | None:
    """The chain of ``celery_saga.compensate`` messages of the given steps, in that order.

    None if there are none (see :func:`_compensation_signatures`).
    """
    signatures = _compensation_signatures(app, saga_id, plan, undo)
    if not signatures:
        return None
    return signatures[0] if len(signatures) == 1 else chain(*signatures, app=app)


def send_compensations(
    task: Task[Any, Any], saga_id: str, plan: Mapping[str, Any], undo: Sequence[int]
) -> None:
    """Send the compensations of ``undo``, in that order, as one chain (from a step task).

    The message :func:`compensation_chain` would send, sent as :func:`publish` sends
    a chain (the first carrying the rest), with the failed step as its parent, as
    Celery sends an errback. The step's own ``link_error`` (a message of an earlier
    version) is taken off its request: Celery does not send that chain again.
    """
    request = task.request
    request.errbacks = None
    first, *rest = _compensation_signatures(task.app, saga_id, plan, undo)
    first.apply_async(
        chain=rest[::-1] or None,
        parent_id=request.id,
        root_id=request.root_id or request.id,
    )


def undo_list(steps: Sequence[Mapping[str, Any]], index: int, *, itself: bool = True) -> list[int]:
    """The steps a step's final failure undoes, newest first (itself first when in doubt).

    ``itself=False``: only the steps before it.
    """
    undo = [s["index"] for s in reversed(steps[:index]) if s["compensate"]]
    if itself and steps[index].get("undo_timeout"):  # in doubt if it times out: undo it first
        undo.insert(0, index)
    return undo


def step_signatures(
    app: Celery,
    saga_id: str,
    plan: Mapping[str, Any],
    start: int = 0,
    created: datetime | None = None,
    previous: Sequence[Any] = (),
    topology: Topology | None = None,
) -> list[Signature[Any]]:
    """The messages of the steps that travel as one chain from ``start``, with errbacks.

    In a saga without groups that is every step from ``start`` on; in a group, the rest
    of ``start``'s branch; else the steps up to the next group
    (:meth:`~celery_saga.machine.Topology.run_from`). ``created`` (naive UTC, when the
    saga was stored) lets workers report durations. ``previous`` is what a mutable
    first step gets as its first argument, ``(result,)``, as Celery's chain would have
    passed it.

    No step carries errbacks: in a saga without groups the step task sends the
    compensations after its failure is recorded; in a saga with groups a failure
    settles the saga from the store, which waits for the members still running before
    it undoes anything.
    """
    started = None if created is None else created.replace(tzinfo=UTC).timestamp()
    steps: list[Mapping[str, Any]] = plan["steps"]
    topology = Topology.of(plan) if topology is None else topology
    grouped = topology.grouped
    count = len(steps)
    signatures: list[Signature[Any]] = []
    redacting = get_config(app).redact is not None
    deadline = started + plan["deadline"] if started and plan.get("deadline") else None
    parent = plan.get("parent")  # a child saga: its end lets the parent go on
    for index in topology.run_from(start):
        step = steps[index]
        options = dict(step["options"])
        options["task_id"] = step_task_id(saga_id, index)
        # The saga store keeps the step's result: no copy in Celery's result backend.
        options["ignore_result"] = True
        header: dict[str, Any] = {
            "id": saga_id,
            "i": index,
            "n": count,
            "s": step["stage"],
            "name": plan["name"],
            "t": started,
        }
        if not grouped:  # the first of the steps its failure undoes (see step_delivery)
            before = undo_list(steps, index, itself=False)
            if before:
                header["b"] = before[0]
            if step.get("undo_timeout"):
                header["v"] = 1
        if deadline is not None:
            header["d"] = deadline
        if "wait" in step:  # what the wait waits for
            header["w"] = step["wait"]
        if parent is not None:
            header["up"] = [parent["id"], parent["step"]]
        if grouped:
            header["g"] = 1
            if topology.stage_of(index).group:
                header["m"] = 1
            if topology.joins(index):  # the join waits for these: the stage's branch ends
                header["j"] = list(topology.stage_of(index).ends)
                header["l"] = topology.is_final(index)
        options["headers"] = {**(options.get("headers") or {}), HEADER: header}
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
    topology: Topology | None = None,
) -> None:
    """Send the steps that travel as one chain from ``start`` (see :func:`step_signatures`).

    The same message ``build_chain(...).apply_async()`` sends (the first step, carrying
    the rest in its ``chain`` field), without the chain's pass that clones and freezes
    every signature: these were all made just now, with their task ids set.
    """
    first, *rest = step_signatures(app, saga_id, plan, start, created, previous, topology)
    first.apply_async(chain=rest[::-1] or None)


def publish_stage(
    app: Celery,
    saga_id: str,
    plan: Mapping[str, Any],
    stage: int,
    created: datetime | None = None,
    previous: Sequence[Any] = (),
) -> None:
    """Send a stage: each branch of a group as a chain of its own, all at once.

    ``stage`` is the stage's position in the plan; ``previous`` what its mutable first
    steps get (``(results,)`` after a group: the list of its members' results).
    """
    topology = Topology.of(plan)
    for branch in topology.stages[stage].branches:
        publish(app, saga_id, plan, branch[0], created, previous, topology)


def revoke(app: Celery, saga_id: str, indices: Sequence[int]) -> None:
    """Ask the workers running these steps to stop them (best effort).

    Sent as a soft time limit (``SIGUSR1``): the step sees ``SoftTimeLimitExceeded``,
    so it ends as a failure its shell records, and the saga goes on from the store.
    """
    ids = [step_task_id(saga_id, index) for index in indices]
    try:
        app.control.revoke(ids, terminate=True, signal="SIGUSR1")
    except Exception:  # a broker without broadcast, or down: the members finish instead
        logger.warning("saga %s: could not revoke steps %s", saga_id, list(indices), exc_info=True)


def send_next(task: Task[Any, Any], result: Any) -> None:
    """Send the rest of the running step's chain, ``result`` first in line, as Celery would.

    Takes the chain off the request, so Celery sends nothing after the task returns:
    a publish that fails raises here, to the step task, and never reaches Celery as
    a failure of the step (which would fire its errbacks).
    """
    request = task.request
    chained: list[Any] = list(request.chain or ())
    request.chain = None
    if not chained:
        return
    following = Signature(chained.pop(), app=task.app)
    following.apply_async(
        (result,),
        chain=chained or None,
        parent_id=request.id,
        root_id=request.root_id or request.id,
    )


def republish(task: Task[Any, Any], countdown: float, **header: Any) -> Retry:
    """Send the running message again in ``countdown`` s, its saga header updated.

    Unlike ``task.retry`` it leaves Celery's ``request.retries`` alone, so waiting for
    the store never spends the task's ``max_retries`` or the step's retry policy.
    Returns the ``Retry`` to raise (Celery then records the message as retried).
    """
    request = task.request
    headers = dict(request.headers or {})
    saga = dict(request.get(HEADER) or headers.get(HEADER) or {})
    saga.update(header)
    headers[HEADER] = saga
    signature = task.signature_from_request(
        request, countdown=countdown, retries=request.retries, headers=headers
    )
    signature.apply_async()
    return Retry(when=datetime.now(UTC) + timedelta(seconds=countdown), sig=signature)


def resend_later(task: Task[Any, Any], exc: SagaStoreError, **pending: Any) -> NoReturn:
    """The store is down: send this message again later (``pending``: what to record then).

    Raises the ``Retry`` (or, given up, ``Ignore``) for the task to end with.

    Never through ``task.retry``: that would spend the task's ``max_retries`` and make
    a step's retry policy end early once the store is back. After
    ``saga_store_max_retries`` the message is given up: the saga is the sweep's then.
    """
    header: Mapping[str, Any] = task.request.get(HEADER) or {}
    tries = int(header.get("r", 0))
    if tries >= get_config(task.app).store_max_retries:
        logger.error(
            "%s; gave up sending %s again after %d tries: the recovery sweep "
            "drives the saga on once the store is back",
            exc,
            task.name,
            tries,
        )
        raise Ignore() from exc
    delay = min(2.0**tries, _MAX_STORE_RETRY_DELAY)
    logger.warning("%s; retrying %s in %.0f s", exc, task.name, delay)
    try:
        retry = republish(task, delay, r=tries + 1, **pending)
    except Exception:
        _unsent(task)
    raise retry from exc


def guarded(task: Task[Any, Any], write: Callable[[], T], **pending: Any) -> T:
    """``write()``; if the store is down, send the running message again later instead.

    ``pending``: what the message still has to record then (see :func:`resend_later`).
    """
    try:
        return write()
    except SagaStoreError as exc:
        resend_later(task, exc, **pending)


def retry_later(
    task: Task[Any, Any], exc: Exception, countdown: float, max_retries: int
) -> NoReturn:
    """Celery's ``task.retry``, except that a retry the broker refuses is no failure.

    Celery turns a retry it cannot publish into ``Reject(requeue=False)``, and marks the
    task failed (its errbacks fire). The attempt is recorded in the store already: drop
    the message instead; the recovery sweep sends it again.
    """
    try:
        raise task.retry(exc=exc, countdown=countdown, max_retries=max_retries)
    except Reject:  # what task.retry raises when it could not publish the retry
        _unsent(task)


def _unsent(task: Task[Any, Any]) -> NoReturn:
    logger.exception(
        "%s[%s] could not be sent again (is the broker down?); the recovery sweep sends it",
        task.name,
        task.request.id,
    )
    raise Ignore() from None
