"""Connection limits: how long, how large and how many, before a request reaches the app.

uvicorn bounds only the idle time between requests. A client that opens a connection and sends
half a request line, or a header of 200 MB, or a body one byte a minute, would otherwise hold a
socket (and memory) for ever, and enough of them stop the server answering anyone. This module
subclasses uvicorn's HTTP protocol to add, per connection:

- a header deadline (`THYMOS_HEADER_TIMEOUT_S`) from the first byte of a request (or the
  connection's opening) to the end of its headers, and a body deadline
  (`THYMOS_BODY_TIMEOUT_S`) from there to the end of the body: past either, 408 and close;
- a bound on the request line and headers together (`HEADER_BYTES_MAX`) and on their number
  (`HEADERS_MAX`): past either, 431 and close, checked before the bytes are parsed;
- a bound on open connections in all (`THYMOS_CONNECTIONS_MAX`) and from one client address
  (`THYMOS_CONNECTIONS_PER_CLIENT_MAX`): past either the connection is answered 429 and closed at
  once, so one client cannot take every socket;

and it answers a request that does not parse with the one error envelope (400) instead of
uvicorn's plain text. The idle time between requests is uvicorn's keep-alive timeout
(`THYMOS_IDLE_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from thymos.core import ErrorCode

from ._errors import STATUS_OF

HEADER_BYTES_MAX = 64 * 1024
"""The request line and all headers together: a bearer key, a long query and a browser's headers
take a few KiB; nothing legitimate comes near 64 KiB."""

HEADERS_MAX = 100
"""Header lines per request; browsers send about twenty."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    connections_max: int
    connections_per_client_max: int
    header_bytes_max: int = HEADER_BYTES_MAX
    headers_max: int = HEADERS_MAX


@dataclass(slots=True)
class ConnectionCounts:
    """Open connections of one server, in all and by client address (event loop only)."""

    total: int = 0
    by_client: Counter[str] = field(default_factory=Counter)

    def admit(self, client: str, limits: ConnectionLimits) -> ErrorCode | None:
        if self.total >= limits.connections_max:
            return ErrorCode.TOO_MANY_CONNECTIONS
        if self.by_client[client] >= limits.connections_per_client_max:
            return ErrorCode.TOO_MANY_CONNECTIONS
        self.total += 1
        self.by_client[client] += 1
        return None

    def release(self, client: str) -> None:
        self.total -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]


class _Refuse(Exception):
    """Raised from a parser callback to stop parsing and answer with an error."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_bytes(code: ErrorCode, message: str) -> bytes:
    """A whole HTTP/1.1 error response in the one envelope, closing the connection."""
    status = STATUS_OF[code]
    body = orjson.dumps({"error": {"code": code.value, "message": message}})
    retry = b"retry-after: 1\r\n" if status in (429, 503) else b""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            retry,
            b"connection: close\r\n\r\n",
            body,
        )
    )


_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
}

_HEAD, _BODY, _APP = "head", "body", "app"
"""Where a connection is: reading a request's line and headers, reading its body, or waiting for
the app (or idle between requests, which uvicorn's keep-alive timer bounds)."""


def limited_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` applied; one class (and one connection count)
    per server."""
    counts = ConnectionCounts()

    class LimitedHttpProtocol(HttpToolsProtocol):
        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._phase = _HEAD
            self._head_bytes = 0
            self._deadline: asyncio.TimerHandle | None = None
            self._counted: str | None = None
            self._refused = False

        # -- connections ---------------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else "unknown"
            refusal = counts.admit(address, limits)
            if refusal is not None:
                self._refuse(refusal, "this server holds as many connections as it allows")
                return
            self._counted = address
            self._arm(limits.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._counted is not None:
                counts.release(self._counted)
                self._counted = None
            super().connection_lost(exc)

        # -- bytes in ------------------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            if self._refused or self.transport.is_closing():
                return
            self._unset_keepalive_if_required()
            while data:
                if self._phase == _HEAD:
                    if self._deadline is None:
                        self._arm(limits.header_timeout_s)
                    room = limits.header_bytes_max - self._head_bytes
                    if room <= 0:
                        self._refuse(
                            ErrorCode.HEADERS_TOO_LARGE,
                            f"the request line and headers are over {limits.header_bytes_max} bytes",
                        )
                        return
                    part, data = data[:room], data[room:]
                    self._head_bytes += len(part)
                else:
                    part, data = data, b""
                if not self._feed(part):
                    return

        def _feed(self, data: bytes) -> bool:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                # No upgrade (WebSocket) is served: the request is answered as plain HTTP and
                # nothing after its headers is read, as uvicorn does.
                return False
            except httptools.HttpParserError as exc:
                refusal = exc.__context__
                if isinstance(refusal, _Refuse):
                    self._refuse(refusal.code, refusal.message)
                else:
                    self._refuse(ErrorCode.MALFORMED_REQUEST, "the request is not valid HTTP/1.1")
                return False
            return not self.transport.is_closing()

        # -- parser callbacks ----------------------------------------------------------------

        def on_headers_complete(self) -> None:
            if len(self.headers) > limits.headers_max:
                raise _Refuse(
                    ErrorCode.HEADERS_TOO_LARGE,
                    f"the request has more than {limits.headers_max} header lines",
                )
            self._phase = _BODY
            self._arm(limits.body_timeout_s)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._phase = _HEAD
            self._head_bytes = 0
            self._disarm()
            super().on_message_complete()

        # -- deadlines -----------------------------------------------------------------------

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            what = "its headers" if self._phase == _HEAD else "its body"
            self._refuse(ErrorCode.REQUEST_TIMEOUT, f"the client took too long to send {what}")

        # -- refusing ------------------------------------------------------------------------

        def _refuse(self, code: ErrorCode, message: str) -> None:
            """Answer `code` unless this request already has a response under way, then close."""
            self._refused = True
            self._disarm()
            cycle = self.cycle
            if cycle is None or (cycle.response_complete and self._phase == _HEAD):
                answered = False  # no request yet, or the previous one is done: a new request
            else:
                answered = cycle.response_started
            if not answered:
                self.transport.write(error_bytes(code, message))
            if cycle is not None and not cycle.response_complete:
                # The app's request is over: it reads a disconnect, and what it sends is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.close()

    return LimitedHttpProtocol
