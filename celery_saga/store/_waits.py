"""The store's side of waits and sleeps, and of parked sagas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import null, select, update

from ..records import SagaRecord
from ..status import SagaStatus, StepStatus
from ._base import StoreBase
from ._rows import aware, saga_record, utcnow
from ._statements import COMPLETE_SAGA, INSERT_SAGA, LOCK_SAGA
from .schema import saga_steps, sagas

__all__ = ["WaitStore", "Waiting"]


@dataclass(frozen=True)
class Waiting:
    """What putting a saga to wait found (see :meth:`SagaStore.enter_wait`)."""

    outcome: str
    due: datetime | None = None  #: when the wait ends on its own (aware UTC)
    entered: bool = False  #: this call put the saga to wait


def _naive(value: datetime) -> datetime:
    """A timestamp as the tables store it: naive UTC."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


class WaitStore(StoreBase):
    """Waits (``enter_wait``, ``resolve_wait``, ``keep_signal``), child sagas, parking."""

    # -- waits --------------------------------------------------------------------

    def enter_wait(
        self,
        saga_id: str,
        index: int,
        *,
        due: datetime | None,
        args: Sequence[Any],
        stage: int,
        task: str,
        final: bool,
        child: Mapping[str, Any] | None = None,
        compensate: str | None = None,
    ) -> Waiting:
        """Put a running saga to wait at step ``index`` until ``due`` (None: a signal only).

        One transaction, the saga's row locked first (as :meth:`deliver_signal` does):
        ``waiting`` (now, or already: ``due`` is the stored one), ``recorded`` (a signal
        kept for it resolves it at once; with ``final``, ``completed``), ``stopped``
        (the saga is not running), ``done`` (resolved before), ``missing``, or
        ``conflict`` (the child's id is taken: nothing is written).

        ``child``: the row of the child saga the stage runs, stored in the same
        transaction as the wait, so that a parent stopped meanwhile always sees it;
        ``compensate``: what undoes the stage.
        """
        now = utcnow()
        c = saga_steps.c
        params = {"p_saga": saga_id, "p_now": now}
        with self._write("put the saga to wait") as connection:
            status = connection.execute(LOCK_SAGA, params).scalar()
            if status is None:
                return Waiting("missing")
            row = connection.execute(
                select(c.status, c.finished_at, c.lease_expires_at).where(
                    c.saga_id == saga_id, c.idx == index
                )
            ).first()
            if row is not None and row.status == StepStatus.WAITING:
                return Waiting("waiting", aware(row.lease_expires_at))
            if status != SagaStatus.RUNNING:
                return Waiting("stopped")
            if row is not None and (row.status != StepStatus.PENDING or row.finished_at is None):
                return Waiting("done")
            if row is None:
                if (
                    child is not None
                    and connection.execute(
                        select(sagas.c.id).where(sagas.c.id == child["id"])
                    ).first()
                ):
                    return Waiting("conflict")  # a saga of that id exists: not this child
                connection.execute(
                    saga_steps.insert().values(
                        saga_id=saga_id, idx=index, stage=stage, task=task,
                        compensate=compensate, status=StepStatus.WAITING, attempts=1,
                        started_at=now, args=list(args),
                        kwargs={}, lease_expires_at=None if due is None else _naive(due),
                        compensation_attempts=0,
                    )
                )  # fmt: skip
                connection.execute(
                    update(sagas)
                    .where(sagas.c.id == saga_id, sagas.c.status == SagaStatus.RUNNING)
                    .values(status=SagaStatus.WAITING, updated_at=now)
                )
                if child is not None:
                    connection.execute(INSERT_SAGA, dict(child))
                return Waiting("waiting", due, entered=True)
            connection.execute(  # a signal came first: it is the stage's result
                update(saga_steps)
                .where(c.saga_id == saga_id, c.idx == index)
                .values(status=StepStatus.SUCCEEDED, attempts=1, started_at=now, finished_at=now)
            )
            if not final:
                return Waiting("recorded")
            connection.execute(COMPLETE_SAGA, params)
        return Waiting("completed")

    def resolve_wait(
        self,
        saga_id: str,
        index: int,
        *,
        step_status: StepStatus,
        saga_status: SagaStatus,
        result: Any = None,
        error: Mapping[str, Any] | None = None,
    ) -> bool:
        """End the wait at step ``index`` if the saga still waits there (False: it did not).

        The step becomes ``step_status`` with ``result`` or ``error``, the saga
        ``saga_status`` (with ``error``, when given, as the saga's).
        """
        now = utcnow()
        c = saga_steps.c
        saga_values: dict[str, Any] = {"status": saga_status, "updated_at": now}
        if error is not None:
            saga_values.update(error=dict(error), failed_step=index)
        if saga_status.is_terminal:
            saga_values["finished_at"] = now
        with self._write("end the wait") as connection:
            connection.execute(LOCK_SAGA, {"p_saga": saga_id})
            ended = connection.execute(
                update(saga_steps)
                .where(c.saga_id == saga_id, c.idx == index, c.status == StepStatus.WAITING)
                .values(
                    status=step_status,
                    result=result,
                    finished_at=now,
                    lease_expires_at=None,
                    error=None if error is None else dict(error),
                )
            ).rowcount
            if ended != 1:
                connection.rollback()
                return False
            connection.execute(
                update(sagas)
                .where(sagas.c.id == saga_id, sagas.c.status == SagaStatus.WAITING)
                .values(**saga_values)
            )
        return True

    def keep_signal(self, saga_id: str, index: int, payload: Any, *, stage: int, task: str) -> bool:
        """Keep a signal for the wait at step ``index`` the saga has not reached yet.

        Its row is made ``PENDING`` with the payload as its result. False: the row
        exists already (a signal was kept, or the saga got there meanwhile).
        """
        now = utcnow()
        c = saga_steps.c
        with self._write("keep the signal") as connection:
            connection.execute(LOCK_SAGA, {"p_saga": saga_id})
            if connection.execute(
                select(c.idx).where(c.saga_id == saga_id, c.idx == index)
            ).first():
                return False
            connection.execute(
                saga_steps.insert().values(
                    saga_id=saga_id, idx=index, stage=stage, task=task,
                    status=StepStatus.PENDING, attempts=0, result=payload, finished_at=now,
                    compensation_attempts=0,
                )
            )  # fmt: skip
        return True

    # -- child sagas ------------------------------------------------------------

    def child_sagas(self, parent_id: str) -> list[SagaRecord]:
        """The child sagas of a saga (those it ran as stages), in step order."""
        query = select(sagas).where(sagas.c.parent_id == parent_id).order_by(sagas.c.parent_step)
        rows = self._read("read the child sagas", lambda c: c.execute(query).all())
        return [saga_record(row) for row in rows]

    def reopen_child(self, saga_id: str, error: Mapping[str, Any]) -> bool:
        """Move a ``COMPLETED`` child saga to ``COMPENSATING``: its parent undoes it.

        False: it was not ``COMPLETED`` (reopened already, or never completed).
        """
        now = utcnow()
        with self._write_one("reopen the child saga") as connection:
            reopened = connection.execute(
                update(sagas)
                .where(sagas.c.id == saga_id, sagas.c.status == SagaStatus.COMPLETED)
                .values(
                    status=SagaStatus.COMPENSATING,
                    error=dict(error),
                    finished_at=None,
                    updated_at=now,
                )
            )
        return reopened.rowcount == 1

    def record_child(
        self,
        saga_id: str,
        index: int,
        step_status: StepStatus,
        *,
        result: Any = None,
        error: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record on a stopped parent's step how its child saga ended.

        ``SUCCEEDED`` with ``result`` (the child completed: it is undone with the
        rest), ``COMPENSATED`` or ``COMPENSATION_FAILED`` with ``error`` (the child
        undid itself, or gave up). False: the step had moved on.
        """
        now = utcnow()
        c = saga_steps.c
        values: dict[str, Any] = {"status": step_status, "claim": None, "lease_expires_at": None}
        if step_status is StepStatus.SUCCEEDED:  # it completed as its parent stopped
            values.update(result=result, finished_at=now)
            before = [StepStatus.WAITING, StepStatus.PENDING]
        else:  # it undid itself (its parent stopped), or was undone as a unit
            values.update(compensation_finished_at=now)
            if error is not None:
                values["compensation_error"] = dict(error)
            before = [StepStatus.PENDING, StepStatus.COMPENSATING]
        with self._write_one("record the child saga's end") as connection:
            recorded = connection.execute(
                update(saga_steps)
                .where(c.saga_id == saga_id, c.idx == index, c.status.in_(before))
                .values(**values)
            )
        return recorded.rowcount == 1

    def park(self, saga_id: str, note: Mapping[str, Any] | None) -> None:
        """Note why the saga waits for a worker that has one of its tasks (None: it does not)."""
        values: dict[str, Any] = {"parked": null() if note is None else dict(note)}
        if note is not None:  # its message goes round: that is not a stall
            values["updated_at"] = utcnow()
        with self._write_one("note the parked saga") as connection:
            connection.execute(update(sagas).where(sagas.c.id == saga_id).values(**values))

    def expire_waits(self, saga_id: str | None = None) -> int:
        """Make the timed waits and sleeps due now (for tests: no sleeping through them).

        :meth:`celery_saga.testing.Faults.fast_forward`; returns how many it made due.
        """
        c = saga_steps.c
        now = utcnow()
        where = [c.status == StepStatus.WAITING, c.lease_expires_at > now]
        if saga_id is not None:
            where.append(c.saga_id == saga_id)
        with self._write_one("fast-forward the waits") as connection:
            due = connection.execute(update(saga_steps).where(*where).values(lease_expires_at=now))
        return due.rowcount
