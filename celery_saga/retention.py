"""Retention: finished sagas are deleted once older than ``saga_result_expires``.

:func:`purge` deletes, in batches, the sagas (and their steps) that finished before a
cut-off; a running or compensating saga is never touched, and ``FAILED`` sagas, which
need a person, are kept unless asked for. The task ``celery_saga.purge`` runs it with
``saga_result_expires`` (default 7 days; ``None`` turns it off);
:func:`celery_saga.install` puts it in the beat schedule, daily at 04:30 as Celery's own
``celery.backend_cleanup``. ``celery saga purge --older-than 7d`` runs it by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, Task
from celery.schedules import crontab
from celery.utils.log import get_task_logger

from ._runtime import get_store
from .config import get_config
from .status import SagaStatus

__all__ = ["PURGED_BY_DEFAULT", "PURGE_TASK", "add_purge_schedule", "purge", "register_purge_task"]

logger = get_task_logger(__name__)

PURGE_TASK = "celery_saga.purge"
#: What :func:`purge` deletes unless told otherwise (``FAILED`` sagas wait for a person).
PURGED_BY_DEFAULT = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)


def purge(
    app: Celery,
    older_than: float | timedelta,
    statuses: Sequence[SagaStatus | str] = PURGED_BY_DEFAULT,
    *,
    dry_run: bool = False,
) -> int:
    """Delete the finished sagas that ended more than ``older_than`` (seconds) ago.

    Returns how many were deleted (with ``dry_run``: how many would be). Raises
    :class:`~celery_saga.SagaValidationError` for a status that is not terminal.

    .. versionadded:: 0.1
    """
    seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
    cutoff = datetime.now(UTC) - timedelta(seconds=seconds)
    wanted = [SagaStatus(status) for status in statuses]
    return get_store(app).purge_sagas(cutoff, wanted, dry_run=dry_run)


def _purge_task(self: Task[Any, Any]) -> int:
    """The body of ``celery_saga.purge``: delete what ``saga_result_expires`` says is old."""
    expires = get_config(self.app).result_expires
    if expires is None:
        return 0
    deleted = purge(self.app, expires)
    if deleted:
        logger.info("purged %d finished sagas older than %g s", deleted, expires)
    return deleted


def register_purge_task(app: Celery) -> None:
    """Register ``celery_saga.purge`` on the app."""
    app.task(name=PURGE_TASK, bind=True, ignore_result=True, shared=False)(_purge_task)


def add_purge_schedule(app: Celery) -> None:
    """Put ``celery_saga.purge`` in the beat schedule (entry ``"celery_saga.purge"``).

    Lazily, as ``add_periodic_task`` does: the setting is read when the task runs, so
    it may be changed after :func:`celery_saga.install`.
    """
    app.add_periodic_task(
        crontab(minute="30", hour="4"), app.signature(PURGE_TASK), name=PURGE_TASK
    )
