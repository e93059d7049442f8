"""OpenTelemetry for sagas: one trace per saga, a span per step attempt and compensation.

.. code-block:: python

    from celery_saga.contrib.opentelemetry import SagaInstrumentor

    SagaInstrumentor().instrument()  # or run under ``opentelemetry-instrument``

Every process of a saga derives the same trace id from the saga id, so a saga whose
steps ran on different workers is still one trace, without passing anything along:

- ``saga <name>``: the root, emitted by the process that ends the saga, with the start
  time of the saga (it covers the whole saga; ``saga.status`` says how it ended);
- ``start saga <name>``: the producer, around sending the first message; a span that
  was current there gets a link to the saga;
- ``step <task>``: one per attempt of a step body, in the worker;
- ``compensate <task>``: one per attempt of a compensation, linked to the ``step`` span
  of the attempt it undoes.

Spans from ``opentelemetry-instrumentation-celery`` (``apply_async/...``, ``run/...``)
nest inside the saga's trace: a step span is the child of the task's ``run`` span when
that belongs to the saga's trace, else of the saga root.

Deterministic span ids (for the root and for the links) need the SDK's tracer, which
every exporter setup uses; another tracer gets the same trace id for the steps but
its own ids. A ``wait <stage>`` span covers a saga's wait, from its start to the signal,
the end of the sleep or the timeout, or the end of the child saga the stage ran (a
child saga is a trace of its own, whose root links to that span of its parent's).
Metrics (``saga.sagas``, ``saga.duration``, ``saga.step.duration``,
``saga.compensations``, ``saga.active``, ``saga.waiting``, ``saga.wait.duration``) come
from :mod:`celery_saga.signals`.

.. versionadded:: 0.1
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from celery import Celery
from celery.exceptions import Ignore, Reject, Retry
from celery.utils.dispatch import Signal
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.metrics import Meter, MeterProvider, get_meter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TracerProvider,
)
from opentelemetry.util.types import AttributeValue

from .. import __version__, _observe, signals
from .._errors import describe_error
from ..records import StepRecord
from ..signals import SagaEvent, StepEvent
from ..status import SagaStatus

__all__ = ["SagaInstrumentor", "saga_trace_id"]

_SCOPE = "celery_saga"

logger = logging.getLogger(__name__)

_NO_PROVIDER = (
    "SagaInstrumentor: no OpenTelemetry tracer provider is configured (the global one is "
    "the API's default, which records nothing), so no saga spans are exported. Under "
    "opentelemetry-instrument, install opentelemetry-distro and an exporter (pip install "
    '"celery-sagas[opentelemetry]") and set OTEL_TRACES_EXPORTER; or call '
    "trace.set_tracer_provider(...) before the first saga, or pass instrument(tracer_provider=...)"
)


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x00".join(map(str, (_SCOPE, *parts))).encode()).digest()


def saga_trace_id(saga_id: str) -> int:
    """The trace id of a saga's trace: the same in every process, from the saga id alone."""
    return int.from_bytes(_digest(saga_id)[:16], "big") or 1


def _root_span_id(saga_id: str) -> int:
    return int.from_bytes(_digest(saga_id)[16:24], "big") or 1


def _span_id(saga_id: str, role: str, index: int, attempt: int) -> int:
    return int.from_bytes(_digest(saga_id, role, index, attempt)[:8], "big") or 1


# -- deterministic ids ------------------------------------------------------------------

#: (trace id or None, span id) that the next span started in this context must get.
_forced: ContextVar[tuple[int | None, int] | None] = ContextVar("celery_saga_ids", default=None)


class _SagaIds(IdGenerator):
    """The tracer's id generator, except where a saga span's ids are forced."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner

    def generate_span_id(self) -> int:
        forced = _forced.get()
        return forced[1] if forced is not None else self.inner.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced.get()
        if forced is not None and forced[0] is not None:
            return forced[0]
        return self.inner.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        if _forced.get() is not None:
            return False
        return bool(self.inner.is_trace_id_random())


def _start(
    tracer: Tracer, name: str, ids: tuple[int | None, int], context: Context | None, **kw: Any
) -> Span:
    token = _forced.set(ids)
    try:
        return tracer.start_span(
            name, context=context, record_exception=False, set_status_on_exception=False, **kw
        )
    finally:
        _forced.reset(token)


def _record_error(
    span: Span, app: Celery, step_name: str, exc: BaseException, *, failed: bool = True
) -> None:
    """An ``exception`` event with the redacted message; ``failed``: the span's status too."""
    kind = describe_error(exc)["type"]
    message = str(_observe.redact(app, step_name, "error", str(exc)))
    if failed:
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, f"{kind}: {message}"))
    span.add_event(
        "exception",
        {
            "exception.type": kind,
            "exception.message": message,
            # frames only: the message is in the line above, redacted
            "exception.stacktrace": "".join(traceback.format_tb(exc.__traceback__)),
        },
    )


def _payload(app: Celery, step_name: str, field: str, value: Any) -> str:
    return json.dumps(_observe.redact(app, step_name, field, value), default=repr)[:4096]


class _StepScope:
    def __init__(self, span: Span, app: Celery, step_name: str, capture: bool) -> None:
        self.span, self.app, self.step_name, self.capture = span, app, step_name, capture

    def set_result(self, result: Any) -> None:
        if self.capture:
            self.span.set_attribute(
                "saga.step.result", _payload(self.app, self.step_name, "result", result)
            )


class _SagaTracing:
    """Spans for sagas: what :class:`SagaInstrumentor` installs as the saga tracer."""

    def __init__(self, provider: TracerProvider | None, capture_payloads: bool) -> None:
        self.provider = provider
        self.capture_payloads = capture_payloads
        self._cached: tuple[TracerProvider, Tracer] | None = None
        self._warned = False

    def tracer(self) -> Tracer:
        provider = self.provider or trace.get_tracer_provider()
        cached = self._cached
        if cached is not None and cached[0] is provider:
            return cached[1]
        if not self._warned and isinstance(
            provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider
        ):
            # Checked at the first span, not in instrument(): a provider may be set later
            # (in worker_process_init, say). Once per process.
            self._warned = True
            logger.warning(_NO_PROVIDER)
        tracer = provider.get_tracer(_SCOPE, __version__)
        inner = getattr(tracer, "id_generator", None)
        if isinstance(inner, IdGenerator) and not isinstance(inner, _SagaIds):
            tracer.id_generator = _SagaIds(inner)  # type: ignore[attr-defined]
        self._cached = (provider, tracer)
        return tracer

    def root(self, tracer: Tracer, saga_id: str, saga_name: str) -> SpanContext:
        """The saga root's span context, as every process can build it."""
        trace_id = saga_trace_id(saga_id)
        sampler = getattr(tracer, "sampler", None)
        sampled = True
        if sampler is not None:
            decision = sampler.should_sample(None, trace_id, f"saga {saga_name}").decision
            sampled = decision.is_sampled()
        flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
        return SpanContext(trace_id, _root_span_id(saga_id), is_remote=True, trace_flags=flags)

    def parent(self, root: SpanContext) -> Context | None:
        """The current context if it is in the saga's trace (a Celery task span), else root."""
        if trace.get_current_span().get_span_context().trace_id == root.trace_id:
            return None
        return trace.set_span_in_context(NonRecordingSpan(root))

    @contextmanager
    def publishing(self, app: Celery, saga_id: str, saga_name: str) -> Iterator[None]:
        tracer = self.tracer()
        root = self.root(tracer, saga_id, saga_name)
        caller = trace.get_current_span()
        if caller.is_recording():
            caller.add_link(root, {"saga.id": saga_id, "saga.name": saga_name})
        span = tracer.start_span(
            f"start saga {saga_name}",
            context=trace.set_span_in_context(NonRecordingSpan(root)),
            kind=SpanKind.PRODUCER,
            attributes={"saga.id": saga_id, "saga.name": saga_name},
            links=[Link(caller.get_span_context())] if caller.is_recording() else (),
            record_exception=False,
            set_status_on_exception=False,
        )
        with trace.use_span(span, end_on_exit=True, record_exception=False,
                            set_status_on_exception=False):  # fmt: skip
            yield

    def _attributes(self, event: StepEvent) -> dict[str, AttributeValue]:
        return {
            "saga.id": event.saga_id,
            "saga.name": event.saga_name,
            "saga.step.name": event.step_name,
            "saga.step.index": event.step_index,
            "saga.step.attempt": event.attempt,
        }

    @contextmanager
    def _running(self, span: Span, app: Celery, step_name: str) -> Iterator[None]:
        with trace.use_span(span, end_on_exit=True, record_exception=False,
                            set_status_on_exception=False):  # fmt: skip
            try:
                yield
            except Retry as exc:  # this attempt failed; the step goes on
                span.add_event("retry")
                if isinstance(exc.exc, BaseException):
                    _record_error(span, app, step_name, exc.exc, failed=False)
                raise
            except (Ignore, Reject):
                span.add_event("ignored")
                raise
            except BaseException as exc:
                _record_error(span, app, step_name, exc)
                raise

    @contextmanager
    def step(
        self, app: Celery, event: StepEvent, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Iterator[_StepScope]:
        tracer = self.tracer()
        root = self.root(tracer, event.saga_id, event.saga_name)
        attributes = self._attributes(event)
        if self.capture_payloads:
            attributes["saga.step.args"] = _payload(app, event.step_name, "args", args)
            attributes["saga.step.kwargs"] = _payload(app, event.step_name, "kwargs", kwargs)
        span = _start(
            tracer,
            f"step {event.step_name}",
            (None, _span_id(event.saga_id, "step", event.step_index, event.attempt)),
            self.parent(root),
            attributes=attributes,
        )
        with self._running(span, app, event.step_name):
            yield _StepScope(span, app, event.step_name, self.capture_payloads)

    @contextmanager
    def compensation(self, app: Celery, event: StepEvent, step: StepRecord) -> Iterator[None]:
        tracer = self.tracer()
        root = self.root(tracer, event.saga_id, event.saga_name)
        undone = SpanContext(
            root.trace_id,
            _span_id(event.saga_id, "step", event.step_index, step.attempts),
            is_remote=True,
            trace_flags=root.trace_flags,
        )
        attributes = self._attributes(event)
        attributes["saga.compensation.name"] = event.compensate or ""
        span = _start(
            tracer,
            f"compensate {event.compensate}",
            (None, _span_id(event.saga_id, "compensate", event.step_index, event.attempt)),
            self.parent(root),
            attributes=attributes,
            links=[Link(undone, {"saga.link": "compensates", "saga.step.attempt": step.attempts})],
        )
        with self._running(span, app, event.compensate or event.step_name):
            yield

    def wait_ended(self, sender: Any = None, event: StepEvent | None = None, **_: Any) -> None:
        """A ``wait <stage>`` span from the moment the saga got to a wait to its end."""
        if event is None:
            return
        tracer = self.tracer()
        end = time.time_ns()
        root = self.root(tracer, event.saga_id, event.saga_name)
        attributes = self._attributes(event)
        attributes["saga.wait.outcome"] = event.reason or ""
        span = _start(
            tracer,
            f"wait {event.step_name}",
            (None, _span_id(event.saga_id, "wait", event.step_index, 1)),
            trace.set_span_in_context(NonRecordingSpan(root)),
            attributes=attributes,
            start_time=end - int((event.duration or 0.0) * 1e9),
        )
        span.end(end_time=end)

    def saga_ended(self, sender: Any = None, event: SagaEvent | None = None, **_: Any) -> None:
        """The root span, emitted when the saga ends (a receiver of the end signals)."""
        if event is None:
            return
        tracer = self.tracer()
        end = time.time_ns()
        start = end - int((event.duration or 0.0) * 1e9)
        attributes: dict[str, AttributeValue] = {
            "saga.id": event.saga_id,
            "saga.name": event.saga_name,
            "saga.status": str(event.status),
        }
        if event.failed_step is not None:
            attributes["saga.failed_step"] = event.failed_step
        links = []
        if event.parent_id is not None and event.parent_step is not None:  # a child saga
            attributes["saga.parent.id"] = event.parent_id
            attributes["saga.parent.step"] = event.parent_step
            stage = SpanContext(
                saga_trace_id(event.parent_id),
                _span_id(event.parent_id, "wait", event.parent_step, 1),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            links.append(Link(stage, {"saga.link": "child of", "saga.id": event.parent_id}))
        span = _start(
            tracer,
            f"saga {event.saga_name}",
            (saga_trace_id(event.saga_id), _root_span_id(event.saga_id)),
            Context(),
            attributes=attributes,
            links=links,
            start_time=start,
        )
        if event.status is not SagaStatus.COMPLETED:
            error = event.error or {}
            summary = f"{event.status}"
            if error:
                summary += f": {error.get('type')} in step {event.failed_step}"
            span.set_status(Status(StatusCode.ERROR, summary))
        span.end(end_time=end)


class _SagaMetrics:
    """Saga metrics, fed by the lifecycle signals."""

    def __init__(self, meter: Meter) -> None:
        self.sagas = meter.create_counter(
            "saga.sagas", unit="{saga}", description="Sagas that ended, by saga.status"
        )
        self.duration = meter.create_histogram(
            "saga.duration", unit="s", description="Time from start to end of a saga"
        )
        self.step_duration = meter.create_histogram(
            "saga.step.duration", unit="s", description="Time one attempt of a step body ran"
        )
        self.compensations = meter.create_counter(
            "saga.compensations",
            unit="{compensation}",
            description="Compensation attempts, by saga.compensation.outcome",
        )
        self.active = meter.create_up_down_counter(
            "saga.active",
            unit="{saga}",
            description="Sagas started and not ended (sum it over all processes)",
        )
        self.waiting = meter.create_up_down_counter(
            "saga.waiting",
            unit="{saga}",
            description="Sagas at a wait_for or sleep stage (sum it over all processes)",
        )
        self.wait_duration = meter.create_histogram(
            "saga.wait.duration", unit="s", description="Time a saga waited at a stage"
        )

    def saga_waiting(self, sender: Any = None, event: StepEvent | None = None, **_: Any) -> None:
        if event is not None:
            self.waiting.add(1, {"saga.name": event.saga_name})

    def wait_ended(self, sender: Any = None, event: StepEvent | None = None, **_: Any) -> None:
        if event is None:
            return
        self.waiting.add(-1, {"saga.name": event.saga_name})
        if event.duration is not None:
            labels = {"saga.name": event.saga_name, "saga.wait.outcome": event.reason or ""}
            self.wait_duration.record(event.duration, labels)

    def saga_started(self, sender: Any = None, event: SagaEvent | None = None, **_: Any) -> None:
        if event is not None:
            self.active.add(1, {"saga.name": event.saga_name})

    def saga_ended(self, sender: Any = None, event: SagaEvent | None = None, **_: Any) -> None:
        if event is None:
            return
        self.active.add(-1, {"saga.name": event.saga_name})
        labels = {"saga.name": event.saga_name, "saga.status": str(event.status)}
        self.sagas.add(1, labels)
        if event.duration is not None:
            self.duration.record(event.duration, labels)

    def _step(self, outcome: str, event: StepEvent | None) -> None:
        if event is not None and event.duration is not None:
            labels = {"saga.name": event.saga_name, "saga.step.name": event.step_name}
            self.step_duration.record(event.duration, {**labels, "saga.step.outcome": outcome})

    def step_succeeded(self, sender: Any = None, event: StepEvent | None = None, **_: Any) -> None:
        self._step("succeeded", event)

    def step_failed(self, sender: Any = None, event: StepEvent | None = None, **_: Any) -> None:
        self._step("timed_out" if event and event.reason == "timeout" else "failed", event)

    def step_retried(self, sender: Any = None, event: StepEvent | None = None, **_: Any) -> None:
        self._step("retried", event)

    def _compensation(self, outcome: str, event: StepEvent | None) -> None:
        if event is not None:
            labels = {
                "saga.name": event.saga_name,
                "saga.compensation.name": event.compensate or "",
            }
            self.compensations.add(1, {**labels, "saga.compensation.outcome": outcome})

    def compensation_succeeded(
        self, sender: Any = None, event: StepEvent | None = None, **_: Any
    ) -> None:
        self._compensation("succeeded", event)

    def compensation_failed(
        self, sender: Any = None, event: StepEvent | None = None, **_: Any
    ) -> None:
        outcome = "gave_up" if event is not None and event.reason == "gave up" else "retried"
        self._compensation(outcome, event)


_ENDS = (signals.saga_completed, signals.saga_compensated, signals.saga_failed)


class SagaInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces and metrics for celery_saga; ``opentelemetry-instrument`` finds it by itself.

    ``instrument()`` takes ``tracer_provider`` and ``meter_provider`` (default: the
    global ones, looked up when a span is made, so a provider set after ``instrument()``
    in a worker's ``worker_process_init`` is used) and ``capture_payloads`` (default
    False): when True, step arguments and results go on the step spans as JSON, through
    the ``saga_redact`` hook. Instrument every process that starts sagas or runs them.

    .. versionadded:: 0.1
    """

    _connections: list[tuple[Signal, Callable[..., None], str]]

    def instrumentation_dependencies(self) -> Collection[str]:
        """The packages and versions this instruments."""
        return ("celery >= 5.4",)

    def _instrument(self, **kwargs: Any) -> None:
        meter_provider: MeterProvider | None = kwargs.get("meter_provider")
        tracing = _SagaTracing(kwargs.get("tracer_provider"), bool(kwargs.get("capture_payloads")))
        metrics = _SagaMetrics(get_meter(_SCOPE, __version__, meter_provider))
        self._connections = [
            *((end, tracing.saga_ended, "trace") for end in _ENDS),
            *((end, metrics.saga_ended, "metrics") for end in _ENDS),
            (signals.saga_started, metrics.saga_started, "metrics"),
            (signals.step_succeeded, metrics.step_succeeded, "metrics"),
            (signals.step_failed, metrics.step_failed, "metrics"),
            (signals.step_retried, metrics.step_retried, "metrics"),
            (signals.compensation_succeeded, metrics.compensation_succeeded, "metrics"),
            (signals.compensation_failed, metrics.compensation_failed, "metrics"),
            (signals.saga_waiting, metrics.saga_waiting, "metrics"),
            (signals.wait_ended, metrics.wait_ended, "metrics"),
            (signals.wait_ended, tracing.wait_ended, "trace"),
        ]
        for signal, receiver, role in self._connections:
            signal.connect(receiver, weak=False, dispatch_uid=f"celery_saga.otel.{role}")
        _observe.set_tracer(tracing)

    def _uninstrument(self, **kwargs: Any) -> None:
        _observe.set_tracer(None)
        for signal, receiver, role in self._connections:
            signal.disconnect(receiver, dispatch_uid=f"celery_saga.otel.{role}")
        self._connections = []
