"""OpenTelemetry traces (the `otel` extra), off unless an OTLP endpoint is configured.

Nothing here imports OpenTelemetry at module level: `start_tracing` imports the SDK and the
exporter when tracing is on, so a server without an endpoint never loads them (the small API
package is loaded anyway, by FastAPI), and the runtime's only cost is a check that its tracer is
None. Spans are exported over OTLP/HTTP (protobuf) in batches from the SDK's own
thread; shutdown flushes what is left.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

SERVICE_NAME = "thymos"
TRACES_PATH = "/v1/traces"


class Span(Protocol):
    """What the runtime may do with a span: add facts learned while it is open."""

    def set_attribute(self, key: str, value: Any) -> None: ...


class Tracer:
    """Spans for the runtime: `span(name, attributes)` opens one as the current span (so a
    tool's span nests under its intent's)."""

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("thymos")

    @contextmanager
    def span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
        with self._tracer.start_as_current_span(name, attributes=dict(attributes)) as span:
            yield span

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporter's thread."""
        self._provider.shutdown()


def traces_url(endpoint: str) -> str:
    """An OTLP/HTTP base endpoint (`http://collector:4318`) turned into its traces URL, as the
    OpenTelemetry specification reads `OTEL_EXPORTER_OTLP_ENDPOINT`."""
    return endpoint.rstrip("/") + TRACES_PATH


def tracing_installed() -> bool:
    """Whether the `otel` extra is installed (found without importing it)."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
        )
    except ModuleNotFoundError:
        return False


def start_tracing(endpoint: str, *, version: str, node: str) -> Tracer:
    """A tracer exporting to `endpoint` (a base URL: spans go to `/v1/traces` under it)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {"service.name": SERVICE_NAME, "service.version": version, "service.instance.id": node}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    return Tracer(provider)
