"""``saga(...)``: start a saga. The plan is checked and stored, then its first step sent.

The plan (every step's task, arguments, options and compensation) is stored with the
saga, so anything that needs to drive the saga later (a resume, the recovery sweep)
rebuilds the same messages from the store (:mod:`celery_saga.dispatch`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.app import app_or_default

from . import _observe, signals
from ._runtime import get_store
from .dispatch import COMPENSATE_TASK, publish_stage
from .errors import SagaConfigurationError, SagaConflictError, SagaValidationError
from .plan import SagaPlan, SagaSpec, build_plan, saga_row
from .result import SagaResult
from .signals import SagaEvent
from .status import SagaStatus
from .store import utcnow
from .store.schema import ID_LENGTH

__all__ = ["Saga", "SagaPlan", "saga"]


class Saga(SagaSpec):
    """A saga ready to start: what :func:`saga` returns.

    Given as a stage of another saga, it runs as a child saga of that one.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        steps: Sequence[Any],
        name: str,
        app: Celery | None = None,
        deadline: float | None = None,
        fail_fast: bool = False,
        version: str | None = None,
    ) -> None:
        self.steps = tuple(steps)
        self.name = name
        self._app = app
        self.deadline = deadline
        self.fail_fast = fail_fast
        self.version = version

    @property
    def app(self) -> Celery:
        """The Celery app: the one given, else the first step's, else the current app."""
        if self._app is not None:
            return self._app
        for step in self.steps:
            app = getattr(step, "_app", None)
            if app is not None:
                return app  # type: ignore[no-any-return]
        return app_or_default(None)

    def plan(self) -> SagaPlan:
        """Check the steps and return the plan that :meth:`apply_async` would store."""
        return build_plan(
            self.app, self.steps, self.name, self.deadline, self.fail_fast, self.version
        )

    def apply_async(self, saga_id: str | None = None) -> SagaResult:
        """Store the saga and send its first step.

        Idempotent on ``saga_id``: starting an id that exists with the same plan returns
        the existing saga without sending anything; with a different plan it raises
        :class:`~celery_saga.SagaConflictError`. Bad input raises before anything is
        stored or sent.
        """
        app = self.app
        if COMPENSATE_TASK not in app.tasks:
            raise SagaConfigurationError(
                "celery_saga is not installed on this app: call celery_saga.install(app) "
                "where the app is created"
            )
        if app.conf.task_always_eager:
            raise SagaConfigurationError(
                "sagas need a real worker: task_always_eager would run every step inline "
                "in the caller; in tests use a worker (see celery_saga's testing guide)"
            )
        plan = self.plan()
        if saga_id is None:
            saga_id = str(uuid.uuid4())
        elif not isinstance(saga_id, str) or not saga_id or len(saga_id) > ID_LENGTH:
            raise SagaValidationError(
                f"saga_id must be a non-empty string of at most {ID_LENGTH} characters, "
                f"got {saga_id!r}"
            )
        stored = plan.as_json()
        now = utcnow()
        store = get_store(app)
        existing = store.create_saga(saga_row(saga_id, stored, now))
        if existing is not None:
            if existing.plan_hash != plan.hash:
                raise SagaConflictError(
                    saga_id,
                    f"saga {saga_id!r} exists already with a different plan "
                    f"({existing.name!r}, {existing.step_count} steps, {existing.status}); "
                    f"use a new saga_id for a different operation",
                )
            return SagaResult(saga_id, app=app)
        try:
            with _observe.publishing(app, saga_id, plan.name):
                publish_stage(app, saga_id, stored, 0, created=now)
        except BaseException:
            store.delete_saga(saga_id)  # nothing half-stored: the saga was never sent
            raise
        signals.saga_started.send(
            sender=plan.name, event=SagaEvent(saga_id, plan.name, SagaStatus.RUNNING)
        )
        return SagaResult(saga_id, app=app)


def saga(
    *steps: Any,
    name: str = "saga",
    app: Celery | None = None,
    deadline: float | None = None,
    fail_fast: bool = False,
    version: str | None = None,
) -> Saga:
    """Describe a saga: steps run in order; on a step's failure the ones before are undone.

    Args:
        steps: Celery signatures of ``@saga_step`` tasks (``task.s(...)`` passes the
            previous step's result as first argument, ``task.si(...)`` does not);
            a ``chain`` of them is taken step by step; a ``group(...)`` runs its
            members (steps, or chains of steps) at the same time, and the stage after
            it gets the list of their results, in member order.
        name: the saga's name, shown in the store, the CLI and traces.
        app: the Celery app (default: the steps' app).
        deadline: seconds from the start after which no new step starts: the saga is
            then compensated (a step running at that moment finishes first).
        fail_fast: when a group member fails for good, revoke its siblings still
            running (best effort) instead of letting them finish; either way every
            member that succeeded is compensated.
        version: your name for this definition of the saga (``"2"``), kept with it:
            ``celery saga list --version`` finds it, ``show`` prints it. A saga always
            runs the plan it was stored with, whatever is deployed later.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``group(...)`` and wait stages, ``fail_fast``, ``version``.
    """
    return Saga(steps, name=name, app=app, deadline=deadline, fail_fast=fail_fast, version=version)
