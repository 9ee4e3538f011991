"""OpenTelemetry traces from the real `thymos serve`, received by a collector in this process.

The collector is a small HTTP server on loopback that takes the OTLP/HTTP protobuf POSTs on
`/v1/traces` and decodes them with `opentelemetry-proto`, as any collector would. The server
flushes its spans when it stops, so the test stops it before reading them (no timing).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.e2e._authority import entries
from tests.e2e._harness import create_run, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox


@dataclass
class ReceivedSpan:
    name: str
    span_id: bytes
    parent_span_id: bytes
    trace_id: bytes
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@dataclass
class Collector:
    """What the collector has received, and whether anything was not a traces export."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received = ReceivedSpan(
                        name=span.name,
                        span_id=span.span_id,
                        parent_span_id=span.parent_span_id,
                        trace_id=span.trace_id,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        resource=resource,
                    )
                    with self.lock:
                        self.spans.append(received)


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    """A collector listening on loopback; yields it and its base URL."""
    received = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces":
                received.unexpected.append(self.path)
                self.send_response(404)
                self.end_headers()
                return
            assert self.headers.get("Content-Type") == "application/x-protobuf"
            received.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_turns_intents_and_tools_are_spans_exported_over_otlp_http(
    server_factory: ServerFactory, collector: tuple[Collector, str]
) -> None:
    """With THYMOS_OTEL_ENDPOINT set, a scripted run (an unknown tool, a read, a final answer)
    yields one `thymos.turn` span per turn entry, one `thymos.intent` span per intent with its
    decision (and a rejection's reason), and one `thymos.tool` span for the read, a child of
    its intent's span in the same trace; every span names the run, and the resource names the
    service `thymos`."""
    received, endpoint = collector
    server = server_factory({"THYMOS_OTEL_ENDPOINT": endpoint})
    client = server.client()
    run_id = create_run(
        client,
        {
            "task": "trace me",
            "tool_scopes": ["*"],
            "cognition": {
                "script": [
                    {"tool": "nope", "args": {}},
                    {"tool": "fs_read", "args": {"path": "README.md"}},
                    {"final": "traced"},
                ]
            },
        },
    )
    wait_terminal(client, run_id)
    kinds = [item["kind"] for item in entries(client, run_id)]
    server.stop()  # shutdown exports every span still buffered

    assert not received.unexpected
    spans = received.spans
    assert {span.resource.get("service.name") for span in spans} == {"thymos"}
    assert all(span.attributes.get("thymos.run_id") == run_id for span in spans)
    turns = [s for s in spans if s.name == "thymos.turn"]
    assert len(turns) == kinds.count("turn")
    assert [t.attributes["thymos.provider"] for t in turns] == ["mock"] * len(turns)
    intents = {s.attributes["thymos.tool"]: s for s in spans if s.name == "thymos.intent"}
    assert set(intents) == {"nope", "fs_read"} and kinds.count("intent") == 2
    assert intents["nope"].attributes["thymos.decision"] == "reject"
    assert intents["nope"].attributes["thymos.reason"] == "unknown_tool"
    assert intents["fs_read"].attributes["thymos.decision"] == "execute"
    tools = [s for s in spans if s.name == "thymos.tool"]
    assert len(tools) == 1
    tool = tools[0]
    assert tool.attributes["thymos.tool"] == "fs_read"
    assert tool.parent_span_id == intents["fs_read"].span_id
    assert tool.trace_id == intents["fs_read"].trace_id
