"""Lifecycle signals, in Celery's style: connect a receiver, get one payload per event.

.. code-block:: python

    from celery_saga import signals

    @signals.step_failed.connect
    def alert(sender, event, **kwargs):
        log.warning("saga %s: step %s failed: %s", event.saga_id, event.step_name, event.error)

==============================  ============  ==========================================
signal                          payload       sent when (and where)
==============================  ============  ==========================================
``saga_started``                SagaEvent     the saga is stored and its first step sent
                                              (in the process that started it)
``saga_completed``              SagaEvent     the last step succeeded
``saga_compensated``            SagaEvent     a step failed and every succeeded step was undone
``saga_failed``                 SagaEvent     a compensation gave up: needs a person
``step_started``                StepEvent     a worker claimed a step and runs its body
``step_succeeded``              StepEvent     the step's result is recorded
``step_failed``                 StepEvent     the step failed for good (after its retries)
``step_retried``                StepEvent     the step raised Retry: it will run again
``step_timed_out``              StepEvent     the step hit its soft time limit (then also
                                              ``step_failed``)
``step_skipped``                StepEvent     a delivery did not run the body: the step had
                                              succeeded already (``reason="done"``), another
                                              delivery owns it (``"busy"``), the saga was
                                              cancelled (``"halted"``), or the saga
                                              stopped (``"stopped"``, ``"missing"``)
``compensation_started``        StepEvent     a compensation is claimed and called
``compensation_succeeded``      StepEvent     it returned
``compensation_failed``         StepEvent     it raised (``reason="retry"`` or ``"gave up"``)
``saga_not_found``              StepEvent     a step message for a saga this worker's store
                                              does not know (``reason`` names the store):
                                              producer and worker use different stores?
``saga_waiting``                StepEvent     the saga is at a ``wait_for`` or ``sleep``
                                              stage (``reason``: the signal, or "sleep")
``signal_received``             StepEvent     a signal reached its wait (``reason``: its
                                              name; "kept" when the saga is not there yet)
``wait_timed_out``              StepEvent     a ``wait_for`` timed out (``error`` says so)
``wait_ended``                  StepEvent     the saga no longer waits (``duration``: how
                                              long; ``reason``: "signal", "sleep",
                                              "timeout", "continue" or "stopped")
``saga_parked``                 StepEvent     a worker lacks the step's task (``reason``
                                              names it and the saga's version); the
                                              message is sent again later
``child_started``               SagaEvent     a child saga is stored and started
                                              (``parent_id``, ``parent_step``: whose)
``child_ended``                 SagaEvent     a child saga ended (after its own
                                              ``saga_completed``, ...); its parent goes on
==============================  ============  ==========================================

The sender is the saga's name for saga events, the step's task name for step events and
the compensation's task name for compensation events, so ``connect(sender=...)`` filters.
Signals are sent after the transition is committed. A receiver that raises is logged by
Celery's signal dispatch and never changes the saga.

.. versionadded:: 0.1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery.utils.dispatch import Signal

from .status import SagaStatus

__all__ = [
    "SagaEvent",
    "StepEvent",
    "child_ended",
    "child_started",
    "compensation_failed",
    "compensation_started",
    "compensation_succeeded",
    "saga_compensated",
    "saga_completed",
    "saga_failed",
    "saga_not_found",
    "saga_parked",
    "saga_started",
    "saga_waiting",
    "signal_received",
    "step_failed",
    "step_retried",
    "step_skipped",
    "step_started",
    "step_succeeded",
    "step_timed_out",
    "wait_ended",
    "wait_timed_out",
]


@dataclass(frozen=True)
class SagaEvent:
    """What a saga signal carries.

    ``duration`` is seconds since the saga was stored (None for ``saga_started``);
    ``error`` is the failed step's error (``{"type", "message", "traceback"}``);
    ``parent_id`` and ``parent_step`` say whose stage a child saga is.
    """

    saga_id: str
    saga_name: str
    status: SagaStatus
    duration: float | None = None
    error: dict[str, Any] | None = None
    failed_step: int | None = None
    parent_id: str | None = None
    parent_step: int | None = None


@dataclass(frozen=True)
class StepEvent:
    """What a step or compensation signal carries.

    ``attempt`` counts this step's (or compensation's) attempts from 1; ``duration`` is
    seconds this attempt ran, when it ran; ``reason`` explains skips and failures.
    """

    saga_id: str
    saga_name: str
    step_index: int
    step_name: str
    attempt: int = 0
    duration: float | None = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    compensate: str | None = None


saga_started = Signal(name="saga_started")
saga_completed = Signal(name="saga_completed")
saga_compensated = Signal(name="saga_compensated")
saga_failed = Signal(name="saga_failed")
step_started = Signal(name="step_started")
step_succeeded = Signal(name="step_succeeded")
step_failed = Signal(name="step_failed")
step_retried = Signal(name="step_retried")
step_timed_out = Signal(name="step_timed_out")
step_skipped = Signal(name="step_skipped")
compensation_started = Signal(name="compensation_started")
compensation_succeeded = Signal(name="compensation_succeeded")
compensation_failed = Signal(name="compensation_failed")
#: A step message for a saga this worker's store does not know (another store?).
saga_not_found = Signal(name="saga_not_found")
saga_waiting = Signal(name="saga_waiting")
saga_parked = Signal(name="saga_parked")
wait_ended = Signal(name="wait_ended")
signal_received = Signal(name="signal_received")
wait_timed_out = Signal(name="wait_timed_out")
child_started = Signal(name="child_started")
child_ended = Signal(name="child_ended")

_SAGA_END = {
    SagaStatus.COMPLETED: saga_completed,
    SagaStatus.COMPENSATED: saga_compensated,
    SagaStatus.FAILED: saga_failed,
}


def send_saga_end(event: SagaEvent) -> None:
    """Send the signal of a saga's terminal status."""
    signal = _SAGA_END.get(event.status)
    if signal is not None:
        signal.send(sender=event.saga_name, event=event)
