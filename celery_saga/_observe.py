"""The seam between the saga runtime and a tracer, and the redaction of what they show.

The runtime wraps its work in :func:`publishing`, :func:`step` and :func:`compensation`.
With no tracer installed (the default) each costs one global read. An installed
:class:`Tracer` (the OpenTelemetry instrumentor is one) gets the calls; whatever it
raises is logged and dropped: tracing never changes what a saga does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from celery import Celery

from .config import get_config
from .records import StepRecord
from .signals import StepEvent

__all__ = [
    "REDACTION_FAILED",
    "Scope",
    "Tracer",
    "compensation",
    "publishing",
    "redact",
    "set_tracer",
    "step",
]

logger = logging.getLogger(__name__)

#: What a value is shown as when the ``saga_redact`` hook raised on it.
REDACTION_FAILED = "<redaction failed>"


class Scope(Protocol):
    """What the runtime tells a tracer from inside a running step."""

    def set_result(self, result: Any) -> None:
        """The step's return value (before it is stored)."""


class Tracer(Protocol):
    """What a tracer implements to see sagas run."""

    def publishing(
        self, app: Celery, saga_id: str, saga_name: str
    ) -> AbstractContextManager[object]:
        """Around sending a new saga's first message, in the process that starts it."""

    def step(
        self, app: Celery, event: StepEvent, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AbstractContextManager[Scope]:
        """Around one attempt of a step body; the exception it raises passes through."""

    def compensation(
        self, app: Celery, event: StepEvent, step: StepRecord
    ) -> AbstractContextManager[object]:
        """Around one attempt of a compensation of the succeeded ``step``."""


class _NoScope:
    def set_result(self, result: Any) -> None:
        pass


_NO_SCOPE = _NoScope()
_tracer: Tracer | None = None


def set_tracer(tracer: Tracer | None) -> None:
    """Install the process's tracer (None: no tracing)."""
    global _tracer
    _tracer = tracer


class _SafeScope:
    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def set_result(self, result: Any) -> None:
        try:
            self._scope.set_result(result)
        except Exception:
            logger.exception("celery_saga: tracing failed; the saga goes on without it")


@contextmanager
def _guarded(open_: Callable[[], AbstractContextManager[Any]]) -> Iterator[Any]:
    """Run a tracer's context manager so that nothing it raises reaches the saga."""
    manager: AbstractContextManager[Any] | None = None
    try:
        manager = open_()
        value = manager.__enter__()
    except Exception:
        logger.exception("celery_saga: tracing failed; the saga goes on without it")
        manager = None
    if manager is None:
        yield None
        return
    try:
        yield value
    except BaseException as exc:
        try:
            manager.__exit__(type(exc), exc, exc.__traceback__)  # never swallows: re-raised
        except Exception as tracing_exc:
            if tracing_exc is not exc:
                logger.exception("celery_saga: tracing failed; the saga goes on without it")
        raise
    try:
        manager.__exit__(None, None, None)
    except Exception:
        logger.exception("celery_saga: tracing failed; the saga goes on without it")


@contextmanager
def publishing(app: Celery, saga_id: str, saga_name: str) -> Iterator[None]:
    """Around sending a new saga's first message."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    with _guarded(lambda: tracer.publishing(app, saga_id, saga_name)):
        yield


@contextmanager
def step(
    app: Celery, event: StepEvent, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Iterator[Scope]:
    """Around one attempt of a step body."""
    tracer = _tracer
    if tracer is None:
        yield _NO_SCOPE
        return
    with _guarded(lambda: tracer.step(app, event, args, kwargs)) as scope:
        yield _NO_SCOPE if scope is None else _SafeScope(scope)


@contextmanager
def compensation(app: Celery, event: StepEvent, step: StepRecord) -> Iterator[None]:
    """Around one attempt of a compensation."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    with _guarded(lambda: tracer.compensation(app, event, step)):
        yield


def redact(app: Celery, step_name: str, field: str, value: Any) -> Any:
    """``value`` as the app's ``saga_redact`` hook lets it be shown (unchanged without one)."""
    redactor = get_config(app).redact
    if redactor is None:
        return value
    try:
        return redactor(step_name, field, value)
    except Exception:
        logger.exception("saga_redact raised on the %s of %s", field, step_name)
        return REDACTION_FAILED
