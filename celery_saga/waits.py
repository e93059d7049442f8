"""Stages that hold a saga without holding a worker: ``wait_for`` a signal, ``sleep``.

.. code-block:: python

    approval = saga(
        reserve.s(order),
        celery_saga.wait_for("approved", timeout=3600, on_timeout="compensate"),
        charge.s(),                   # gets the signal's payload
        celery_saga.sleep(60),        # passes charge's result on
        ship.s(),
        name="big-order",
    )
    result = approval.apply_async()
    result.signal("approved", {"by": "alice"})

While it waits the saga is ``WAITING``: its wait is a row in the store with the time it
is due, and no message sits in a worker. A signal resolves it; a due time is fired by a
Celery countdown when it is near (within two recovery intervals), else by the recovery
sweep — never by an hours-long ETA, which Redis would redeliver after its visibility
timeout. After a restart a sleep lasts only what is left of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import SagaValidationError
from .store.schema import NAME_LENGTH

__all__ = ["ON_TIMEOUT", "WAIT_TASK", "Wait", "sleep", "wait_for"]

#: The internal task a wait or sleep stage travels as.
WAIT_TASK = "celery_saga.wait"
#: What a wait whose timeout passed does: undo the saga, end it ``FAILED`` without
#: undoing anything (a person decides), or go on with ``None`` as the signal's payload.
ON_TIMEOUT = ("compensate", "fail", "continue")


@dataclass(frozen=True)
class Wait:
    """A stage that waits for a signal (``signal``) or for a time (a sleep).

    Made by :func:`wait_for` and :func:`sleep`.

    .. versionadded:: 0.2
    """

    signal: str | None = None
    timeout: float | None = None  #: seconds (a sleep: how long it sleeps)
    until: float | None = None  #: a sleep until this moment (epoch seconds)
    on_timeout: str = "compensate"

    def as_plan(self) -> dict[str, Any]:
        """What the stored plan keeps of it."""
        if self.signal is None:
            return {"sleep": self.timeout} if self.until is None else {"until": self.until}
        return {"signal": self.signal, "timeout": self.timeout, "on_timeout": self.on_timeout}


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SagaValidationError(f"{what} takes seconds >= 0, got {value!r}")
    return float(value)


def wait_for(name: str, timeout: float | None = None, on_timeout: str = "compensate") -> Wait:
    """A stage that waits for the signal ``name`` (``SagaResult.signal(name, payload)``).

    The payload is the stage's result: the next ``.s()`` step gets it. ``timeout``
    (seconds, from when the saga gets here; None: for ever) then ``on_timeout``:
    ``"compensate"`` undoes the saga with a ``celery_saga.WaitTimedOut`` error,
    ``"fail"`` ends it ``FAILED`` with that error and undoes nothing, ``"continue"``
    goes on with ``None``.

    .. versionadded:: 0.2
    """
    if not isinstance(name, str) or not name or len(name) > NAME_LENGTH:
        raise SagaValidationError(
            f"wait_for() takes a signal name of 1 to {NAME_LENGTH} characters, got {name!r}"
        )
    if on_timeout not in ON_TIMEOUT:
        raise SagaValidationError(
            f"wait_for(on_timeout=) takes one of {', '.join(ON_TIMEOUT)}, got {on_timeout!r}"
        )
    seconds = None if timeout is None else _seconds(timeout, "wait_for(timeout=)")
    return Wait(signal=name, timeout=seconds, on_timeout=on_timeout)


def sleep(seconds: float | None = None, *, until: datetime | None = None) -> Wait:
    """A stage that sleeps ``seconds``, or ``until`` a moment; it passes the result on.

    The next ``.s()`` step gets the result of the step before the sleep.

    .. versionadded:: 0.2
    """
    if (seconds is None) == (until is None):
        raise SagaValidationError("sleep() takes seconds or until=, one of them")
    if until is not None:
        if not isinstance(until, datetime):
            raise SagaValidationError(f"sleep(until=) takes a datetime, got {until!r}")
        aware = until if until.tzinfo else until.replace(tzinfo=UTC)
        return Wait(until=aware.timestamp(), on_timeout="continue")
    return Wait(timeout=_seconds(seconds, "sleep()"), on_timeout="continue")
