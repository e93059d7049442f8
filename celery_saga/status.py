"""Statuses of sagas and of their steps, as stored in the saga tables."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["SagaStatus", "StepStatus"]


class SagaStatus(StrEnum):
    """Where a saga stands.

    ``PENDING`` is also what :class:`~celery_saga.SagaResult` reports for an id the
    store does not know (yet), like Celery's ``AsyncResult``.

    .. versionadded:: 0.1
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"  #: at a ``wait_for`` or ``sleep`` stage: no worker is held
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        """True for the statuses a saga never leaves on its own."""
        return self in _TERMINAL_SAGA


_TERMINAL_SAGA = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


class StepStatus(StrEnum):
    """Where one step of a saga stands.

    A step that never started (because an earlier one failed) stays ``PENDING``.
    A succeeded step that has been undone is ``COMPENSATED``; one whose compensation
    gave up is ``COMPENSATION_FAILED`` (the saga is then ``FAILED``). A step of
    ``@saga_step(compensate_on_timeout=True)`` that hit its time limit is ``TIMED_OUT``:
    in doubt, so it is compensated like a succeeded one. A step whose worker was lost
    (its lease ran out) while the saga was compensating is ``IN_DOUBT``: it may have
    taken effect, so it is compensated too when it has a compensation. A ``wait_for`` or
    ``sleep`` stage the saga is at is ``WAITING``; a signal sent before the saga got
    there is kept on its ``PENDING`` row (as its ``result``) until it does.

    .. versionadded:: 0.1
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"  #: a ``wait_for`` or ``sleep`` stage the saga is at
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    IN_DOUBT = "IN_DOUBT"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"
