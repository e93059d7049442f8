"""``SagaResult``: a handle on a saga, re-attachable from any process by its id."""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.app import app_or_default
from celery.exceptions import TimeoutError as CeleryTimeoutError

from ._runtime import get_store
from .config import get_config
from .errors import SagaCompensated, SagaError, SagaFailed, SagaNotFound
from .machine import Topology
from .operator import cancel, resume, retry_compensation, signal
from .records import SagaRecord, StepRecord
from .recovery import Recovery
from .status import SagaStatus, StepStatus

__all__ = ["SagaResult"]

_MAX_POLL_INTERVAL = 0.1


class SagaResult:
    """The state and outcome of one saga, read from the saga store.

    Like Celery's ``AsyncResult``, it can be made from an id in any process::

        result = SagaResult("order-o-1", app=app)
        result.status      # SagaStatus
        result.get(timeout=30)

    .. versionadded:: 0.1
    """

    def __init__(self, id: str, app: Celery | None = None) -> None:
        self.id = id
        self.app: Celery = app_or_default(app)

    def __repr__(self) -> str:
        return f"<SagaResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SagaResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def record(self) -> SagaRecord | None:
        """The saga's row as stored now, or None if the store does not know the id."""
        return get_store(self.app).get_saga(self.id)

    @property
    def status(self) -> SagaStatus:
        """The saga's status now (``PENDING`` if the store does not know the id yet)."""
        return get_store(self.app).get_status(self.id) or SagaStatus.PENDING

    @property
    def state(self) -> SagaStatus:
        """Alias of :attr:`status`, as on Celery's ``AsyncResult``."""
        return self.status

    @property
    def steps(self) -> list[StepRecord]:
        """The saga's steps in plan order, with status, result, error, attempts and timings."""
        return get_store(self.app).get_steps(self.id)

    def cancel(self, reason: str = "cancelled") -> bool:
        """Stop the saga: no new forward step starts; the steps that succeeded are undone.

        A step running now finishes (it is not interrupted), and is undone too if it
        succeeds. The saga ends ``COMPENSATED``; its error has ``type``
        ``"celery_saga.Cancelled"`` and ``reason`` as message. Returns False, doing
        nothing, if the saga is not running (it ended, or is compensating already).
        Raises :class:`~celery_saga.SagaNotFound` for an unknown id.

        .. versionadded:: 0.1
        """
        return cancel(self.app, self.id, reason)

    def signal(self, name: str, payload: Any = None) -> bool:
        """Send the saga the signal ``name``: its ``wait_for(name)`` ends with ``payload``.

        True: it was waiting and goes on; False: it is not there yet and the signal is
        kept for it. See :func:`celery_saga.signal`.

        .. versionadded:: 0.2
        """
        return signal(self.app, self.id, name, payload)

    def retry_compensation(self) -> list[int]:
        """Run again, after a fix, the compensations of a ``FAILED`` saga that gave up.

        Sends them (newest first, each with its full retries) and returns their step
        indices; the saga is ``COMPENSATING`` until they end, then ``COMPENSATED`` (or
        ``FAILED`` again). Returns ``[]``, doing nothing, if the saga is not ``FAILED``.

        .. versionadded:: 0.1
        """
        return retry_compensation(self.app, self.id)

    def resume(self, *, force: bool = False) -> Recovery:
        """Drive the saga on now from the store (a stuck one: its messages were lost).

        What the recovery sweep would do, without waiting for ``saga_recovery_stall``:
        sends the next step, or the compensations still to do. A step whose worker
        still holds its lease is left alone; ``force=True`` takes it over (for a worker
        you know is dead). Raises :class:`~celery_saga.SagaStateError` if the saga has
        finished.

        .. versionadded:: 0.1
        .. versionchanged:: 0.2 ``force``.
        """
        return resume(self.app, self.id, force=force)

    def ready(self) -> bool:
        """True once the saga is terminal (completed, compensated or failed)."""
        return self.status.is_terminal

    def successful(self) -> bool:
        """True if the saga completed."""
        return self.status is SagaStatus.COMPLETED

    def failed(self) -> bool:
        """True if the saga ended without completing (compensated or failed)."""
        return self.status in (SagaStatus.COMPENSATED, SagaStatus.FAILED)

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float | None = None,
    ) -> Any:
        """Wait for the saga to end and return its last step's result.

        A saga that ends with a group returns the list of its members' results, in
        member order.

        Raises :class:`~celery_saga.SagaCompensated` or :class:`~celery_saga.SagaFailed`
        when the saga did not complete; with ``propagate=False`` that exception is
        returned instead of raised. Raises ``celery.exceptions.TimeoutError`` after
        ``timeout`` seconds.
        """
        store = get_store(self.app)
        delay = interval if interval is not None else get_config(self.app).result_poll_interval
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = store.get_status(self.id)
            if status is not None and status.is_terminal:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise CeleryTimeoutError(
                    f"saga {self.id!r} did not finish within {timeout} s "
                    f"(status {status or SagaStatus.PENDING})"
                )
            sleep = delay if deadline is None else min(delay, max(deadline - time.monotonic(), 0))
            time.sleep(sleep)
            if interval is None:
                delay = min(delay * 1.25, _MAX_POLL_INTERVAL)
        return self._outcome(propagate)

    def _outcome(self, propagate: bool) -> Any:
        record = self.record
        if record is None:
            raise SagaNotFound(self.id)
        steps = self.steps
        if record.status is SagaStatus.COMPLETED:
            results = {step.index: step.result for step in steps}
            return Topology.of(record.plan).output(results) if steps else None
        error: SagaError
        if record.status is SagaStatus.COMPENSATED:
            failed = next((s for s in steps if s.index == record.failed_step), None)
            error = SagaCompensated(
                self.id,
                failed.name if failed else None,
                record.failed_step,
                record.error,
            )
        else:
            error = SagaFailed(
                self.id,
                [
                    {
                        "step_index": s.index,
                        "step_name": s.name,
                        "compensate": s.compensate,
                        "error": s.compensation_error,
                    }
                    for s in steps
                    if s.status is StepStatus.COMPENSATION_FAILED
                ],
                record.error,
            )
        if propagate:
            raise error
        return error
