"""``celery_saga.install(app)``: register the internal tasks and bind the saga steps."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_ready

from .compensation import register_tasks
from .recovery import register_recovery_task
from .retention import add_purge_schedule, register_purge_task
from .step import bind_steps
from .worker import check_store

__all__ = ["install"]

_INSTALLED_ATTR = "_celery_saga_installed"


def _on_after_finalize(sender: Celery, **_: Any) -> None:
    bind_steps(sender)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """A worker starting: say at once (ERROR, naming it) if its saga store is unreachable."""
    app = getattr(sender, "app", None)
    if app is not None and app.__dict__.get(_INSTALLED_ATTR):
        check_store(app)


def install(app: Celery) -> Celery:
    """Make a Celery app saga-ready; calling it again does nothing.

    Registers the ``celery_saga.*`` tasks, puts ``celery_saga.purge`` in the beat
    schedule (retention, see ``saga_result_expires``) and binds every ``@saga_step`` task of the
    app (``@shared_task`` ones included) when the app is finalized. Call it where the
    app is created, so that workers and producers both run it.

    .. versionadded:: 0.1
    """
    if app.__dict__.get(_INSTALLED_ATTR):
        return app
    setattr(app, _INSTALLED_ATTR, True)
    register_tasks(app)
    register_recovery_task(app)
    register_purge_task(app)
    add_purge_schedule(app)
    app.on_after_finalize.connect(_on_after_finalize, sender=app, weak=False)
    worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="celery_saga.check_store")
    if getattr(app, "finalized", False):
        bind_steps(app)
    return app
