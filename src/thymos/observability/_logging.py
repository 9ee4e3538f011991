"""Structured logs: one JSON object a line on stderr (or text for a person at a terminal),
through `structlog`, for the server's own loggers and every standard-library logger alike
(uvicorn's included), with the context bound where it is known and every line redacted.

Context travels in context variables: a request binds its id, its caller's key id and tenant
(`note_caller`) and the run it names (`note_run`); a run's actor binds its run and tenant
(`bind_run`). Whatever logs meanwhile, in that request or that run's task, carries them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from thymos.core import Redactor

LOG_FORMATS = ("json", "text")

_request: ContextVar[dict[str, Any] | None] = ContextVar("thymos_request", default=None)
"""The fields of the request being served, which its access-log line carries (a mutable dict:
what the route learns, deeper in the call, is seen by the middleware that logs the line)."""


class _Redact:
    """Redact every string of an event (its message, bound values, a traceback) of the
    server's secrets and of credential-shaped values: no line leaves with a secret."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        # uvicorn's copy of its message with terminal colours: the plain one is the event.
        event.pop("color_message", None)
        text = self._redactor.text
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = text(value)
            elif not isinstance(value, int | float | bool | None):
                event[key] = text(str(value))
        return event


def _json(event: Mapping[str, Any], **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(
    *, log_format: str, level: str, secrets: Iterable[str], stream: TextIO | None = None
) -> Redactor:
    """Route every log record (structlog's and the standard library's) through one formatter:
    JSON or text, with the bound context, redacted. Returns the redactor it uses."""
    redactor = Redactor(secrets)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_json)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _Redact(redactor),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return redactor


def request_fields() -> MutableMapping[str, Any] | None:
    """The access-log fields of the request being served (None outside a request)."""
    return _request.get()


def begin_request(fields: dict[str, Any]) -> Any:
    """Make `fields` the current request's (returns the token `end_request` takes)."""
    structlog.contextvars.bind_contextvars(request_id=fields["request_id"])
    return _request.set(fields)


def end_request(token: Any) -> None:
    _request.reset(token)
    structlog.contextvars.unbind_contextvars("request_id", "key", "tenant", "run_id")


def note_caller(key_id: str | None, tenant: str) -> None:
    """The request's caller is known: its key id (never the secret) and tenant."""
    fields = _request.get()
    if fields is not None:
        fields["key"], fields["tenant"] = key_id, tenant
    structlog.contextvars.bind_contextvars(key=key_id, tenant=tenant)


def note_run(run_id: str) -> None:
    """The request concerns this run (named in its path, or created by it)."""
    fields = _request.get()
    if fields is not None:
        fields["run_id"] = run_id
    structlog.contextvars.bind_contextvars(run_id=run_id)


def bind_run(run_id: str, tenant: str) -> None:
    """In a run's own task: everything it logs names the run and its tenant (and no request:
    the task outlives the request that started it)."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(run_id=run_id, tenant=tenant)
