"""The statements of the happy path, built once with bind parameters.

Building and cache-keying a statement on every call costs more CPU than running it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Executable,
    Insert,
    Integer,
    Select,
    String,
    Update,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ..status import SagaStatus, StepStatus
from .schema import saga_steps, sagas

__all__ = [
    "CLAIM_COMPENSATION",
    "CLAIM_COMPENSATION_RETURNING",
    "CLAIM_STEP",
    "CLAIM_STEP_RETURNING",
    "COMPENSATION_DONE",
    "COMPENSATION_STATE",
    "COMPLETE_LAST_STEP_PG",
    "COMPLETE_SAGA",
    "COMPLETE_STEP",
    "END_COMPENSATION",
    "FAIL_SAGA",
    "FAIL_SAGA_RETURNING",
    "FAIL_STEP",
    "FAIL_STEP_PG",
    "INSERT_SAGA",
    "LOCK_SAGA",
    "LOCK_SAGA_PLAN",
    "RELEASE_STEP",
    "SAGA_PLAN",
    "SAGA_ROW",
    "SAGA_STATUS",
    "STEP_ROWS",
    "TO_UNDO",
    "claim_by_insert",
]

_c = saga_steps.c
INSERT_SAGA = insert(sagas)
_SAGA_IS_RUNNING = exists().where(
    sagas.c.id == bindparam("p_saga"), sagas.c.status == SagaStatus.RUNNING
)
#: The same, the saga's row share-locked: on PostgreSQL a claim whose check runs while
#: a failure or a cancel moves the saga out of RUNNING waits for it, then sees it (a
#: plain read would see the snapshot before it, and the step would run after the saga's
#: compensations were decided). InnoDB's subqueries of a write lock what they read.
_SAGA_IS_RUNNING_LOCKED = exists(
    select(literal(1))
    .where(sagas.c.id == bindparam("p_saga"), sagas.c.status == SagaStatus.RUNNING)
    .with_for_update(read=True)
)


def _claim_step(running: Any) -> Update:
    return (
        update(saga_steps)
        .where(
            _c.saga_id == bindparam("p_saga"),
            _c.idx == bindparam("p_index"),
            or_(
                _c.status == StepStatus.PENDING,
                and_(_c.status == StepStatus.RUNNING, _c.lease_expires_at < bindparam("p_now")),
            ),
            running,
        )
        .values(
            status=StepStatus.RUNNING,
            attempts=_c.attempts + 1,
            claim=bindparam("p_token"),
            lease_expires_at=bindparam("p_lease"),
            started_at=func.coalesce(_c.started_at, bindparam("p_now")),
            args=bindparam("p_args", type_=_c.args.type),
            kwargs=bindparam("p_kwargs", type_=_c.kwargs.type),
        )
    )


CLAIM_STEP = _claim_step(_SAGA_IS_RUNNING)
#: (PostgreSQL, and SQLite, where the lock is the write transaction itself)
CLAIM_STEP_RETURNING = _claim_step(_SAGA_IS_RUNNING_LOCKED).returning(_c.attempts)
_OWNED_RUNNING_STEP = (
    _c.saga_id == bindparam("p_saga"),
    _c.idx == bindparam("p_index"),
    _c.claim == bindparam("p_token"),
    _c.status == StepStatus.RUNNING,
)
COMPLETE_STEP = (
    update(saga_steps)
    .where(*_OWNED_RUNNING_STEP)
    .values(
        status=StepStatus.SUCCEEDED,
        result=bindparam("p_result", type_=_c.result.type),
        finished_at=bindparam("p_now"),
        lease_expires_at=None,
    )
)
FAIL_STEP = (
    update(saga_steps)
    .where(*_OWNED_RUNNING_STEP)
    .values(
        status=bindparam("p_step_status", type_=String),
        error=bindparam("p_error", type_=_c.error.type),
        attempt_errors=bindparam("p_attempt_errors", type_=_c.attempt_errors.type),
        finished_at=bindparam("p_now"),
        lease_expires_at=None,
    )
)
FAIL_SAGA = (
    update(sagas)
    .where(sagas.c.id == bindparam("p_saga"), sagas.c.status == SagaStatus.RUNNING)
    .values(
        status=bindparam("p_status", type_=String),
        error=bindparam("p_error", type_=sagas.c.error.type),
        failed_step=bindparam("p_index"),
        updated_at=bindparam("p_now"),
        finished_at=bindparam("p_finished", type_=sagas.c.finished_at.type),
    )
)
#: The same, returning the saga's plan (what the failure undoes) when it moved the saga.
FAIL_SAGA_RETURNING = FAIL_SAGA.returning(sagas.c.plan)
RELEASE_STEP = (
    update(saga_steps)
    .where(*_OWNED_RUNNING_STEP)
    .values(
        status=StepStatus.PENDING,
        error=bindparam("p_error", type_=_c.error.type),
        attempt_errors=bindparam("p_attempt_errors", type_=_c.attempt_errors.type),
        # when its retry is due: the recovery sweep leaves it alone until then
        lease_expires_at=bindparam("p_retry_at", type_=_c.lease_expires_at.type),
    )
)
COMPLETE_SAGA = (
    update(sagas)
    .where(sagas.c.id == bindparam("p_saga"), sagas.c.status == SagaStatus.RUNNING)
    .values(
        status=SagaStatus.COMPLETED, finished_at=bindparam("p_now"), updated_at=bindparam("p_now")
    )
)
SAGA_STATUS = select(sagas.c.status).where(sagas.c.id == bindparam("p_saga"))
SAGA_PLAN = select(sagas.c.plan).where(sagas.c.id == bindparam("p_saga"))
#: The saga's status, its row locked until the transaction ends (a join's first statement).
LOCK_SAGA = SAGA_STATUS.with_for_update()
#: The same with its plan and start: what the member that joins its stage sends next.
LOCK_SAGA_PLAN = (
    select(sagas.c.status, sagas.c.plan, sagas.c.created_at)
    .where(sagas.c.id == bindparam("p_saga"))
    .with_for_update()
)

#: Step statuses whose compensation is still to run.
TO_UNDO = (StepStatus.SUCCEEDED, StepStatus.TIMED_OUT, StepStatus.IN_DOUBT)
#: Claim a compensation: a step to undo (or one whose compensation's owner lost its
#: lease, or was given back to be retried) of a saga that is compensating.
CLAIM_COMPENSATION = (
    update(saga_steps)
    .where(
        _c.saga_id == bindparam("p_saga"),
        _c.idx == bindparam("p_index"),
        or_(
            *(_c.status == status for status in TO_UNDO),  # (not IN: no list to expand)
            and_(
                _c.status == StepStatus.COMPENSATING,
                # its owner lost its lease, or gave it back to be retried
                or_(_c.lease_expires_at < bindparam("p_now"), _c.claim.is_(None)),
            ),
        ),
        exists().where(
            sagas.c.id == bindparam("p_saga"), sagas.c.status == SagaStatus.COMPENSATING
        ),
    )
    .values(
        status=StepStatus.COMPENSATING,
        compensation_attempts=_c.compensation_attempts + 1,
        claim=bindparam("p_token"),
        lease_expires_at=bindparam("p_lease"),
        compensation_started_at=func.coalesce(_c.compensation_started_at, bindparam("p_now")),
    )
)
CLAIM_COMPENSATION_RETURNING = CLAIM_COMPENSATION.returning(*saga_steps.c)
#: The step and its saga's status, to say why a compensation was not claimed.
COMPENSATION_STATE = (
    select(saga_steps, sagas.c.status.label("saga_status"))
    .select_from(
        sagas.outerjoin(saga_steps, and_(_c.saga_id == sagas.c.id, _c.idx == bindparam("p_index")))
    )
    .where(sagas.c.id == bindparam("p_saga"))
)
#: A saga's row, and its steps' rows (what ``load_saga`` reads).
SAGA_ROW = select(sagas).where(sagas.c.id == bindparam("p_saga"))
STEP_ROWS = select(saga_steps).where(_c.saga_id == bindparam("p_saga"))
#: End a compensating saga: ``FAILED`` if a compensation gave up, else ``COMPENSATED``.
END_COMPENSATION = (
    update(sagas)
    .where(
        sagas.c.id == bindparam("p_saga"),
        or_(sagas.c.status == SagaStatus.RUNNING, sagas.c.status == SagaStatus.COMPENSATING),
    )
    .values(
        status=case(
            (
                exists().where(
                    _c.saga_id == bindparam("p_saga"),
                    _c.status == StepStatus.COMPENSATION_FAILED,
                ),
                SagaStatus.FAILED,
            ),
            else_=SagaStatus.COMPENSATED,
        ),
        finished_at=bindparam("p_now"),
        updated_at=bindparam("p_now"),
    )
)
#: A compensation that returned.
COMPENSATION_DONE = (
    update(saga_steps)
    .where(
        _c.saga_id == bindparam("p_saga"),
        _c.idx == bindparam("p_index"),
        _c.claim == bindparam("p_token"),
        _c.status == StepStatus.COMPENSATING,
    )
    .values(
        status=StepStatus.COMPENSATED,
        compensation_error=None,
        compensation_finished_at=bindparam("p_now"),
        lease_expires_at=None,
    )
)


def _complete_last_step_in_one_statement() -> Select[tuple[int, int]]:
    """PostgreSQL: record the last step and complete the saga in one statement.

    ``WITH step AS (UPDATE steps ... RETURNING), saga AS (UPDATE sagas ... WHERE id =
    :saga AND EXISTS step) SELECT <steps updated>, <sagas completed>``: one round trip, no
    BEGIN/COMMIT. (The saga's row is found by its key: ``id IN (SELECT ... FROM step)``
    let the planner read every running saga for it.)
    """
    step = COMPLETE_STEP.returning(_c.saga_id).cte("completed_step")
    saga = (
        COMPLETE_SAGA.where(select(step.c.saga_id).exists())
        .returning(sagas.c.id)
        .cte("completed_saga")
    )
    steps = select(func.count()).select_from(step).scalar_subquery()
    completed = select(func.count()).select_from(saga).scalar_subquery()
    return select(steps, completed).add_cte(saga)


COMPLETE_LAST_STEP_PG = _complete_last_step_in_one_statement()


def _fail_step_in_one_statement() -> Select[Any]:
    """PostgreSQL: record a step's final failure, move its saga, read its plan: one statement.

    ``WITH step AS (UPDATE steps ... RETURNING), saga AS (UPDATE sagas ... WHERE id =
    :saga AND EXISTS step) SELECT <steps updated> AS steps, <sagas moved> AS sagas,
    <the plan> AS plan``.
    """
    step = FAIL_STEP.returning(_c.saga_id).cte("failed_step")
    saga = FAIL_SAGA.where(select(step.c.saga_id).exists()).returning(sagas.c.id).cte("failed_saga")
    steps = select(func.count()).select_from(step).scalar_subquery()
    moved = select(func.count()).select_from(saga).scalar_subquery()
    return select(
        steps.label("steps"), moved.label("sagas"), SAGA_PLAN.scalar_subquery().label("plan")
    ).add_cte(saga)


FAIL_STEP_PG = _fail_step_in_one_statement()


def claim_by_insert(dialect: str, returning: bool) -> Executable:
    """A step's first claim creates its row, if the saga is running and no row exists yet.

    ``INSERT INTO steps ... SELECT <values> WHERE <saga is running>``, ignoring a
    duplicate key (another delivery claimed first, or an earlier attempt left the row).
    """
    columns = [
        "saga_id", "idx", "stage", "task", "compensate", "status", "attempts", "claim",
        "lease_expires_at", "started_at", "args", "kwargs", "compensation_attempts",
    ]  # fmt: skip
    values = select(
        bindparam("p_saga", type_=String),
        bindparam("p_index", type_=Integer),
        bindparam("p_stage", type_=Integer),
        bindparam("p_task", type_=String),
        bindparam("p_compensate", type_=String),
        literal(StepStatus.RUNNING.value, String),
        literal(1, Integer),
        bindparam("p_token", type_=String),
        bindparam("p_lease", type_=_c.lease_expires_at.type),
        bindparam("p_now", type_=_c.started_at.type),
        bindparam("p_args", type_=_c.args.type),
        bindparam("p_kwargs", type_=_c.kwargs.type),
        literal(0, Integer),
    ).where(_SAGA_IS_RUNNING_LOCKED if dialect == "postgresql" else _SAGA_IS_RUNNING)
    stmt: Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(saga_steps).from_select(columns, values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(saga_steps).from_select(columns, values).on_conflict_do_nothing()
    else:
        stmt = mysql.insert(saga_steps).from_select(columns, values).prefix_with("IGNORE")
    # Some drivers report no rowcount for INSERT ... SELECT: ask for the row back instead.
    return stmt.returning(_c.attempts) if returning else stmt
