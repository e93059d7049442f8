"""Carry out the state machine's moves on a whole stored saga.

Shared by the shells that decide from the whole saga: the step and compensation tasks
when they hand over (a halted claim, the last compensation of a chain), the operator's
commands and the recovery sweep. Reads the saga, asks :func:`celery_saga.machine.decide`,
commits the transition and sends the messages; nothing here decides anything itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.utils.log import get_task_logger

from . import signals
from ._runtime import get_store
from .config import get_config
from .dispatch import child_saga_id, compensation_chain, publish, revoke
from .errors import SagaStoreError
from .machine import (
    CANCELLED,
    IN_DOUBT,
    WAIT_TIMED_OUT,
    Cancel,
    CancelChild,
    Child,
    EndCompensation,
    Ended,
    KeepSignal,
    MarkInDoubt,
    Move,
    QueueCompensations,
    Reconcile,
    RecordChild,
    Reopen,
    ReopenChild,
    ResolveWait,
    Revoke,
    SagaState,
    SendCompensations,
    SendSteps,
    Settle,
    Stop,
    TakeOver,
    Topology,
    UndoAsUnit,
    decide,
)
from .records import SagaRecord, StepRecord
from .signals import SagaEvent, StepEvent
from .status import SagaStatus, StepStatus
from .store import SagaStore
from .waits import WAIT_TASK

__all__ = ["carry_out", "end", "load", "park", "settle", "state_of", "undo_child"]

logger = get_task_logger("celery_saga.recovery")


def state_of(
    store: SagaStore, saga: SagaRecord, steps: Sequence[StepRecord] | None = None
) -> SagaState:
    """The machine's view of a stored saga (reads its steps unless given)."""
    if steps is None:
        steps = store.get_steps(saga.id, plan=saga.plan)
    topology = Topology.of(saga.plan)
    children: dict[int, Child] = {}
    if topology.children and saga.status in (SagaStatus.WAITING, SagaStatus.COMPENSATING):
        children = _children(store, saga, steps)
    return SagaState(
        saga_id=saga.id,
        name=saga.name,
        status=saga.status,
        steps=tuple(steps),
        created_at=saga.created_at,
        updated_at=saga.updated_at,
        deadline=saga.plan.get("deadline"),
        error=saga.error,
        failed_step=saga.failed_step,
        topology=topology,
        children=children,
    )


def _children(store: SagaStore, saga: SagaRecord, steps: Sequence[StepRecord]) -> dict[int, Child]:
    """The saga's child sagas, by step; a completed one's result where a step awaits it."""
    awaiting = {s.index for s in steps if s.status in (StepStatus.WAITING, StepStatus.PENDING)}
    children: dict[int, Child] = {}
    for child in store.child_sagas(saga.id):
        if child.parent_step is None:
            continue
        output = None
        if child.status is SagaStatus.COMPLETED and child.parent_step in awaiting:
            results = {s.index: s.result for s in store.get_steps(child.id, plan=child.plan)}
            output = Topology.of(child.plan).output(results)
        children[child.parent_step] = Child(child.id, child.name, child.status, output, child.error)
    return children


def load(store: SagaStore, saga_id: str) -> tuple[SagaRecord, SagaState] | None:
    """The saga's row and the machine's view of it; None if the store does not know it."""
    loaded = store.load_saga(saga_id)
    if loaded is None:
        return None
    saga, steps = loaded
    return saga, state_of(store, saga, steps)


def _now() -> datetime:
    return datetime.now(UTC)


def _commit(app: Celery, saga: SagaRecord, move: Move, force: bool) -> bool:
    """Commit the move's transition; False if the saga had moved on (skip the messages)."""
    store = get_store(app)
    transition = move.transition
    if transition is None:
        return True
    if isinstance(transition, Stop):
        return store.cancel_saga(saga.id, transition.error)
    if isinstance(transition, TakeOver):
        store.expire_leases(saga.id)
        return True
    if isinstance(transition, MarkInDoubt):
        error = {
            "type": IN_DOUBT,
            "message": "its worker was lost while the saga compensated: it may have "
            "taken effect, so it is compensated if it has a compensation",
            "traceback": "",
        }
        store.mark_in_doubt(saga.id, transition.indices, error, force=force)
        return True
    if isinstance(transition, RecordChild):
        return store.record_child(
            saga.id,
            transition.index,
            transition.step_status,
            result=transition.result,
            error=transition.error,
        )
    if isinstance(transition, ResolveWait):
        return store.resolve_wait(
            saga.id,
            transition.index,
            step_status=transition.step_status,
            saga_status=transition.saga_status,
            result=transition.result,
            error=transition.error,
        )
    if isinstance(transition, KeepSignal):
        stage = Topology.of(saga.plan).stage_of(transition.index).number
        return store.keep_signal(
            saga.id, transition.index, transition.payload, stage=stage, task=WAIT_TASK
        )
    if isinstance(transition, QueueCompensations):
        stall = get_config(app).recovery_stall
        return store.queue_compensations(saga.id, transition.indices, stall) > 0
    if isinstance(transition, EndCompensation):
        return store.finish_saga_compensation(saga.id)  # False: ended elsewhere
    if isinstance(transition, Reopen):
        return store.reopen_failed_compensations(saga.id) is not None
    if isinstance(transition, ReopenChild):
        return store.reopen_child(saga.id, transition.error)
    raise TypeError(f"not a transition of a whole saga: {transition!r}")


def carry_out(
    app: Celery,
    saga: SagaRecord,
    move: Move,
    *,
    steps: Sequence[StepRecord] | None = None,
    force: bool = False,
) -> bool:
    """Commit ``move``'s transition, then send its messages. False: the saga moved on.

    ``steps``: the saga's steps the move was decided from (else read when needed).
    """
    if not _commit(app, saga, move, force):
        return False
    transition = move.transition
    error, failed = saga.error, saga.failed_step
    if isinstance(transition, ResolveWait) and transition.error is not None:
        error, failed = dict(transition.error), transition.index
        if error.get("type") == WAIT_TIMED_OUT:
            signals.wait_timed_out.send(
                sender=saga.name,
                event=StepEvent(saga.id, saga.name, transition.index, WAIT_TASK, error=error),
            )
    if saga.status is SagaStatus.WAITING and isinstance(transition, ResolveWait | Stop):
        _wait_ended(saga, move, steps)
    shape = Topology.of(saga.plan) if any(isinstance(m, SendSteps) for m in move.messages) else None
    for message in move.messages:
        if isinstance(message, SendSteps):
            assert shape is not None
            start = message.start
            feeds = shape.feeds(start)
            previous: tuple[Any, ...] = ()
            if message.previous is not None:
                previous = message.previous
            elif feeds is None:  # the first stage: a child saga's gets its parent's input
                previous = tuple(saga.plan.get("input") or ())
            else:
                if steps is None:
                    steps = get_store(app).get_steps(saga.id, plan=saga.plan)
                results = {step.index: step.result for step in steps}
                fed = [results[i] for i in feeds] if isinstance(feeds, tuple) else results[feeds]
                previous = (fed,)
            publish(app, saga.id, saga.plan, start, saga.created_at, previous, topology=shape)
        elif isinstance(message, Revoke):
            revoke(app, saga.id, message.indices)
        elif isinstance(message, SendCompensations):
            chain = compensation_chain(app, saga.id, saga.plan, message.indices)
            if chain is not None:
                chain.apply_async()
        elif isinstance(message, CancelChild):
            _cancel_child(app, saga, message.index)
        elif isinstance(message, Reconcile):
            settle(app, saga.id)
        elif isinstance(message, Ended):
            duration = (_now() - saga.created_at).total_seconds()
            event = SagaEvent(saga.id, saga.name, message.status, duration, error, failed,
                              saga.parent_id, saga.parent_step)  # fmt: skip
            end(app, event)
        else:
            raise TypeError(f"not a message of a whole saga: {message!r}")
    return True


def end(app: Celery, event: SagaEvent) -> None:
    """Say that a saga ended; a child saga's parent goes on from it."""
    signals.send_saga_end(event)
    if event.parent_id is None:
        return
    signals.child_ended.send(sender=event.saga_name, event=event)
    try:
        settle(app, event.parent_id)
    except SagaStoreError as exc:  # the sweep finds the parent of an ended child
        logger.warning("saga %s ended; its parent %s goes on later: %s", event.saga_id,
                       event.parent_id, exc)  # fmt: skip


def _cancel_child(app: Celery, parent: SagaRecord, index: int) -> None:
    """Cancel the running child saga of ``parent``'s step ``index``."""
    loaded = load(get_store(app), child_saga_id(parent.id, index))
    if loaded is None:
        return
    child, state = loaded
    why = (parent.error or {}).get("message") or "stopped"
    error = {"type": CANCELLED, "message": f"its parent saga {parent.id!r} stopped: {why}",
             "traceback": ""}  # fmt: skip
    carry_out(app, child, decide(state, Cancel(error)), steps=state.steps)


def undo_child(app: Celery, saga_id: str, index: int) -> None:
    """Undo the child saga of step ``index`` as a unit: its own compensations, in reverse.

    The compensation of a child saga stage (claimed by the caller). The parent goes on
    when the child has ended (:func:`end`), or now if it had already.
    """
    loaded = load(get_store(app), child_saga_id(saga_id, index))
    if loaded is not None:  # (not in the store: the parent's settle says so)
        child, state = loaded
        error = {"type": CANCELLED, "message": f"its parent saga {saga_id!r} compensates",
                 "traceback": ""}  # fmt: skip
        carry_out(app, child, decide(state, UndoAsUnit(error)), steps=state.steps)
    settle(app, saga_id)


def _wait_ended(saga: SagaRecord, move: Move, steps: Sequence[StepRecord] | None) -> None:
    """Say that the saga no longer waits, and how long it did."""
    waiting = next((s for s in steps or () if s.status is StepStatus.WAITING), None)
    if waiting is None:
        return
    since = waiting.started_at
    duration = None if since is None else max((_now() - since).total_seconds(), 0.0)
    reason = "stopped" if isinstance(move.transition, Stop) else move.action
    reason = "sleep" if reason == "wake" else reason
    event = StepEvent(
        saga.id, saga.name, waiting.index, waiting.name, duration=duration, reason=reason
    )
    signals.wait_ended.send(sender=saga.name, event=event)


def park(app: Celery, saga: SagaRecord, index: int, task: str, worker: str) -> None:
    """Note that the saga waits for a worker that has ``task`` (its message goes round)."""
    delay = get_config(app).park_retry
    text = (
        f"task {task!r} is not registered on {worker} (saga version "
        f"{saga.version or 'none given'}): the saga waits for a worker that has it; its "
        f"message is sent again every {delay:g} s"
    )
    note = {"task": task, "version": saga.version, "worker": worker, "message": text,
            "at": _now().isoformat()}  # fmt: skip
    get_store(app).park(saga.id, note)
    logger.error("saga %s step %d: %s", saga.id, index, text)
    signals.saga_parked.send(
        sender=saga.name, event=StepEvent(saga.id, saga.name, index, task, reason=text)
    )


def settle(
    app: Celery,
    saga_id: str,
    read: tuple[SagaRecord, Sequence[StepRecord]] | None = None,
) -> Move | None:
    """A shell did its part: read the saga and do what is left (at once, no stall).

    ``read``: the saga and its steps as the shell just read them (with its own write).
    """
    store = get_store(app)
    loaded = load(store, saga_id) if read is None else (read[0], state_of(store, *read))
    if loaded is None:
        return None
    saga, state = loaded
    move = decide(state, Settle(_now()))
    carry_out(app, saga, move, steps=state.steps)
    return move
