"""Seeing into the server: Prometheus metrics (`Metrics`, reported to through an `Observer`),
structured logs (`configure_logging`, the context they carry, the access log) and
OpenTelemetry traces (`start_tracing`, the `otel` extra, off by default)."""

from ._access import AccessLog
from ._logging import (
    LOG_FORMATS,
    bind_run,
    configure_logging,
    note_caller,
    note_run,
    request_fields,
)
from ._metrics import CONTENT_TYPE, Metrics
from ._observer import Observer
from ._tracing import Span, Tracer, start_tracing, traces_url, tracing_installed

__all__ = [
    "CONTENT_TYPE",
    "LOG_FORMATS",
    "AccessLog",
    "Metrics",
    "Observer",
    "Span",
    "Tracer",
    "bind_run",
    "configure_logging",
    "note_caller",
    "note_run",
    "request_fields",
    "start_tracing",
    "traces_url",
    "tracing_installed",
]
