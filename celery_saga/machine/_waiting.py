"""The rules of waits and sleeps: a wait's message arrived, a signal came, a wait is due."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import SagaStateError
from ..records import StepRecord
from ..status import SagaStatus, StepStatus
from ._events import Signal, WaitEntered
from ._moves import (
    Drop,
    Ended,
    KeepSignal,
    Message,
    Move,
    Reconcile,
    ResolveWait,
    SendSteps,
    StartChild,
    Stop,
    Wake,
)
from ._state import CHILD_CONFLICT, WAIT_TIMED_OUT, Delivery, IllegalEvent, Outcome, SagaState

__all__ = ["go_on", "resolved", "signal_rule", "wait_entered", "wake"]

#: Without a sweep, a long wait's message comes back at most this often (seconds).
_NO_SWEEP_WAKE = 60.0


def wait_entered(d: Delivery, e: WaitEntered) -> Move:
    move = _wait_entered(d, e)
    if e.outcome is Outcome.WAITING and e.started and e.child:  # the child, before any wake
        return replace(move, messages=(StartChild(), *move.messages), action="child")
    return move


def _wait_entered(d: Delivery, e: WaitEntered) -> Move:
    outcome = e.outcome
    if outcome is Outcome.CONFLICT:
        message = f"the id of its child saga at step {d.index} is another saga's"
        error = {"type": CHILD_CONFLICT, "message": message, "traceback": ""}
        return Move(Stop(error), (Reconcile(),), action="conflict", reason=message)
    if outcome is Outcome.WAITING:
        if e.due is None:
            return Move(reason="waiting for its signal")
        left = e.due - e.now
        if left <= 0:  # due: the store's saga is woken from there
            return Move(messages=(Reconcile(),), action="wake", reason="due")
        if e.soon is None:  # no sweep runs: this message comes back until it is due
            return Move(messages=(Wake(min(left, _NO_SWEEP_WAKE)),), reason="no sweep")
        if left <= e.soon:
            return Move(messages=(Wake(left),), reason=f"due in {left:.1f} s")
        return Move(reason="the recovery sweep wakes it when it is due")
    if outcome is Outcome.RECORDED:  # the signal came first: go on from the store
        return Move(messages=(Reconcile(),), action="forward", reason="signalled before")
    if outcome is Outcome.COMPLETED:
        return Move(messages=(Ended(SagaStatus.COMPLETED),), action="finish")
    if outcome is Outcome.STOPPED:
        return Move(messages=(Reconcile(), Drop("stopped")), reason="stopped")
    if outcome is Outcome.DONE:
        return Move(messages=(Drop("done"),), reason="resolved before")
    if outcome is Outcome.MISSING:
        return Move(messages=(Drop("missing", "error"),), reason="missing")
    raise IllegalEvent(d.saga_id, "a wait", e, "a wait outcome")


def go_on(s: SagaState, index: int, result: Any) -> tuple[Message, ...]:
    """After the wait at ``index`` resolved with ``result``: the next stage, or the end."""
    following = s.shape.next_stage(index)
    if following is None:
        return (Ended(SagaStatus.COMPLETED),)
    return tuple(SendSteps(branch[0], (result,)) for branch in following.branches)


def resolved(s: SagaState, index: int, result: Any) -> ResolveWait:
    final = s.shape.next_stage(index) is None
    saga_status = SagaStatus.COMPLETED if final else SagaStatus.RUNNING
    return ResolveWait(index, StepStatus.SUCCEEDED, saga_status, result=result)


def wake(s: SagaState, step: StepRecord) -> Move:
    """The wait at ``step`` is due: a sleep ends, a wait_for times out."""
    spec = s.shape.stage_of(step.index).wait or {}
    name = spec.get("signal")
    if name is None or spec.get("on_timeout") == "continue":
        result = (step.args or [None])[0] if name is None else None
        return Move(
            resolved(s, step.index, result),
            go_on(s, step.index, result),
            action="wake" if name is None else "continue",
            reason="its sleep ended" if name is None else f"no signal {name!r}: go on",
        )
    timeout = spec.get("timeout") or 0.0
    message = f"no signal {name!r} within its timeout of {timeout:g} s"
    error = {"type": WAIT_TIMED_OUT, "message": message, "traceback": ""}
    if spec.get("on_timeout") == "fail":
        return Move(
            ResolveWait(step.index, StepStatus.FAILED, SagaStatus.FAILED, error=error),
            (Ended(SagaStatus.FAILED),),
            action="timeout",
            reason=message,
        )
    return Move(
        ResolveWait(step.index, StepStatus.FAILED, SagaStatus.COMPENSATING, error=error),
        (Reconcile(),),
        action="timeout",
        reason=message,
    )


def _kept(step: StepRecord) -> bool:
    """A wait the saga has not reached, holding a signal sent before (as its result)."""
    return step.status is StepStatus.PENDING and step.finished_at is not None


def signal_rule(s: SagaState, e: Signal) -> Move:
    if s.status not in (SagaStatus.RUNNING, SagaStatus.WAITING):
        raise SagaStateError(s.saga_id, s.status.value, "signalled", "a RUNNING or WAITING")
    waits = [index for index, spec in s.shape.waits if spec.get("signal") == e.name]
    if not waits:
        raise SagaStateError(
            s.saga_id, s.status.value, f"sent the signal {e.name!r}", "a saga that waits for it"
        )
    steps = {st.index: st for st in s.steps}
    for index in waits:
        step = steps[index]
        if step.status is StepStatus.WAITING:
            return Move(
                resolved(s, index, e.payload),
                go_on(s, index, e.payload),
                action="signal",
                reason=f"signal {e.name!r}",
                steps=(index,),
            )
        if step.status is StepStatus.PENDING and not _kept(step):
            return Move(
                KeepSignal(index, e.payload),
                action="kept",
                reason=f"signal {e.name!r} kept until the saga gets to step {index}",
                steps=(index,),
            )
    raise SagaStateError(
        s.saga_id,
        s.status.value,
        f"sent the signal {e.name!r} again",
        "a saga with a wait for it left",
    )
