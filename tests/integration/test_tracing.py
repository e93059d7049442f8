"""One trace per saga across processes: workers under ``opentelemetry-instrument``, a real
OTLP/HTTP receiver decoding what they export, Redis broker, PostgreSQL store."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from celery_saga import SagaCompensated, SagaResult
from celery_saga.contrib.opentelemetry import SagaInstrumentor, saga_trace_id
from tests.scenarios import new_id
from tests.support.envs import SagaEnv, broker_env, worker_process
from tests.support.otel import OtlpReceiver, SpanData, by_name, wait_for
from tests.support.services import REDIS_URL, require

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

TIMEOUT = 60
INSTRUMENT = str(Path(sys.executable).parent / "opentelemetry-instrument")


@dataclass
class Traced:
    """Sagas started here, run by two instrumented workers, their spans sent to ``receiver``."""

    env: SagaEnv
    receiver: OtlpReceiver
    queues: tuple[str, str]
    celery_spans: bool

    def saga_spans(self, result: SagaResult, count: int) -> list[SpanData]:
        """The saga's ``count`` spans, waiting until they have all been exported."""
        trace_id = saga_trace_id(result.id)

        def mine() -> list[SpanData]:
            return [s for s in self.receiver.spans if s.trace_id == trace_id]

        return wait_for(mine, lambda spans: len(spans) >= count, timeout=TIMEOUT)


@pytest.fixture(scope="module", params=["saga spans", "with celery task spans"])
def traced(
    request: pytest.FixtureRequest, postgres_url: str, worker_logs: Path
) -> Iterator[Traced]:
    require("redis")
    celery_spans = request.param != "saga spans"
    receiver = OtlpReceiver()
    queues = (f"trace-a-{uuid.uuid4().hex[:6]}", f"trace-b-{uuid.uuid4().hex[:6]}")
    otel_env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "" if celery_spans else "celery",
    }
    with ExitStack() as stack:
        stack.enter_context(receiver.running())
        for queue, service in zip(queues, ("worker-a", "worker-b"), strict=True):
            stack.enter_context(
                worker_process(
                    REDIS_URL, postgres_url, postgres_url, queue,
                    worker_logs / f"{service}-{request.param.replace(' ', '-')}.log",
                    concurrency=1,
                    extra_env={**otel_env, "OTEL_SERVICE_NAME": service},
                    launcher=[INSTRUMENT],
                )
            )  # fmt: skip
        env = stack.enter_context(
            broker_env("traced", REDIS_URL, postgres_url, postgres_url, queues[0])
        )
        provider = TracerProvider(resource=Resource({"service.name": "producer"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(receiver.endpoint)))
        stack.callback(provider.shutdown)
        SagaInstrumentor().instrument(tracer_provider=provider)
        stack.callback(SagaInstrumentor().uninstrument)
        if celery_spans:
            CeleryInstrumentor().instrument(tracer_provider=provider)
            stack.callback(CeleryInstrumentor().uninstrument)
        yield Traced(env, receiver, queues, celery_spans)


def _compensated_saga(traced: Traced) -> SagaResult:
    """Three steps on alternating workers; the third fails, so two compensations run."""
    env = traced.env
    first, second = traced.queues
    result = env.saga(
        env.sig("act", "order-1", tag="reserve").set(queue=first),
        env.sig("act", tag="charge").set(queue=second),
        env.sig("act", tag="ship", fail=True).set(queue=first),
        name="checkout",
    ).apply_async(saga_id=new_id())
    with pytest.raises(SagaCompensated):
        result.get(timeout=TIMEOUT)
    return result


def test_compensated_saga_is_one_trace_across_processes(traced: Traced) -> None:
    """Producer and both workers export one trace: one root, steps and compensations under it."""
    result = _compensated_saga(traced)
    # root, producer, 3 steps, 2 compensations; with Celery's spans also 5 publish + 5 runs
    count = 7 + (10 if traced.celery_spans else 0)
    spans = traced.saga_spans(result, count)
    assert len(spans) == count
    assert {s.trace_id for s in spans} == {saga_trace_id(result.id)}
    roots = [s for s in spans if s.parent_id is None]
    assert [r.name for r in roots] == ["saga checkout"]
    (root,) = roots
    assert root.error
    assert root.attributes == {
        "saga.id": result.id, "saga.name": "checkout", "saga.status": "COMPENSATED",
        "saga.failed_step": 2,
    }  # fmt: skip
    assert root.service == "worker-a"  # the last compensation ran there and ended the saga
    groups = by_name(spans)
    by_id = {s.span_id: s for s in spans}
    (producer,) = groups["start saga checkout"]
    assert producer.service == "producer"
    assert producer.parent_id == root.span_id
    steps = {s.attributes["saga.step.index"]: s for s in groups["step shop.act"]}
    assert [steps[i].service for i in range(3)] == ["worker-a", "worker-b", "worker-a"]
    assert [steps[i].error for i in range(3)] == [False, False, True]
    for index, step in steps.items():
        assert step.attributes == {
            "saga.id": result.id, "saga.name": "checkout", "saga.step.name": "shop.act",
            "saga.step.index": index, "saga.step.attempt": 1,
            **({"error.type": "tests.support.app.StepFailure"} if index == 2 else {}),
        }  # fmt: skip
    undos = groups["compensate shop.undo"]
    assert [u.attributes["saga.step.index"] for u in undos] == [1, 0]
    for undo in undos:
        forward = steps[undo.attributes["saga.step.index"]]
        assert [(link[1], link[2]["saga.link"]) for link in undo.links] == [
            (forward.span_id, "compensates")
        ]
    for span in groups["step shop.act"] + undos:
        parent = by_id[span.parent_id]  # type: ignore[index]
        if traced.celery_spans:  # inside the task span of Celery's instrumentation
            assert parent.name in ("run/shop.act", "run/celery_saga.compensate")
            assert parent.service == span.service
        else:
            assert parent is root
    for span in spans:  # every span reaches the one root
        while span.parent_id is not None:
            span = by_id[span.parent_id]
        assert span is root


def test_completed_saga_root_covers_its_steps(traced: Traced) -> None:
    """A completed saga's root is emitted by the worker that ran the last step and spans it all."""
    env = traced.env
    first, second = traced.queues
    result = env.saga(
        env.sig("act", tag="a").set(queue=first),
        env.sig("act", tag="b").set(queue=second),
        name="two-workers",
    ).apply_async(saga_id=new_id())
    result.get(timeout=TIMEOUT)
    spans = traced.saga_spans(result, 4 + (4 if traced.celery_spans else 0))
    groups = by_name(spans)
    (root,) = groups["saga two-workers"]
    assert root.service == "worker-b"
    assert root.attributes["saga.status"] == "COMPLETED"
    assert not root.error
    steps = groups["step shop.act"]
    assert root.start_ns <= min(s.start_ns for s in steps)
    assert root.end_ns >= max(s.end_ns for s in steps)
