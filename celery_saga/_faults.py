"""The seam fault injection goes through (:class:`celery_saga.testing.Faults`).

A step and a compensation each pass three points: ``"claimed"`` (the claim is
committed, nothing has run), ``"body"`` (inside the attempt, just before the user's
function: what raises here fails the attempt as the function would) and ``"done"`` (the
function returned, nothing is recorded yet). With no injector installed on the app (the
default) each point is one dictionary read and a call to a function that does nothing.
"""

from __future__ import annotations

from typing import Literal, Protocol

from celery import Celery

from .context import StepContext

__all__ = ["Injector", "Point", "injector", "set_injector"]

Point = Literal["claimed", "body", "done"]

_ATTR = "_celery_saga_faults"


class Injector(Protocol):
    """Called at each point; raises to inject a fault there."""

    def __call__(self, point: Point, context: StepContext, names: tuple[str, ...]) -> None:
        """``names``: the step's task name (and, for a compensation, its task's name)."""


def _nothing(point: Point, context: StepContext, names: tuple[str, ...]) -> None:
    pass


def injector(app: Celery) -> Injector:
    """The app's injector (one that does nothing unless a test installed one)."""
    installed: Injector | None = app.__dict__.get(_ATTR)
    return _nothing if installed is None else installed


def set_injector(app: Celery, installed: Injector | None) -> None:
    """Install ``installed`` on the app (None: remove it)."""
    if installed is None:
        app.__dict__.pop(_ATTR, None)
    else:
        app.__dict__[_ATTR] = installed
