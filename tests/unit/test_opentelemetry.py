"""The OpenTelemetry instrumentor against a real (in-thread) worker and the SDK's readers."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from celery import group
from celery.signals import before_task_publish
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import celery_saga
from celery_saga import SagaCompensated, SagaResult, SagaStatus
from celery_saga.contrib.opentelemetry import SagaInstrumentor, saga_trace_id
from tests.scenarios import new_id
from tests.support.envs import SagaEnv, sqlite_thread_env
from tests.support.otel import SpanData, by_name, wait_for

TIMEOUT = 30
CARD = "4111111111111111"


@dataclass
class Telemetry:
    """An instrumented process: its finished spans and its metrics."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    provider: TracerProvider

    def spans(self) -> list[SpanData]:
        return [SpanData.from_sdk(span) for span in self.exporter.get_finished_spans()]

    def saga_spans(self, saga_id: str) -> list[SpanData]:
        """The spans of the saga's trace, once its root has arrived."""
        trace_id = saga_trace_id(saga_id)

        def mine() -> list[SpanData]:
            return [span for span in self.spans() if span.trace_id == trace_id]

        return wait_for(mine, lambda spans: any(s.name.startswith("saga ") for s in spans))

    def metric_points(self, name: str, saga_name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points += [
                            p
                            for p in metric.data.data_points
                            if p.attributes.get("saga.name") == saga_name
                        ]
        return points


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEnv]:
    with sqlite_thread_env(tmp_path_factory.mktemp("otel"), "otel") as env:
        yield env


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    instrumentor = SagaInstrumentor()
    instrumentor.instrument(tracer_provider=provider, meter_provider=MeterProvider([reader]))
    yield Telemetry(exporter, reader, provider)
    instrumentor.uninstrument()


def _root(spans: list[SpanData]) -> SpanData:
    roots = [span for span in spans if span.parent_id is None]
    assert [r.name for r in roots] == [roots[0].name]  # exactly one
    return roots[0]


def test_completed_saga_is_one_trace(env: SagaEnv, telemetry: Telemetry) -> None:
    """A completed saga yields one trace: a root over producer and step spans, with attributes."""
    result = env.saga(env.sig("act", "o", tag="a"), env.sig("act", tag="b"), name="otel-ok")
    saga = result.apply_async(saga_id=new_id())
    saga.get(timeout=TIMEOUT)
    spans = telemetry.saga_spans(saga.id)
    root = _root(spans)
    assert root.name == "saga otel-ok"
    assert root.attributes == {
        "saga.id": saga.id, "saga.name": "otel-ok", "saga.status": "COMPLETED"
    }  # fmt: skip
    assert not root.error
    groups = by_name(spans)
    assert set(groups) == {"saga otel-ok", "start saga otel-ok", "step shop.act"}
    (producer,) = groups["start saga otel-ok"]
    assert producer.parent_id == root.span_id
    steps = groups["step shop.act"]
    assert [s.parent_id for s in steps] == [root.span_id] * 2
    assert [s.attributes for s in steps] == [
        {"saga.id": saga.id, "saga.name": "otel-ok", "saga.step.name": "shop.act",
         "saga.step.index": index, "saga.step.attempt": 1}
        for index in (0, 1)
    ]  # fmt: skip
    assert root.start_ns <= steps[0].start_ns
    assert root.end_ns >= steps[1].end_ns


def test_compensated_saga_links_compensations(env: SagaEnv, telemetry: Telemetry) -> None:
    """Compensation spans sit under the root, linked to the step spans they undo; errors shown."""
    saga = env.saga(
        env.sig("act", tag="a"),
        env.sig("act", tag="b"),
        env.sig("act", tag="c", fail=True),
        name="otel-undo",
    ).apply_async(saga_id=new_id())
    with pytest.raises(SagaCompensated):
        saga.get(timeout=TIMEOUT)
    spans = telemetry.saga_spans(saga.id)
    root = _root(spans)
    assert root.attributes["saga.status"] == "COMPENSATED"
    assert root.attributes["saga.failed_step"] == 2
    assert root.error
    groups = by_name(spans)
    steps = {s.attributes["saga.step.index"]: s for s in groups["step shop.act"]}
    failed = steps[2]
    assert failed.error
    assert failed.attributes["error.type"] == "tests.support.app.StepFailure"
    assert ("exception", failed.events[0][1]) == failed.events[0]
    assert failed.events[0][1]["exception.message"] == "c failed"
    assert not steps[0].error
    assert not steps[1].error
    undos = groups["compensate shop.undo"]
    assert [u.attributes["saga.step.index"] for u in undos] == [1, 0]
    for undo in undos:
        assert undo.parent_id == root.span_id
        assert undo.attributes["saga.compensation.name"] == "shop.undo"
        forward = steps[undo.attributes["saga.step.index"]]
        assert undo.links == [
            (root.trace_id, forward.span_id, {"saga.link": "compensates", "saga.step.attempt": 1})
        ]


def test_group_members_are_sibling_spans_under_the_root(env: SagaEnv, telemetry: Telemetry) -> None:
    """A group's members are step spans side by side under the saga root; their
    compensations are linked to them."""
    saga = env.saga(
        env.sig("act", tag="a"),
        group(env.sig("act", tag="b"), env.sig("act", tag="c")),
        env.sig("act", tag="e", fail=True),
        name="otel-group",
    ).apply_async(saga_id=new_id())
    with pytest.raises(SagaCompensated):
        saga.get(timeout=TIMEOUT)
    spans = telemetry.saga_spans(saga.id)
    root = _root(spans)
    groups = by_name(spans)
    steps = {s.attributes["saga.step.index"]: s for s in groups["step shop.act"]}
    assert sorted(steps) == [0, 1, 2, 3]
    assert {s.parent_id for s in steps.values()} == {root.span_id}
    undos = groups["compensate shop.undo"]
    assert sorted(u.attributes["saga.step.index"] for u in undos) == [0, 1, 2]
    for undo in undos:
        forward = steps[undo.attributes["saga.step.index"]]
        assert undo.links[0][1] == forward.span_id


def test_a_wait_is_a_span_and_feeds_the_wait_metrics(env: SagaEnv, telemetry: Telemetry) -> None:
    """A saga's wait is a span under the root from its start to the signal; saga.waiting
    goes up and down and saga.wait.duration records how long it waited."""
    saga = env.saga(
        env.sig("act", tag="a"), celery_saga.wait_for("ok"), env.sig("act", tag="b"),
        name="otel-wait",
    ).apply_async(saga_id=new_id())  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while saga.status is not SagaStatus.WAITING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)
    saga.signal("ok", 1)
    saga.get(timeout=TIMEOUT)
    spans = telemetry.saga_spans(saga.id)
    root = _root(spans)
    (wait,) = by_name(spans)["wait celery_saga.wait"]
    assert wait.parent_id == root.span_id
    assert wait.attributes["saga.wait.outcome"] == "signal"
    assert wait.end_ns - wait.start_ns >= 0.2e9
    (waited,) = telemetry.metric_points("saga.wait.duration", "otel-wait")
    assert waited.count == 1
    assert waited.sum >= 0.2
    (waiting,) = telemetry.metric_points("saga.waiting", "otel-wait")
    assert waiting.value == 0


def test_a_child_saga_is_a_trace_linked_to_its_parents_stage(
    env: SagaEnv, telemetry: Telemetry
) -> None:
    """A child saga's root span links to the span of the parent's stage that ran it."""
    child = env.saga(env.sig("act", tag="b"), name="otel-child")
    parent = env.saga(env.sig("act", tag="a"), child, name="otel-parent").apply_async(
        saga_id=new_id()
    )
    parent.get(timeout=TIMEOUT)
    spans = telemetry.saga_spans(parent.id)
    (stage,) = by_name(spans)["wait celery_saga.child"]
    assert stage.parent_id == _root(spans).span_id
    root = _root(telemetry.saga_spans(f"{parent.id}.1"))
    assert root.name == "saga otel-child"
    assert root.attributes["saga.parent.id"] == parent.id
    assert [(t, s) for t, s, _ in root.links] == [(stage.trace_id, stage.span_id)]


def test_attempts_get_spans_of_their_own(env: SagaEnv, telemetry: Telemetry) -> None:
    """A retried step gets a span per attempt; its compensation links to the one that succeeded."""
    saga = env.saga(
        env.sig("flaky", tag="f", fail_times=1),
        env.sig("act", tag="x", fail=True),
        name="otel-retry",
    ).apply_async(saga_id=new_id())
    with pytest.raises(SagaCompensated):
        saga.get(timeout=TIMEOUT)
    groups = by_name(telemetry.saga_spans(saga.id))
    flaky = groups["step shop.flaky"]
    assert [s.attributes["saga.step.attempt"] for s in flaky] == [1, 2]
    assert [name for name, _ in flaky[0].events] == ["retry", "exception"]
    assert not flaky[0].error
    assert not flaky[1].error
    (undo,) = groups["compensate shop.undo"]
    assert undo.links[0][1] == flaky[1].span_id  # the attempt that succeeded
    assert undo.links[0][2]["saga.step.attempt"] == 2


def test_task_spans_of_celery_instrumentation_nest_inside(
    env: SagaEnv, telemetry: Telemetry
) -> None:
    """With opentelemetry-instrumentation-celery on, its task spans join the saga's single trace."""
    celery_instrumentor = CeleryInstrumentor()
    celery_instrumentor.instrument(tracer_provider=telemetry.provider)
    try:
        saga = env.saga(
            env.sig("act", tag="a"), env.sig("act", tag="b", fail=True), name="otel-celery"
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated):
            saga.get(timeout=TIMEOUT)
        telemetry.saga_spans(saga.id)
        # two steps and one compensation ran: wait for the last task span to end
        spans = wait_for(telemetry.spans, lambda s: sum(x.name.startswith("run/") for x in s) == 3)
    finally:
        celery_instrumentor.uninstrument()
    assert {s.trace_id for s in spans} == {saga_trace_id(saga.id)}
    root = _root(spans)
    by_id = {s.span_id: s for s in spans}
    groups = by_name(spans)
    assert "run/shop.act" in groups
    assert "run/celery_saga.compensate" in groups
    for span in groups["step shop.act"] + groups["compensate shop.undo"]:
        parent = by_id[span.parent_id]  # type: ignore[index]
        assert parent.name in ("run/shop.act", "run/celery_saga.compensate")
    for span in spans:  # every span reaches the root through its parents
        while span.parent_id is not None:
            span = by_id[span.parent_id]
        assert span is root


def test_metrics_count_the_sagas(env: SagaEnv, telemetry: Telemetry) -> None:
    """Counters and histograms read through a metric reader match the sagas that ran."""
    name = f"otel-metrics-{uuid.uuid4().hex[:6]}"
    results: list[SagaResult] = []
    for _ in range(3):
        results.append(env.saga(env.sig("act", tag="a"), name=name).apply_async(saga_id=new_id()))
    for fail_undo in (0, 1):  # the second one's compensation fails once, then succeeds
        results.append(
            env.saga(
                env.sig("act", tag="u", fail_undo=fail_undo),
                env.sig("act", tag="v", fail=True),
                name=name,
            ).apply_async(saga_id=new_id())
        )
    for result in results:
        with contextlib.suppress(SagaCompensated):
            result.get(timeout=TIMEOUT)
        telemetry.saga_spans(result.id)  # the end signal has been handled
    ended = telemetry.metric_points("saga.sagas", name)
    sagas = {p.attributes["saga.status"]: p.value for p in ended}
    assert sagas == {"COMPLETED": 3, "COMPENSATED": 2}
    (active,) = telemetry.metric_points("saga.active", name)
    assert active.value == 0
    durations = telemetry.metric_points("saga.duration", name)
    assert sum(p.count for p in durations) == 5
    steps = {
        p.attributes["saga.step.outcome"]: p.count
        for p in telemetry.metric_points("saga.step.duration", name)
    }
    assert steps == {"succeeded": 5, "failed": 2}
    compensations = {
        p.attributes["saga.compensation.outcome"]: p.value
        for p in telemetry.metric_points("saga.compensations", name)
    }
    assert compensations == {"succeeded": 2, "retried": 1}


class _RaisingTracerProvider(TracerProvider):
    """A tracer provider whose every span fails to start."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        tracer = super().get_tracer(*args, **kwargs)

        def start_span(*_: Any, **__: Any) -> trace.Span:
            raise RuntimeError("tracing is broken")

        tracer.start_span = start_span  # type: ignore[method-assign]
        return tracer


class _RaisingExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        raise ConnectionError("collector is down")


def _broken_provider(kind: str) -> TracerProvider:
    if kind == "tracer":
        return _RaisingTracerProvider()
    provider = TracerProvider()
    if kind == "exporter":
        provider.add_span_processor(SimpleSpanProcessor(_RaisingExporter()))
    else:  # an OTLP exporter pointed at a port nobody listens on
        exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=1)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    return provider


@pytest.mark.parametrize("kind", ["tracer", "exporter", "unreachable collector"])
def test_broken_tracing_leaves_outcomes_unchanged(
    env: SagaEnv, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A tracer that raises, an exporter that raises, or no collector: sagas end as they would."""
    provider = _broken_provider(kind)
    instrumentor = SagaInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        ok = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b")).apply_async(new_id())
        undone = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b", fail=True))
        undone_result = undone.apply_async(new_id())
        assert ok.get(timeout=TIMEOUT)["tag"] == "b"
        with pytest.raises(SagaCompensated):
            undone_result.get(timeout=TIMEOUT)
        assert env.ledger.count("undo", "a", undone_result.id) == 1
        assert undone_result.status is SagaStatus.COMPENSATED
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    if kind == "tracer":
        assert "tracing failed; the saga goes on without it" in caplog.text


def test_uninstrument_stops_spans(env: SagaEnv, telemetry: Telemetry) -> None:
    """After uninstrument(), sagas make no spans and feed no metrics."""
    SagaInstrumentor().uninstrument()
    saga = env.saga(env.sig("act", tag="a"), name="otel-off").apply_async(saga_id=new_id())
    saga.get(timeout=TIMEOUT)
    assert telemetry.spans() == []
    assert telemetry.metric_points("saga.sagas", "otel-off") == []
    SagaInstrumentor().instrument(tracer_provider=telemetry.provider)  # for the fixture's teardown


def _no_provider_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "celery_saga.contrib.opentelemetry"
        and r.levelno == logging.WARNING
        and "no OpenTelemetry tracer provider is configured" in r.getMessage()
    ]


def test_no_tracer_provider_logs_one_warning(
    env: SagaEnv, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instrumented with only the API's default provider, one WARNING says nothing is exported."""
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    instrumentor = SagaInstrumentor()
    instrumentor.instrument()
    try:
        with caplog.at_level(logging.WARNING, logger="celery_saga.contrib.opentelemetry"):
            for _ in range(2):
                saga = env.saga(env.sig("act", tag="a"), name="otel-none")
                saga.apply_async(saga_id=new_id()).get(timeout=TIMEOUT)
    finally:
        instrumentor.uninstrument()
    (warning,) = _no_provider_warnings(caplog)
    assert "opentelemetry-distro" in warning.getMessage()
    assert 'pip install "celery-sagas[opentelemetry]"' in warning.getMessage()


def test_a_configured_provider_logs_no_warning(
    env: SagaEnv, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """With a tracer provider given, the instrumentor warns about nothing."""
    with caplog.at_level(logging.WARNING, logger="celery_saga.contrib.opentelemetry"):
        result = env.saga(env.sig("act", tag="a"), name="otel-some").apply_async(saga_id=new_id())
        result.get(timeout=TIMEOUT)
    assert telemetry.saga_spans(result.id)
    assert _no_provider_warnings(caplog) == []


def test_registered_for_opentelemetry_instrument() -> None:
    """The opentelemetry_instrumentor entry point names SagaInstrumentor (for Celery 5.4+)."""
    (point,) = entry_points(group="opentelemetry_instrumentor", name="celery_saga")
    assert point.load() is SagaInstrumentor
    assert SagaInstrumentor().instrumentation_dependencies() == ("celery >= 5.4",)


def _mask_cards(step: str, field: str, value: Any) -> Any:
    """The test redactor: card numbers become ****, whatever the field."""
    if isinstance(value, str):
        return re.sub(r"\d{16}", "****", value)
    if isinstance(value, dict):
        return {k: _mask_cards(step, field, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_cards(step, field, v) for v in value]
    return value


def _broken_redactor(step: str, field: str, value: Any) -> Any:
    raise ValueError("bug in the redactor")


@pytest.fixture(params=["mask", "broken"])
def redacting_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SagaEnv]:
    redactor = "_mask_cards" if request.param == "mask" else "_broken_redactor"
    conf = {"saga_redact": f"{__name__}:{redactor}", "saga_compensation_max_retries": 0}
    with sqlite_thread_env(tmp_path, "redact", **conf) as env:
        yield env


def test_redaction_hides_payloads_from_spans_and_logs(
    redacting_env: SagaEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """With saga_redact, spans, log lines and argsrepr show redacted values; the store keeps all."""
    env = redacting_env
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = SagaInstrumentor()
    instrumentor.instrument(tracer_provider=provider, capture_payloads=True)
    reprs: list[str] = []

    def keep_repr(headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers and headers.get("task") == "shop.act":
            reprs.extend([str(headers.get("argsrepr")), str(headers.get("kwargsrepr"))])

    before_task_publish.connect(keep_repr, weak=False)
    compensation_log = logging.getLogger("celery_saga.compensation")
    compensation_log.addHandler(caplog.handler)
    try:
        saga = env.saga(
            env.sig("act", CARD, tag=f"a{CARD}", fail_undo=-1),
            env.sig("act", tag=f"b{CARD}", fail=True),
        ).apply_async(saga_id=new_id())
        with pytest.raises(Exception, match="compensation"):
            saga.get(timeout=TIMEOUT)
        spans = wait_for(
            lambda: [SpanData.from_sdk(s) for s in exporter.get_finished_spans()],
            lambda got: any(s.name.startswith("saga ") for s in got),
        )
    finally:
        instrumentor.uninstrument()
        before_task_publish.disconnect(keep_repr)
        compensation_log.removeHandler(caplog.handler)
    shown = [str(v) for s in spans for v in s.attributes.values()]
    shown += [s.status_message for s in spans]
    shown += [str(v) for s in spans for _, attributes in s.events for v in attributes.values()]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("celery_saga")]
    shown += reprs + ours
    assert not [text for text in shown if CARD in text]
    marker = "****" if "mask" in env.app.conf.saga_redact else "<redaction failed>"
    steps = [s for s in spans if s.name == "step shop.act"]
    (first,) = [s for s in steps if s.attributes["saga.step.index"] == 0]
    assert marker in first.attributes["saga.step.args"]
    assert marker in first.attributes["saga.step.kwargs"]
    assert marker in first.attributes["saga.step.result"]
    assert any(marker in text for text in reprs)
    assert any("gave up" in message and marker in message for message in ours)
    assert saga.steps[0].args == [CARD]  # the store keeps what ran
    assert saga.steps[0].result == {"tag": f"a{CARD}", "args": [CARD]}
