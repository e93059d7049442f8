"""The SQL saga store: SQLite, PostgreSQL and MySQL/MariaDB through SQLAlchemy Core.

Features:
    Every transition is one statement (in autocommit on PostgreSQL and MySQL) or one short
    transaction, committed before the caller publishes the next message. A step is owned
    through a claim (fencing token + lease): a second delivery of the same step cannot
    claim it while the lease is alive, and a late owner whose token was replaced cannot
    record its result. A step's row is created by its first claim; starting a saga writes
    only the saga's row, with its plan.

Connection string:
    Any SQLAlchemy URL: ``sqlite:///celery_saga.sqlite3`` (the default, a file in the
    working directory), ``postgresql+psycopg://user@host/db``,
    ``mysql+pymysql://user@host/db``. Without a driver (``postgres://``,
    ``postgresql://``, ``mysql://``) the installed one is used (psycopg 3 first). A URL
    SQLAlchemy cannot use is a :class:`~celery_saga.SagaConfigurationError`; a server
    that refuses the connection a :class:`~celery_saga.SagaStoreError` saying the store
    cannot be reached.

Options:
    ``saga_store_engine_options`` is passed to :func:`sqlalchemy.create_engine`.
    On SQLite the store turns on WAL and a 30 s busy timeout, and begins write
    transactions with ``BEGIN IMMEDIATE`` so that worker processes queue for the lock
    instead of failing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Executable,
    Row,
    and_,
    case,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..errors import SagaValidationError
from ..records import SagaRecord, StepRecord
from ..status import SagaStatus, StepStatus
from ._rows import aware, pending_step, saga_record, step_record, utcnow
from ._statements import (
    CLAIM_COMPENSATION,
    CLAIM_COMPENSATION_RETURNING,
    CLAIM_STEP,
    CLAIM_STEP_RETURNING,
    COMPENSATION_DONE,
    COMPENSATION_STATE,
    COMPLETE_LAST_STEP_PG,
    COMPLETE_SAGA,
    COMPLETE_STEP,
    END_COMPENSATION,
    FAIL_SAGA,
    FAIL_SAGA_RETURNING,
    FAIL_STEP,
    FAIL_STEP_PG,
    INSERT_SAGA,
    LOCK_SAGA,
    LOCK_SAGA_PLAN,
    RELEASE_STEP,
    SAGA_PLAN,
    SAGA_ROW,
    SAGA_STATUS,
    STEP_ROWS,
    TO_UNDO,
)
from ._waits import Waiting, WaitStore
from .engine import EncodedJSON, make_engine
from .schema import saga_steps, sagas

__all__ = [
    "Claim",
    "ClaimOutcome",
    "Completion",
    "EncodedJSON",
    "FailureRecord",
    "Join",
    "SagaStore",
    "Waiting",
    "make_engine",
    "utcnow",
]

#: The statuses a saga never leaves on its own.
_TERMINAL = [s.value for s in SagaStatus if s.is_terminal]
#: The most entries ``attempt_errors`` keeps on a step (the newest).
MAX_ATTEMPT_ERRORS = 50


def _attempt_errors(
    connection: Connection,
    saga_id: str,
    index: int,
    token: str,
    phase: str,
    error: Mapping[str, Any],
    now: datetime,
) -> list[dict[str, Any]]:
    """The step's ``attempt_errors`` with this attempt's error appended.

    Read inside the write that stores it, by the claim's owner (the only writer).
    """
    c = saga_steps.c
    attempts = c.attempts if phase == "step" else c.compensation_attempts
    row = connection.execute(
        select(c.attempt_errors, attempts).where(
            c.saga_id == saga_id, c.idx == index, c.claim == token
        )
    ).first()
    entry = _attempt_error(phase, None if row is None else row[1], error, now)
    earlier = [] if row is None or not row[0] else list(row[0])
    return [*earlier, entry][-MAX_ATTEMPT_ERRORS:]


def _attempt_error(
    phase: str, attempt: int | None, error: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """The ``attempt_errors`` entry of one attempt's error."""
    entry = {
        "phase": phase,
        "attempt": attempt,
        "type": error.get("type"),
        "message": error.get("message"),
        "at": now.replace(tzinfo=UTC).isoformat(),
    }
    if "retryable" in error:
        entry["retryable"] = error["retryable"]
    return entry


def _in_plan_order(
    saga_id: str, plan: Mapping[str, Any] | None, rows: Sequence[Row[Any]]
) -> list[StepRecord]:
    """Step rows as records in plan order, the steps with no row yet ``PENDING``."""
    started = {row.idx: step_record(row) for row in rows}
    if not plan:
        return [started[index] for index in sorted(started)]
    return [started.get(step["index"]) or pending_step(saga_id, step) for step in plan["steps"]]


def _loaded(
    saga_id: str, row: Any, steps: Sequence[Any]
) -> tuple[SagaRecord, list[StepRecord]] | None:
    """A saga's row and its step rows as read, as records (None: no such saga)."""
    if row is None:
        return None
    saga = saga_record(row)
    return saga, _in_plan_order(saga_id, saga.plan, steps)


def _recording(saga_id: str, index: int, token: str, result: Any) -> dict[str, Any]:
    """The parameters of the statements that record a step's result."""
    return {
        "p_saga": saga_id,
        "p_index": index,
        "p_token": token,
        "p_result": result,
        "p_now": utcnow(),
    }


def _owned_compensation(saga_id: str, index: int, token: str) -> tuple[ColumnElement[bool], ...]:
    """The compensation of step ``index``, running, owned by the claim ``token``."""
    c = saga_steps.c
    return (
        c.saga_id == saga_id,
        c.idx == index,
        c.claim == token,
        c.status == StepStatus.COMPENSATING,
    )


class ClaimOutcome(enum.Enum):
    """What a claim of a step (or of its compensation) found."""

    CLAIMED = "claimed"  #: the caller owns it now and must run it
    DONE = "done"  #: it already ran to the end; ``Claim.result`` holds the stored result
    BUSY = "busy"  #: another delivery owns it under a live lease
    STOPPED = "stopped"  #: the saga is not in a state where this may run
    HALTED = "halted"  #: the saga was stopped (cancelled) before this step started
    RUNNING = "running"  #: a compensation of a saga that is still running forward
    MISSING = "missing"  #: no such saga or step in the store


class Completion(enum.Enum):
    """What recording a step's result did."""

    LOST = "lost"  #: the caller no longer owns the step: nothing was written
    RECORDED = "recorded"  #: the result is stored
    COMPLETED = "completed"  #: the last step's result is stored and the saga completed
    HALTED = "halted"  #: the last step's result is stored, but the saga had been stopped
    JOINED = "joined"  #: the result is stored, and with it every member of its stage


@dataclass(frozen=True)
class Join:
    """What recording a joining step's result found (see :meth:`SagaStore.join_stage`)."""

    outcome: Completion
    results: tuple[Any, ...] = ()  #: on ``JOINED`` and ``COMPLETED``: the stage's results
    plan: dict[str, Any] | None = None  #: on ``JOINED``: the saga's plan, to send what is next
    created_at: datetime | None = None  #: on ``JOINED``: when the saga was stored


@dataclass(frozen=True)
class FailureRecord:
    """What recording a step's final failure did (true when it was recorded)."""

    recorded: bool  #: False: the caller no longer owns the step; nothing was written
    moved: bool  #: the saga's row changed with it (False: it had stopped running)
    plan: dict[str, Any] | None = None  #: the saga's plan, when asked for and recorded

    def __bool__(self) -> bool:
        return self.recorded


@dataclass(frozen=True)
class Claim:
    """The outcome of a claim; on ``CLAIMED`` also the step's stored row."""

    outcome: ClaimOutcome
    token: str | None = None
    attempt: int = 0
    result: Any = None
    step: StepRecord | None = None


class SagaStore(WaitStore):
    """Saga and step rows in a SQL database.

    (Its connections and plumbing are in :mod:`._base`, its waits in :mod:`._waits`.)

    .. versionadded:: 0.1
    """

    # -- starting ----------------------------------------------------------------

    def create_saga(self, saga_row: Mapping[str, Any]) -> SagaRecord | None:
        """Insert a saga; return the existing saga instead if the id is taken.

        Step rows are created by the steps' first claims (see :meth:`claim_step`).
        """
        try:
            self._one("store the saga", INSERT_SAGA, dict(saga_row))
        except IntegrityError:
            existing = self.get_saga(str(saga_row["id"]))
            if existing is None:
                raise
            return existing
        return None

    def delete_saga(self, saga_id: str) -> None:
        """Remove a saga and its steps (used when its first message could not be sent)."""
        with self._write("delete the saga") as connection:
            connection.execute(delete(saga_steps).where(saga_steps.c.saga_id == saga_id))
            connection.execute(delete(sagas).where(sagas.c.id == saga_id))

    # -- forward steps ------------------------------------------------------------

    def claim_step(
        self,
        saga_id: str,
        index: int,
        token: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        lease: float,
        *,
        stage: int,
        task: str,
        compensate: str | None,
    ) -> Claim:
        """Take ownership of a step not run yet, retried, or whose owner's lease ran out."""
        now = utcnow()
        params = {
            "p_saga": saga_id,
            "p_index": index,
            "p_stage": stage,
            "p_task": task,
            "p_compensate": compensate,
            "p_now": now,
            "p_token": token,
            "p_lease": now + timedelta(seconds=lease),
            "p_args": list(args),
            "p_kwargs": dict(kwargs),
        }
        attempt: int | None
        if self._direct is not None:  # on the driver: each its own statement, RETURNING
            if self._one("claim the step", self._claim_insert, params).rows:
                attempt = 1
            else:
                taken = self._one("claim the step", CLAIM_STEP_RETURNING, params).first()
                attempt = None if taken is None else taken[0]
        else:
            with self._write_one("claim the step") as connection:
                inserted = connection.execute(self._claim_insert, params)
                returned = inserted.returns_rows
                if inserted.first() is not None if returned else inserted.rowcount == 1:
                    attempt = 1
                elif self.engine.dialect.update_returning:
                    attempt = connection.execute(CLAIM_STEP_RETURNING, params).scalar()
                else:
                    claimed = connection.execute(CLAIM_STEP, params).rowcount == 1
                    attempt = self._attempts(connection, saga_id, index) if claimed else None
        if attempt is not None:
            return Claim(ClaimOutcome.CLAIMED, token=token, attempt=int(attempt))
        return self._why_not_claimed(saga_id, index)

    @staticmethod
    def _attempts(connection: Connection, saga_id: str, index: int) -> int | None:
        c = saga_steps.c
        return connection.execute(
            select(c.attempts).where(c.saga_id == saga_id, c.idx == index)
        ).scalar()

    def _why_not_claimed(self, saga_id: str, index: int) -> Claim:
        c = saga_steps.c
        query = (
            select(c.status, c.result, sagas.c.status.label("saga_status"))
            .select_from(sagas.outerjoin(saga_steps, and_(c.saga_id == sagas.c.id, c.idx == index)))
            .where(sagas.c.id == saga_id)
        )
        row = self._read("read the step", lambda connection: connection.execute(query).first())
        if row is None:
            return Claim(ClaimOutcome.MISSING)
        if row.status is None:  # no row: the saga stopped before this step started
            halted = row.saga_status == SagaStatus.COMPENSATING
            return Claim(ClaimOutcome.HALTED if halted else ClaimOutcome.STOPPED)
        status = StepStatus(row.status)
        if status == StepStatus.SUCCEEDED and row.saga_status in (
            SagaStatus.RUNNING,
            SagaStatus.WAITING,
            SagaStatus.COMPLETED,
        ):
            return Claim(ClaimOutcome.DONE, result=row.result)
        if status == StepStatus.RUNNING and row.saga_status == SagaStatus.RUNNING:
            return Claim(ClaimOutcome.BUSY)
        if status == StepStatus.PENDING and row.saga_status == SagaStatus.COMPENSATING:
            # given back to be retried, then the saga stopped (a group's sibling failed,
            # a cancel): what waited for it to end goes on now
            return Claim(ClaimOutcome.HALTED)
        return Claim(ClaimOutcome.STOPPED)

    def complete_step(
        self, saga_id: str, index: int, token: str, result: Any, *, last: bool
    ) -> Completion:
        """Record a step's result (and the saga's completion after its last step).

        ``LOST``, writing nothing, if the caller no longer owns the step; after the last
        step ``COMPLETED``, or ``HALTED`` if the saga had stopped running (cancelled).
        """
        params = _recording(saga_id, index, token, result)
        if not last:
            recorded = self._one("record the step's result", COMPLETE_STEP, params)
            return Completion.RECORDED if recorded.rowcount == 1 else Completion.LOST
        if self.engine.dialect.name == "postgresql":
            (counts,) = self._one("record the step's result", COMPLETE_LAST_STEP_PG, params).rows
            steps, completed = int(counts[0]), int(counts[1])
        else:  # the saga's completion only if the record was the owner's (else nothing)
            done = self._in_turn(
                "record the step's result",
                (COMPLETE_STEP, COMPLETE_SAGA),
                params,
                go_on=lambda recorded: recorded.rowcount == 1,
            )
            steps = done[0].rowcount
            completed = done[1].rowcount if len(done) > 1 else 0
        if steps != 1:
            return Completion.LOST
        return Completion.COMPLETED if completed == 1 else Completion.HALTED

    def join_stage(
        self,
        saga_id: str,
        index: int,
        token: str,
        result: Any,
        *,
        ends: Sequence[int],
        final: bool,
    ) -> Join:
        """Record a joining step's result; see whether its stage is done with it.

        One transaction: it locks the saga's row first (``SELECT ... FOR UPDATE``; on
        SQLite the write transaction is the lock), so of the members of a group that
        finish at once each sees every member recorded before it, and exactly one
        sees them all. That one gets ``JOINED`` (or, with ``final``, the saga
        completes: ``COMPLETED``) and the branch ends' results in member order; the
        others get ``RECORDED``. ``HALTED``: recorded, but the saga is not running
        any more (it is compensated with the others); ``LOST``: not the owner, nothing
        written.
        """
        params = _recording(saga_id, index, token, result)
        c = saga_steps.c
        with self._write("record the step's result") as connection:
            saga = connection.execute(LOCK_SAGA_PLAN, params).first()
            status = None if saga is None else saga.status
            if connection.execute(COMPLETE_STEP, params).rowcount != 1:
                connection.rollback()
                return Join(Completion.LOST)
            if status != SagaStatus.RUNNING:
                return Join(Completion.HALTED)
            # the saga's row lock serialises the members: this plain read comes after it
            # (PostgreSQL: a fresh snapshot per statement; InnoDB: the read view is made
            # at a transaction's first plain read), so it sees every member before
            rows = connection.execute(
                select(c.idx, c.status, c.result).where(c.saga_id == saga_id, c.idx.in_(list(ends)))
            ).all()
            done = {row.idx: row.result for row in rows if row.status == StepStatus.SUCCEEDED}
            if len(done) < len(ends):
                return Join(Completion.RECORDED)
            results = tuple(done[end] for end in ends)
            if not final:
                assert saga is not None
                return Join(Completion.JOINED, results, saga.plan, aware(saga.created_at))
            connection.execute(COMPLETE_SAGA, params)
        return Join(Completion.COMPLETED, results)

    def fail_step(
        self,
        saga_id: str,
        index: int,
        token: str,
        error: Mapping[str, Any],
        *,
        saga_status: SagaStatus,
        step_status: StepStatus = StepStatus.FAILED,
        lock: bool = False,
        attempt: int | None = None,
        plan: bool = False,
    ) -> FailureRecord:
        """Record a step's final failure and move a running saga to ``saga_status``.

        ``step_status`` is ``TIMED_OUT`` for a timed-out step to be compensated.
        Writes nothing (false) if the caller no longer owns the step. ``lock``: take
        the saga's row first, as a join does (a group member: no deadlock with it).
        ``attempt``: the caller's claim's attempt number, if it knows it (the first
        attempt has no earlier errors to read). ``plan``: read the saga's plan with it
        (what the failure undoes). On PostgreSQL, without ``lock``, one statement.
        """
        now = utcnow()
        params = {
            "p_saga": saga_id,
            "p_index": index,
            "p_token": token,
            "p_error": dict(error),
            "p_now": now,
            "p_status": saga_status.value,
            "p_step_status": step_status.value,
            "p_finished": now if saga_status.is_terminal else None,
        }
        if attempt == 1:  # its claim made the row: no errors before this one
            params["p_attempt_errors"] = [_attempt_error("step", 1, error, now)]
            if plan and not lock and self.engine.dialect.name == "postgresql":
                (row,) = self._one("record the step's failure", FAIL_STEP_PG, params).rows
                if row.steps != 1:
                    return FailureRecord(recorded=False, moved=False)
                return FailureRecord(recorded=True, moved=row.sagas == 1, plan=row.plan)
        stored: dict[str, Any] | None = None
        with self._write("record the step's failure") as connection:
            if lock:
                connection.execute(LOCK_SAGA, params)
            if attempt != 1:
                params["p_attempt_errors"] = _attempt_errors(
                    connection, saga_id, index, token, "step", error, now
                )
            if connection.execute(FAIL_STEP, params).rowcount != 1:
                connection.rollback()
                return FailureRecord(recorded=False, moved=False)
            if plan and self.engine.dialect.update_returning:
                stored = connection.execute(FAIL_SAGA_RETURNING, params).scalar()
                moved = stored is not None
            else:
                moved = connection.execute(FAIL_SAGA, params).rowcount == 1
            if plan and stored is None:
                stored = connection.execute(SAGA_PLAN, params).scalar()
        return FailureRecord(recorded=True, moved=moved, plan=stored)

    def release_step(
        self,
        saga_id: str,
        index: int,
        token: str,
        error: Mapping[str, Any] | None,
        retry_at: datetime | None = None,
    ) -> None:
        """Give a claimed step back (it will be retried, due at ``retry_at``, or redelivered)."""
        params: dict[str, Any] = {
            "p_saga": saga_id, "p_index": index, "p_token": token, "p_error": error,
            "p_retry_at": None if retry_at is None else retry_at.replace(tzinfo=None),
            "p_attempt_errors": None,
        }  # fmt: skip
        with self._write("release the step") as connection:
            if error is not None:
                params["p_attempt_errors"] = _attempt_errors(
                    connection, saga_id, index, token, "step", error, utcnow()
                )
            connection.execute(RELEASE_STEP, params)

    # -- compensations ------------------------------------------------------------

    def claim_compensation(self, saga_id: str, index: int, token: str, lease: float) -> Claim:
        """Take ownership of the compensation of a succeeded (or in-doubt) step.

        Only while the saga is ``COMPENSATING``: an errback Celery fires on its own for
        a saga whose failure was never recorded (a lost worker) finds it ``RUNNING``.
        """
        now = utcnow()
        params = {
            "p_saga": saga_id,
            "p_index": index,
            "p_token": token,
            "p_now": now,
            "p_lease": now + timedelta(seconds=lease),
        }
        if self._autocommit is not None and self.engine.dialect.update_returning:
            # One round trip: the claim returns the step's row when it took.
            taken = self._one(
                "claim the compensation", CLAIM_COMPENSATION_RETURNING, params
            ).first()
            if taken is not None:
                step = step_record(taken)
                attempt = step.compensation_attempts
                return Claim(ClaimOutcome.CLAIMED, token=token, attempt=attempt, step=step)
            row = self._read(
                "read the compensation",
                lambda connection: connection.execute(COMPENSATION_STATE, params).first(),
            )
            return self._why_compensation(row, claimed=False, token=token)
        with self._write("claim the compensation") as connection:
            claimed = connection.execute(CLAIM_COMPENSATION, params).rowcount == 1
            row = connection.execute(COMPENSATION_STATE, params).first()
        return self._why_compensation(row, claimed=claimed, token=token)

    @staticmethod
    def _why_compensation(row: Row[Any] | None, *, claimed: bool, token: str) -> Claim:
        """The claim's outcome, from the step's row and its saga's status."""
        if row is None:
            return Claim(ClaimOutcome.MISSING)
        if row.status is None:  # the step never started: nothing to undo
            return Claim(ClaimOutcome.STOPPED)
        step = step_record(row)
        if claimed:
            return Claim(
                ClaimOutcome.CLAIMED,
                token=token,
                attempt=step.compensation_attempts,
                step=step,
            )
        if row.saga_status == SagaStatus.RUNNING:
            return Claim(ClaimOutcome.RUNNING, step=step)
        if step.status in (StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED):
            return Claim(ClaimOutcome.DONE, step=step)
        if step.status == StepStatus.COMPENSATING:
            return Claim(ClaimOutcome.BUSY, step=step)
        return Claim(ClaimOutcome.STOPPED, step=step)  # never succeeded: nothing to undo

    def mark_in_doubt(
        self,
        saga_id: str,
        indices: Sequence[int],
        error: Mapping[str, Any],
        *,
        force: bool = False,
    ) -> int:
        """Steps whose owner was lost while the saga compensates: ``IN_DOUBT``, to undo.

        Only steps still ``RUNNING`` under a lease that ran out (any lease with
        ``force``: the operator knows the owner is dead). Returns how many it marked.
        """
        now = utcnow()
        c = saga_steps.c
        where = [c.saga_id == saga_id, c.idx.in_(list(indices)), c.status == StepStatus.RUNNING]
        if not force:
            where.append(or_(c.lease_expires_at.is_(None), c.lease_expires_at < now))
        with self._write_one("mark the steps in doubt") as connection:
            marked = connection.execute(
                update(saga_steps)
                .where(*where)
                .values(
                    status=StepStatus.IN_DOUBT,
                    error=dict(error),
                    finished_at=now,
                    lease_expires_at=None,
                    claim=None,
                )
            )
        return marked.rowcount

    def queue_compensations(self, saga_id: str, indices: Sequence[int], due: float) -> int:
        """Mark compensations as sent: ``COMPENSATING`` without an owner, for ``due`` s.

        Only those still to undo, or whose owner (or queued message) is overdue; their
        message claims them. Returns how many it marked (0: another caller sent them).
        """
        now = utcnow()
        c = saga_steps.c
        with self._write_one("queue the compensations") as connection:
            marked = connection.execute(
                update(saga_steps)
                .where(
                    c.saga_id == saga_id,
                    c.idx.in_(list(indices)),
                    or_(
                        c.status.in_(TO_UNDO),
                        and_(c.status == StepStatus.COMPENSATING, c.lease_expires_at < now),
                    ),
                )
                .values(
                    status=StepStatus.COMPENSATING,
                    claim=None,
                    lease_expires_at=now + timedelta(seconds=due),
                )
            )
        return marked.rowcount

    def renew_leases(self, claims: Sequence[tuple[str, int, str]], lease: float) -> int:
        """Extend the leases of steps still owned by these claims ``(saga, index, token)``.

        The heartbeat of a worker process: one statement for all its running steps.
        Returns how many leases it renewed.
        """
        if not claims:
            return 0
        c = saga_steps.c
        owned = or_(
            *(and_(c.saga_id == saga, c.idx == index, c.claim == token)
              for saga, index, token in claims)
        )  # fmt: skip
        until = utcnow() + timedelta(seconds=lease)
        with self._write_one("renew the leases") as connection:
            renewed = connection.execute(
                update(saga_steps)
                .where(owned, c.status.in_([StepStatus.RUNNING, StepStatus.COMPENSATING]))
                .values(lease_expires_at=until)
            )
        return renewed.rowcount

    def finish_compensation(
        self,
        saga_id: str,
        index: int,
        token: str,
        *,
        error: Mapping[str, Any] | None = None,
        gave_up: bool = False,
        retry_in: float = 0.0,
    ) -> bool:
        """Record a compensation attempt: done (no error), to be retried, or given up.

        A compensation to be retried is given back (no owner) until its retry is due in
        ``retry_in`` seconds: nothing else sends it before then, and its retry claims it.
        """
        now = utcnow()
        values: dict[str, Any]
        if error is None:  # one statement: in autocommit where the server allows
            params = {"p_saga": saga_id, "p_index": index, "p_token": token, "p_now": now}
            return self._one("record the compensation", COMPENSATION_DONE, params).rowcount == 1
        if gave_up:
            values = {
                "status": StepStatus.COMPENSATION_FAILED,
                "compensation_error": dict(error),
                "compensation_finished_at": now,
                "lease_expires_at": None,
            }
        else:  # keep it COMPENSATING, without an owner, so that the retry can claim it
            values = {
                "compensation_error": dict(error),
                "lease_expires_at": now + timedelta(seconds=retry_in),
                "claim": None,
            }
        with self._write("record the compensation") as connection:
            values["attempt_errors"] = _attempt_errors(
                connection, saga_id, index, token, "compensation", error, now
            )
            return (
                connection.execute(
                    update(saga_steps)
                    .where(*_owned_compensation(saga_id, index, token))
                    .values(**values)
                ).rowcount
                == 1
            )

    def finish_last_compensation(
        self, saga_id: str, index: int, token: str
    ) -> tuple[bool, tuple[SagaRecord, list[StepRecord]] | None]:
        """Record a compensation that returned, then read the whole saga after it.

        What the last compensation of a chain does before its saga is settled: whether
        it was recorded (False: the caller no longer owned it), and the saga as
        :meth:`load_saga` reads it, after the record's commit (None: the store does not
        know it). On PostgreSQL the record and the two reads go in one round trip.
        """
        params = {"p_saga": saga_id, "p_index": index, "p_token": token, "p_now": utcnow()}
        doing = "record the compensation"
        done = self._on_driver(
            doing,
            lambda direct: direct.write_then_read(COMPENSATION_DONE, (SAGA_ROW, STEP_ROWS), params),
        )
        if done is None:
            recorded = self._one(doing, COMPENSATION_DONE, params).rowcount == 1
            return recorded, self.load_saga(saga_id)
        written, found, rows = done
        return written.rowcount == 1, _loaded(saga_id, found.first(), rows.rows)

    def give_back_compensation(self, saga_id: str, index: int, token: str, delay: float) -> bool:
        """Give a claimed compensation back unrun: no attempt counted, due in ``delay`` s.

        (Its task is not registered on the worker that claimed it.) False: not the owner.
        """
        now = utcnow()
        c = saga_steps.c
        with self._write_one("give the compensation back") as connection:
            given = connection.execute(
                update(saga_steps)
                .where(*_owned_compensation(saga_id, index, token))
                .values(
                    claim=None,
                    lease_expires_at=now + timedelta(seconds=delay),
                    compensation_attempts=c.compensation_attempts - 1,
                )
            )
        return given.rowcount == 1

    def cancel_saga(self, saga_id: str, error: Mapping[str, Any]) -> bool:
        """Stop a running (or waiting) saga: no step may be claimed from now on.

        Moves it to ``COMPENSATING`` with ``error`` (a wait it was at goes back to
        ``PENDING``: never reached its end); returns False if it was not running.
        """
        now = utcnow()

        def stop(status: SagaStatus) -> Executable:
            return (
                update(sagas)
                .where(sagas.c.id == saga_id, sagas.c.status == status)
                .values(status=SagaStatus.COMPENSATING, error=dict(error), updated_at=now)
            )

        if self.get_status(saga_id) is SagaStatus.RUNNING:  # one statement, as always
            with self._write_one("cancel the saga") as connection:
                if connection.execute(stop(SagaStatus.RUNNING)).rowcount == 1:
                    return True
        with self._write("cancel the saga") as connection:  # it waits (or went on meanwhile)
            cancelled = connection.execute(stop(SagaStatus.WAITING))
            if cancelled.rowcount == 1:
                connection.execute(
                    update(saga_steps)
                    .where(
                        saga_steps.c.saga_id == saga_id,
                        saga_steps.c.status == StepStatus.WAITING,
                    )
                    .values(status=StepStatus.PENDING, lease_expires_at=None)
                )
        return cancelled.rowcount == 1

    def reopen_failed_compensations(self, saga_id: str) -> list[int] | None:
        """Make a ``FAILED`` saga's given-up compensations claimable again.

        The saga goes back to ``COMPENSATING``, those steps to ``SUCCEEDED`` (their last
        compensation error kept). Returns their indices, newest first (none: the saga
        failed without undoing); None if the saga was not ``FAILED``.
        """
        now = utcnow()
        c = saga_steps.c
        with self._write("reopen the failed compensations") as connection:
            reopened = connection.execute(
                update(sagas)
                .where(sagas.c.id == saga_id, sagas.c.status == SagaStatus.FAILED)
                .values(status=SagaStatus.COMPENSATING, finished_at=None, updated_at=now)
            ).rowcount
            if reopened != 1:
                return None
            failed = c.saga_id == saga_id, c.status == StepStatus.COMPENSATION_FAILED
            indices = list(
                connection.execute(select(c.idx).where(*failed).order_by(c.idx.desc())).scalars()
            )
            connection.execute(
                update(saga_steps).where(*failed).values(status=StepStatus.SUCCEEDED)
            )
        return indices

    def finish_saga_compensation(self, saga_id: str) -> bool:
        """End a compensating saga: ``FAILED`` if a compensation gave up, else ``COMPENSATED``.

        Returns whether this call ended it (False: it had ended already).
        """
        params = {"p_saga": saga_id, "p_now": utcnow()}
        return self._one("finish the saga", END_COMPENSATION, params).rowcount == 1

    def note_recovery_error(self, saga_id: str, error: Mapping[str, Any]) -> None:
        """Keep on the saga what the recovery sweep could not do with it."""
        with self._write_one("record the recovery error") as connection:
            connection.execute(
                update(sagas).where(sagas.c.id == saga_id).values(recovery_error=dict(error))
            )

    def expire_leases(self, saga_id: str | None = None) -> int:
        """End the leases of running steps and compensations now, as if their owners died.

        For tests (:meth:`celery_saga.testing.Faults.recover`): a live owner keeps
        running but can no longer record anything once another delivery claims its step.
        Returns how many claims it ended.
        """
        c = saga_steps.c
        now = utcnow()
        where = [
            c.status.in_([StepStatus.RUNNING, StepStatus.COMPENSATING]),
            c.lease_expires_at > now,
        ]
        if saga_id is not None:
            where.append(c.saga_id == saga_id)
        with self._write_one("expire the leases") as connection:
            expired = connection.execute(
                update(saga_steps).where(*where).values(lease_expires_at=now)
            )
        return expired.rowcount

    # -- reading ------------------------------------------------------------------

    def get_saga(self, saga_id: str) -> SagaRecord | None:
        """The saga's row, or None."""
        query = select(sagas).where(sagas.c.id == saga_id)
        row = self._read("read the saga", lambda c: c.execute(query).first(), one=True)
        return None if row is None else saga_record(row)

    def unfinished_sagas(self, created_before: datetime, limit: int) -> list[SagaRecord]:
        """Sagas still running or compensating that the recovery sweep should look at.

        Those with a step or compensation whose lease ran out (its worker died), or a
        wait that is due, however young, first; then those stored before
        ``created_before``, oldest first. A waiting saga is looked at only when its wait
        is due (its timeout, its sleep's end or its deadline) or the child saga it waits
        for has ended: sagas waiting for days never crowd the batch.
        """
        c = saga_steps.c
        lost = exists().where(  # or a wait that is due
            c.saga_id == sagas.c.id,
            c.status.in_([StepStatus.RUNNING, StepStatus.COMPENSATING, StepStatus.WAITING]),
            c.lease_expires_at < utcnow(),
        )
        child = sagas.alias("child")
        ended_child = (  # a parent waiting at a child saga that has ended
            exists()
            .where(
                child.c.parent_id == sagas.c.id,
                child.c.status.in_(_TERMINAL),
                c.saga_id == sagas.c.id,
                c.idx == child.c.parent_step,
                c.status == StepStatus.WAITING,
            )
            .correlate(sagas)
        )
        moving = [SagaStatus.RUNNING, SagaStatus.COMPENSATING]
        old = and_(
            sagas.c.status.in_(moving), sagas.c.created_at < created_before.replace(tzinfo=None)
        )
        due = or_(lost, and_(sagas.c.status == SagaStatus.WAITING, ended_child))
        query = (
            select(sagas)
            .where(sagas.c.status.in_([*moving, SagaStatus.WAITING]), or_(old, due))
            .order_by(case((due, 0), else_=1), sagas.c.created_at)
            .limit(limit)
        )
        rows = self._read("find unfinished sagas", lambda c: c.execute(query).all())
        return [saga_record(row) for row in rows]

    def list_sagas(
        self,
        *,
        statuses: Sequence[SagaStatus] = (),
        name: str | None = None,
        created_before: datetime | None = None,
        created_after: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        version: str | None = None,
        parked: bool = False,
        parent: str | None = None,
    ) -> list[SagaRecord]:
        """Sagas matching the filters, newest first, one page of at most ``limit``.

        ``parked``: only those waiting for a worker that has one of their tasks;
        ``parent``: only the child sagas of this saga.
        """
        conditions: list[ColumnElement[bool]] = []
        if parent is not None:
            conditions.append(sagas.c.parent_id == parent)
        if version is not None:
            conditions.append(sagas.c.version == version)
        if parked:
            conditions.append(sagas.c.parked.is_not(None))
        if statuses:
            conditions.append(sagas.c.status.in_([SagaStatus(s).value for s in statuses]))
        if name is not None:
            conditions.append(sagas.c.name == name)
        if created_before is not None:
            conditions.append(sagas.c.created_at < created_before.replace(tzinfo=None))
        if created_after is not None:
            conditions.append(sagas.c.created_at >= created_after.replace(tzinfo=None))
        query = (
            select(sagas)
            .where(*conditions)
            .order_by(sagas.c.created_at.desc(), sagas.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        rows = self._read("list sagas", lambda c: c.execute(query).all())
        return [saga_record(row) for row in rows]

    def purge_sagas(
        self,
        finished_before: datetime,
        statuses: Sequence[SagaStatus] = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED),
        *,
        dry_run: bool = False,
        batch: int = 2000,
    ) -> int:
        """Delete finished sagas (and their steps) that ended before ``finished_before``.

        Only terminal ``statuses`` may be given: a running or compensating saga is never
        touched. A child saga goes with its parent (whatever its own status), never alone:
        its parent may still undo it. Deletes in batches of ``batch`` sagas, each its own
        transaction, so a large purge neither holds long locks nor is lost as a whole on
        an error. ``dry_run`` only counts. Returns how many sagas were (or would be)
        deleted, not counting their child sagas.
        """
        wanted = [SagaStatus(status) for status in statuses]
        for status in wanted:
            if not status.is_terminal:
                raise SagaValidationError(
                    f"purge deletes finished sagas only; {status.value} is not finished"
                )
        if not wanted:
            return 0
        due = and_(
            sagas.c.status.in_([status.value for status in wanted]),
            sagas.c.finished_at < finished_before.replace(tzinfo=None),
            sagas.c.parent_id.is_(None),  # a child saga goes with its parent, never alone
        )
        if dry_run:
            count = select(func.count()).select_from(sagas).where(due)
            return int(self._read("count sagas to purge", lambda c: c.execute(count).scalar_one()))
        deleted = 0
        while True:
            with self._write("purge sagas") as connection:
                ids = connection.execute(select(sagas.c.id).where(due).limit(batch)).scalars()
                chosen = list(ids)
                if not chosen:
                    return deleted
                family, generation = list(chosen), chosen
                while generation:  # their child sagas, and theirs
                    generation = list(
                        connection.execute(
                            select(sagas.c.id).where(sagas.c.parent_id.in_(generation))
                        ).scalars()
                    )
                    family += generation
                connection.execute(delete(saga_steps).where(saga_steps.c.saga_id.in_(family)))
                connection.execute(delete(sagas).where(sagas.c.id.in_(family[len(chosen) :])))
                deleted += connection.execute(
                    delete(sagas).where(sagas.c.id.in_(chosen), due)
                ).rowcount

    def get_status(self, saga_id: str) -> SagaStatus | None:
        """Only the saga's status (what ``SagaResult.get`` polls), on the driver where it can."""
        params = {"p_saga": saga_id}
        self.ensure_schema()
        found = self._read_direct("read the saga's status", SAGA_STATUS, params, alone=True)
        if found is not None:
            row = found.first()
            status = None if row is None else row[0]
        else:
            status = self._read(
                "read the saga's status",
                lambda c: c.execute(SAGA_STATUS, params).scalar(),
                one=True,
            )
        return None if status is None else SagaStatus(status)

    def get_steps(self, saga_id: str, plan: Mapping[str, Any] | None = None) -> list[StepRecord]:
        """The saga's steps in plan order; steps not started yet are ``PENDING``.

        ``plan``: the saga's stored plan, when the caller has read it already.
        """
        query = select(saga_steps).where(saga_steps.c.saga_id == saga_id)

        def read(connection: Connection) -> tuple[Any, Sequence[Row[Any]]]:
            stored = plan
            if stored is None:
                stored = connection.execute(
                    select(sagas.c.plan).where(sagas.c.id == saga_id)
                ).scalar()
            return stored, connection.execute(query).all()

        stored, rows = self._read("read the steps", read)
        return _in_plan_order(saga_id, stored, rows)

    def load_saga(self, saga_id: str) -> tuple[SagaRecord, list[StepRecord]] | None:
        """The saga's row and its steps in plan order, read together; None if unknown."""
        self.ensure_schema()
        params = {"p_saga": saga_id}

        def read(connection: Connection) -> tuple[Row[Any] | None, Sequence[Any]]:
            row = connection.execute(SAGA_ROW, params).first()
            return row, ([] if row is None else connection.execute(STEP_ROWS, params).all())

        # on the driver where it can (PostgreSQL): no BEGIN and ROLLBACK around the two
        found = self._read_direct("read the saga", SAGA_ROW, params)
        if found is not None and found.first() is None:
            return None
        steps = None if found is None else self._read_direct("read the saga", STEP_ROWS, params)
        if found is None or steps is None:
            row, rows = self._read("read the saga", read)
        else:
            row, rows = found.first(), steps.rows
        return _loaded(saga_id, row, rows)
