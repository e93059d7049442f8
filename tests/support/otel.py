"""OpenTelemetry test kit: a real OTLP/HTTP receiver, and one shape for spans from anywhere."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import ReadableSpan


@dataclass(frozen=True)
class SpanData:
    """What the tests check of a span, however it arrived."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    attributes: dict[str, Any]
    links: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    error: bool = False
    status_message: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0
    service: str = ""

    @classmethod
    def from_sdk(cls, span: ReadableSpan) -> SpanData:
        context = span.get_span_context()
        assert context is not None
        return cls(
            name=span.name,
            trace_id=context.trace_id,
            span_id=context.span_id,
            parent_id=span.parent.span_id if span.parent is not None else None,
            attributes=dict(span.attributes or {}),
            links=[
                (link.context.trace_id, link.context.span_id, dict(link.attributes or {}))
                for link in span.links
            ],
            error=span.status.status_code.name == "ERROR",
            status_message=span.status.description or "",
            events=[(event.name, dict(event.attributes or {})) for event in span.events],
            start_ns=span.start_time or 0,
            end_ns=span.end_time or 0,
            service=str(span.resource.attributes.get("service.name", "")),
        )


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _decode(body: bytes) -> list[SpanData]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[SpanData] = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    SpanData(
                        name=span.name,
                        trace_id=int.from_bytes(span.trace_id, "big"),
                        span_id=int.from_bytes(span.span_id, "big"),
                        parent_id=int.from_bytes(span.parent_span_id, "big")
                        if span.parent_span_id
                        else None,
                        attributes=_attributes(span.attributes),
                        links=[
                            (
                                int.from_bytes(link.trace_id, "big"),
                                int.from_bytes(link.span_id, "big"),
                                _attributes(link.attributes),
                            )
                            for link in span.links
                        ],
                        error=span.status.code == span.status.STATUS_CODE_ERROR,
                        status_message=span.status.message,
                        events=[(e.name, _attributes(e.attributes)) for e in span.events],
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        service=service,
                    )
                )
    return spans


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint on loopback that decodes what it is sent (protobuf)."""

    def __init__(self) -> None:
        self._spans: list[SpanData] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                spans = _decode(body)
                with receiver._lock:
                    receiver._spans.extend(spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    @property
    def spans(self) -> list[SpanData]:
        with self._lock:
            return list(self._spans)

    @contextmanager
    def running(self) -> Iterator[OtlpReceiver]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def wait_for(
    spans: Callable[[], list[SpanData]],
    done: Callable[[list[SpanData]], bool],
    timeout: float = 30.0,
) -> list[SpanData]:
    """Poll ``spans()`` until ``done`` holds for them; fail with what arrived."""
    deadline = time.monotonic() + timeout
    while True:
        got = spans()
        if done(got):
            return got
        if time.monotonic() > deadline:
            names = sorted(f"{s.name} {s.trace_id:032x}"[:60] for s in got)
            raise AssertionError(f"spans did not arrive in {timeout} s; got {names}")
        time.sleep(0.05)


def by_name(spans: list[SpanData]) -> dict[str, list[SpanData]]:
    """Spans grouped by name, each group by start time."""
    groups: dict[str, list[SpanData]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        groups.setdefault(span.name, []).append(span)
    return groups
