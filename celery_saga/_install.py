"""``celery_saga.install(app)``: register the internal tasks and bind the saga steps."""

from __future__ import annotations

from importlib import metadata
from typing import Any, cast

from celery import Celery, current_app
from celery.signals import worker_process_init, worker_ready
from celery.utils.log import get_task_logger

from ._runtime import get_store
from .compensation import register_tasks
from .config import recovery_interval
from .errors import SagaConfigurationError
from .parking import connect_parking
from .recovery import RECOVER_TASK, register_recovery_task
from .retention import add_purge_schedule, register_purge_task
from .step import bind_steps
from .timers import register_wait_task
from .worker import check_store

__all__ = ["install"]

_INSTALLED_ATTR = "_celery_saga_installed"

logger = get_task_logger("celery_saga.execution")

#: This project's distribution, and another project's that provides ``celery_saga`` too.
DISTRIBUTION = "celery-sagas"
OTHER_DISTRIBUTION = "celery-saga"
#: The start of this project's summary: a ``celery-saga`` with it is this project under its
#: former name (e.g. a stale ``celery_saga.egg-info`` in a checkout), not the other one.
_OWN_SUMMARY = "Sagas for Celery"


def check_distribution() -> None:
    """Refuse to run beside the other ``celery-saga`` distribution.

    Both install the import package ``celery_saga``, so pip mixes their files; what
    runs is then neither project.
    """
    try:
        other = metadata.distribution(OTHER_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return
    if (other.metadata["Summary"] or "").startswith(_OWN_SUMMARY):
        return
    where = other.locate_file("")
    raise SagaConfigurationError(
        f"the distribution {OTHER_DISTRIBUTION!r} {other.version} (another project, in "
        f"{where}) is installed beside {DISTRIBUTION!r}, this one: both provide the package "
        f"celery_saga and their files are mixed. Uninstall both and install this one again: "
        f"pip uninstall -y {OTHER_DISTRIBUTION} {DISTRIBUTION} && pip install {DISTRIBUTION}"
    )


def _on_after_finalize(sender: Celery, **_: Any) -> None:
    bind_steps(sender)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """A worker starting: say at once (ERROR, naming it) if its saga store is unreachable."""
    app = getattr(sender, "app", None)
    if app is not None and app.__dict__.get(_INSTALLED_ATTR):
        check_store(app)


def _on_worker_process_init(**_: Any) -> None:
    """A prefork child starting: make its store now (no I/O), not in its first step.

    The engines and the database driver's import cost a child's first step ~70 ms
    otherwise. Nothing connects here: a store that is down must not stop the child
    from starting (its first step waits for the store as any step does).
    """
    app: Celery = cast(Any, current_app)._get_current_object()
    if not app.__dict__.get(_INSTALLED_ATTR):
        return
    try:
        get_store(app)
    except Exception:  # a setting it cannot use: the first step raises it, named
        logger.debug("celery_saga: the saga store could not be made yet", exc_info=True)


def add_recovery_schedule(app: Celery) -> None:
    """Put ``celery_saga.recover`` in the beat schedule, every ``saga_recovery_interval``.

    The entry is named ``"celery_saga.recover"``. The setting is read once the app is
    configured (now, if it is already); a ``beat_schedule`` that runs ``celery_saga.recover``
    under a name of its own is left as it is, so the sweep does not run twice.
    """

    def add(**_: Any) -> None:
        interval = recovery_interval(app.conf)
        schedule = app.conf.beat_schedule or {}
        if interval is None or any(
            isinstance(entry, dict) and entry.get("task") == RECOVER_TASK
            for entry in schedule.values()
        ):
            return
        app.add_periodic_task(interval, app.signature(RECOVER_TASK), name=RECOVER_TASK)

    if getattr(app, "configured", False):  # (celery-types does not declare it)
        add()
    else:
        app.on_after_configure.connect(add, sender=app, weak=False)


def install(app: Celery) -> Celery:
    """Make a Celery app saga-ready; calling it again does nothing.

    Registers the ``celery_saga.*`` tasks, puts ``celery_saga.recover`` (the recovery
    sweep, every ``saga_recovery_interval``) and ``celery_saga.purge`` (retention, see
    ``saga_result_expires``) in the beat schedule, and binds every ``@saga_step`` task of the
    app (``@shared_task`` ones included) when the app is finalized. Call it where the
    app is created, so that workers and producers both run it.

    Raises :class:`~celery_saga.SagaConfigurationError` when the other project named
    ``celery-saga`` is installed in the same environment (see :func:`check_distribution`).

    .. versionadded:: 0.1
    """
    if app.__dict__.get(_INSTALLED_ATTR):
        return app
    check_distribution()
    add_recovery_schedule(app)  # (first: it checks saga_recovery_interval)
    setattr(app, _INSTALLED_ATTR, True)
    register_tasks(app)
    register_recovery_task(app)
    register_wait_task(app)
    connect_parking()
    register_purge_task(app)
    add_purge_schedule(app)
    app.on_after_finalize.connect(_on_after_finalize, sender=app, weak=False)
    worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="celery_saga.check_store")
    worker_process_init.connect(
        _on_worker_process_init, weak=False, dispatch_uid="celery_saga.make_store"
    )
    if getattr(app, "finalized", False):
        bind_steps(app)
    return app
