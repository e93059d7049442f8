"""The test kit: a saga-ready app and worker without servers, event capture, fault injection.

The pytest plugin (:mod:`celery_saga.contrib.pytest`) gives these as fixtures; this
module is for other test runners, and for what the fixtures hand you:

.. code-block:: python

    from celery_saga.testing import Faults, SagaEvents, configured, memory_settings, worker

    with (
        configured(app, memory_settings("sqlite:///sagas.sqlite3")),
        worker(app),
        Faults(app) as faults,
        SagaEvents() as events,
    ):
        faults.fail("shop.ship", times=1)
        result = checkout("o-1").apply_async()
        ...

.. versionadded:: 0.1
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.exceptions import Ignore
from celery.utils.dispatch import Signal
from celery.worker import WorkController
from celery.worker.consumer import Consumer

from . import _faults, signals
from ._runtime import get_store, reset
from .context import StepContext
from .recovery import Recovery, recover
from .signals import SagaEvent, StepEvent
from .step import task_name

__all__ = [
    "Fault",
    "Faults",
    "InjectedFault",
    "RecordedEvent",
    "SagaEvents",
    "configured",
    "memory_settings",
    "worker",
]


def memory_settings(store_url: str) -> dict[str, Any]:
    """The settings that run an app's sagas with no servers: what ``saga_settings`` holds.

    The ``memory://`` broker polled every 10 ms (its default is 1 s per hop), the
    in-memory result backend, the given store (a throw-away SQLite file, say), no eager
    mode, Celery's logging left alone, and compensations retried after 50 ms (doubling)
    rather than 1 s, so that a compensation that gives up does so in under 2 s.
    """
    return {
        "broker_url": "memory://localhost/",
        "broker_transport_options": {"polling_interval": 0.01},
        "broker_heartbeat": 0,
        "result_backend": "cache+memory://",
        "task_always_eager": False,
        "worker_hijack_root_logger": False,
        "saga_store_url": store_url,
        "saga_compensation_retry_delay": 0.05,
    }


def _drop_runtime(app: Celery) -> None:
    """Forget the app's saga config and store, broker pool and result backend."""
    reset(app)
    # What Celery drops after a fork and its test apps at teardown. (The broker pools
    # are kombu's, shared by URL across apps: dropped, not closed.)
    state: Any = app
    state._after_fork()
    state._backend_cache = None
    state._local.backend = None


_MISSING = object()


@contextmanager
def configured(app: Celery, settings: Mapping[str, Any]) -> Iterator[Celery]:
    """Run an existing app (your project's) on ``settings`` for the ``with`` block.

    Its saga store, broker connections and result backend are made afresh from the
    settings, and dropped again at the end, when its own settings come back. Use it to
    test tasks made with ``@app.task`` on your app (see the ``saga_app`` fixture).
    """
    saved = {key: app.conf.get(key, _MISSING) for key in settings}
    _drop_runtime(app)
    app.conf.update(settings)
    try:
        yield app
    finally:
        _drop_runtime(app)
        changes: dict[str, Any] = app.conf.changes or {}
        for key, value in saved.items():
            if value is _MISSING:
                changes.pop(key, None)
            else:
                app.conf[key] = value


class _PromptConsumer(Consumer):
    """Celery's consumer, waiting on the broker 0.1 s at a time instead of 2 s.

    A worker in a thread stops when its loop next looks, and Celery's loop looks
    after each wait on the broker (and waits once more on the way out): 4 s to stop an
    idle worker on ``memory://``, for every test. Here, 0.2 s.
    """

    def connect(self) -> Any:
        connection = super().connect()
        drain = connection.drain_events

        def drain_events(timeout: float | None = None, **kwargs: Any) -> Any:
            return drain(timeout=_DRAIN_WAIT if timeout is None else min(timeout, _DRAIN_WAIT),
                         **kwargs)  # fmt: skip

        connection.drain_events = drain_events  # type: ignore[method-assign]
        return connection


_DRAIN_WAIT = 0.1


@contextmanager
def worker(app: Celery, *, concurrency: int = 4, **options: Any) -> Iterator[WorkController]:
    """A real Celery worker in a thread of this process (threads pool), consuming ``app``.

    The app's queues are purged first, so nothing left by an earlier test runs here.
    ``options`` go to Celery's ``start_worker`` (``queues=``, ``loglevel=``, ...).
    """
    app.control.purge()
    options.setdefault("loglevel", "WARNING")
    options.setdefault("consumer_cls", _PromptConsumer)
    stopped = threading.Event()
    try:
        with start_worker(
            app, pool="threads", concurrency=concurrency, perform_ping_check=False, **options
        ) as controller:
            try:
                yield controller
            finally:
                waker = threading.Thread(
                    target=_wake_timer, args=(controller, stopped), daemon=True
                )
                waker.start()
    finally:
        stopped.set()
    app.control.purge()


def _wake_timer(controller: WorkController, stopped: threading.Event) -> None:
    """Wake the worker's timer while the worker stops.

    Once it has held an ETA (a retry's countdown) it waits for work a second at a time
    and only then sees it is to stop: a second more for every such test.
    """
    while not stopped.wait(0.02):
        timer: Any = getattr(controller, "timer", None)
        if timer is not None:
            with timer.not_empty:
                timer.not_empty.notify_all()


# -- events -----------------------------------------------------------------------

_SIGNALS: dict[str, Signal] = {
    name: value for name in signals.__all__ if isinstance(value := getattr(signals, name), Signal)
}


@dataclass(frozen=True)
class RecordedEvent:
    """One signal as :class:`SagaEvents` saw it."""

    signal: str
    sender: str
    event: SagaEvent | StepEvent


class SagaEvents:
    """Every :mod:`celery_saga.signals` signal sent in this process, in order.

    .. code-block:: python

        with SagaEvents() as events:
            result = checkout("o-1").apply_async()
            events.wait_for("saga_compensated", saga_id=result.id)
        assert events.names(result.id) == ["saga_started", "step_started", ...]

    Signals are sent where the transition happens: with an in-thread worker, all of
    them reach this process. They are sent after the store is written, so a test that
    returns from ``result.get()`` may be a moment ahead of the last signal:
    :meth:`wait_for` it.
    """

    def __init__(self) -> None:
        self._records: list[RecordedEvent] = []
        self._changed = threading.Condition()
        self._receivers = {name: partial(self._receive, name) for name in _SIGNALS}

    def connect(self) -> SagaEvents:
        """Start recording."""
        for name, signal in _SIGNALS.items():
            signal.connect(self._receivers[name], weak=False)
        return self

    def disconnect(self) -> None:
        """Stop recording (what was recorded stays)."""
        for name, signal in _SIGNALS.items():
            signal.disconnect(self._receivers[name])

    def __enter__(self) -> SagaEvents:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.disconnect()

    def _receive(self, name: str, sender: Any = None, **named: Any) -> None:
        event = named.get("event")  # (``named`` also holds Celery's ``signal``)
        if not isinstance(event, SagaEvent | StepEvent):
            return
        with self._changed:
            self._records.append(RecordedEvent(name, str(sender), event))
            self._changed.notify_all()

    def records(self, saga_id: str | None = None) -> list[RecordedEvent]:
        """What was recorded (of one saga), in order."""
        with self._changed:
            return [r for r in self._records if saga_id is None or r.event.saga_id == saga_id]

    def __iter__(self) -> Iterator[RecordedEvent]:
        return iter(self.records())

    def __len__(self) -> int:
        with self._changed:
            return len(self._records)

    def names(self, saga_id: str | None = None) -> list[str]:
        """The signal names recorded (for one saga), in order."""
        return [record.signal for record in self.records(saga_id)]

    def of(self, signal: str, saga_id: str | None = None) -> list[SagaEvent | StepEvent]:
        """The payloads of one signal (for one saga), in order."""
        _check_signal(signal)
        return [r.event for r in self.records(saga_id) if r.signal == signal]

    def wait_for(
        self, signal: str, *, saga_id: str | None = None, timeout: float = 10.0
    ) -> SagaEvent | StepEvent:
        """The first payload of ``signal`` (for ``saga_id``), waiting up to ``timeout`` s."""
        _check_signal(signal)

        def first() -> SagaEvent | StepEvent | None:
            return next(
                (
                    r.event
                    for r in self._records
                    if r.signal == signal and (saga_id is None or r.event.saga_id == saga_id)
                ),
                None,
            )

        with self._changed:
            if not self._changed.wait_for(lambda: first() is not None, timeout):
                seen = [r.signal for r in self._records]
                raise TimeoutError(
                    f"no {signal} signal{f' for saga {saga_id}' if saga_id else ''} "
                    f"within {timeout:g} s; recorded: {seen}"
                )
            found = first()
            assert found is not None
            return found

    def clear(self) -> None:
        """Forget what was recorded."""
        with self._changed:
            self._records.clear()


def _check_signal(signal: str) -> None:
    if signal not in _SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; one of: {', '.join(sorted(_SIGNALS))}")


# -- faults -----------------------------------------------------------------------


class InjectedFault(Exception):
    """What an injected failure raises when no ``error=`` is given."""


ErrorSpec = Exception | type[Exception] | None


def _error_factory(error: ErrorSpec) -> Callable[[str], Exception]:
    if error is None:
        return InjectedFault
    if isinstance(error, Exception):
        return lambda message: error
    if isinstance(error, type) and issubclass(error, Exception):
        error("probe")  # an exception class that cannot take a message fails here, not later
        return error
    raise TypeError(f"error= takes an exception instance or class, got {error!r}")


def _check_times(times: int | None) -> None:
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ValueError(f"times= takes a number >= 1, or None for every attempt; got {times!r}")


class Fault:
    """One injected fault: where it strikes, how often, and the attempts it struck.

    Returned by the :class:`Faults` methods; :meth:`wait` blocks until it has struck.
    """

    def __init__(
        self,
        kind: Literal["fail", "crash"],
        step: str,
        *,
        compensation: bool,
        point: _faults.Point,
        times: int | None,
        index: int | None,
        error: Callable[[str], Exception] | None = None,
    ) -> None:
        self.kind = kind
        self.step = step
        self.compensation = compensation
        self.point = point
        self.index = index
        self._left = times
        self._error = error
        self._struck: list[StepContext] = []
        self._done = threading.Condition()

    def __repr__(self) -> str:
        where = f"compensation of {self.step}" if self.compensation else self.step
        index = "" if self.index is None else f" (step {self.index})"
        return f"<Fault {self.kind} {where}{index} at {self.point}, struck {self.fired}>"

    @property
    def fired(self) -> int:
        """How many attempts it struck."""
        with self._done:
            return len(self._struck)

    @property
    def struck(self) -> list[StepContext]:
        """The attempts it struck: saga id, step index, attempt number."""
        with self._done:
            return list(self._struck)

    def wait(self, timeout: float = 10.0) -> StepContext:
        """The first attempt it struck, waiting up to ``timeout`` seconds for one."""
        with self._done:
            if not self._done.wait_for(lambda: bool(self._struck), timeout):
                raise TimeoutError(f"{self!r} did not strike within {timeout:g} s")
            return self._struck[0]

    def _take(self, point: _faults.Point, context: StepContext, names: tuple[str, ...]) -> bool:
        """Whether it strikes this attempt (counting it if so)."""
        if (
            point != self.point
            or context.compensating != self.compensation
            or self.step not in names
            or (self.index is not None and context.step_index != self.index)
        ):
            return False
        with self._done:
            if self._left is not None:
                if self._left == 0:
                    return False
                self._left -= 1
            self._struck.append(context)
            self._done.notify_all()
        return True

    def _raise(self, context: StepContext) -> None:
        if self.kind == "crash":
            raise Ignore(f"celery_saga.testing: simulated worker loss ({self!r})")
        assert self._error is not None
        what = f"compensation of {self.step}" if self.compensation else self.step
        raise self._error(f"injected fault: {what} failed (attempt {context.attempt})")


class Faults:
    """Fault injection for one app: make steps and compensations fail, or their worker die.

    Faults strike in the worker, at the step (or compensation) itself, so that retries,
    compensation, recording, signals and traces all run as they would for a real
    failure. ``step`` is the step's task (object or name); a compensation is chosen by
    its step or by its own task. ``index`` narrows a fault to one position, for a task
    used twice in a saga.

    .. code-block:: python

        with Faults(app) as faults:
            faults.fail("shop.ship", times=2)                # two attempts raise
            faults.fail_compensation("shop.charge")          # its refund fails once
            crash = faults.crash("shop.charge", at="after")  # charged; worker gone
            ...
            crash.wait()
            faults.recover()                                 # the sweep, leases run out
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def install(self) -> Faults:
        """Start injecting into the app's steps (in this process's workers)."""
        _faults.set_injector(self.app, self)
        return self

    def uninstall(self) -> None:
        """Stop injecting."""
        _faults.set_injector(self.app, None)

    def __enter__(self) -> Faults:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def _add_failure(
        self,
        step: object,
        compensation: bool,
        times: int | None,
        error: ErrorSpec,
        index: int | None,
    ) -> Fault:
        _check_times(times)
        return self._add(Fault("fail", task_name(step), compensation=compensation, point="body",
                               times=times, index=index, error=_error_factory(error)))  # fmt: skip

    def fail(
        self,
        step: object,
        *,
        times: int | None = 1,
        error: ErrorSpec = None,
        index: int | None = None,
    ) -> Fault:
        """The next ``times`` attempts of ``step`` raise ``error`` (None: every attempt).

        ``error`` is an exception instance (raised as is) or class (made with a
        message); by default :class:`InjectedFault`. The attempt fails as if the task
        had raised it: a retry policy retries it, and in the end the saga compensates.
        """
        return self._add_failure(step, False, times, error, index)

    def fail_compensation(
        self,
        step: object,
        *,
        times: int | None = 1,
        error: ErrorSpec = None,
        index: int | None = None,
    ) -> Fault:
        """The next ``times`` attempts to compensate ``step`` raise ``error``.

        Compensations are retried (``saga_compensation_max_retries``); one that
        fails every time gives up and the saga ends ``FAILED``.
        """
        return self._add_failure(step, True, times, error, index)

    def crash(
        self,
        step: object,
        *,
        at: Literal["before", "after"] = "before",
        compensation: bool = False,
        index: int | None = None,
    ) -> Fault:
        """The worker running ``step`` (or its compensation) dies, once, and its message is lost.

        ``at="before"``: the step is claimed in the store but its body has not run;
        ``at="after"``: the body ran (its effects happened) but its result was never
        recorded. Either way the claim stays in the store under its lease and nothing
        more is sent: the saga stands still, as after a ``kill -9`` on a broker that
        does not redeliver. :meth:`recover` is what brings it back.
        """
        if at not in ("before", "after"):
            raise ValueError(f"at= is 'before' or 'after', got {at!r}")
        point: _faults.Point = "claimed" if at == "before" else "done"
        return self._add(Fault("crash", task_name(step), compensation=compensation,
                               point=point, times=1, index=index))  # fmt: skip

    def recover(self, saga_id: str | None = None) -> list[Recovery]:
        """Let the crashed workers' leases run out, then run the recovery sweep.

        Every running claim (of ``saga_id``, or of every saga) is taken as dead, so
        call it when nothing is running but what crashed. Returns what recovery did.
        """
        get_store(self.app).expire_leases(saga_id)
        return recover(self.app, saga_id, stalled_after=0)

    def fast_forward(self, saga_id: str | None = None) -> list[Recovery]:
        """End the sleeps, and the timeouts of the waits, of ``saga_id`` (or of every saga) now.

        Then runs the recovery sweep, which wakes them: a ``sleep(3600)`` or a
        ``wait_for(..., timeout=86400)`` is tested without waiting. (A signal is sent as
        in production: ``result.signal(name, payload)``.) Returns what recovery did.

        .. versionadded:: 0.2
        """
        get_store(self.app).expire_waits(saga_id)
        return recover(self.app, saga_id, stalled_after=0)

    def clear(self) -> None:
        """Remove every fault (what they struck stays on the :class:`Fault` objects)."""
        with self._lock:
            self._faults.clear()

    def __call__(self, point: _faults.Point, context: StepContext, names: tuple[str, ...]) -> None:
        with self._lock:
            fault = next((f for f in self._faults if f._take(point, context, names)), None)
        if fault is not None:
            fault._raise(context)
