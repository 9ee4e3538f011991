"""Connection limits: how long, how large and how many, before a request reaches the app.

uvicorn bounds only the idle time between requests. A client that opens a connection and sends
half a request line, or a header of 200 MB, or a body one byte a minute, or never reads what it
asked for, would otherwise hold a socket (and memory) for ever, and enough of them stop the
server answering anyone. This module subclasses uvicorn's HTTP protocol to add, per connection:

- a header deadline (`THYMOS_HEADER_TIMEOUT_S`) from the first byte of a request (or the
  connection's opening) to the end of its headers, and a body deadline
  (`THYMOS_BODY_TIMEOUT_S`) from there to the end of the body: past either, 408 and close;
- a send deadline (`THYMOS_SEND_TIMEOUT_S`): a client that reads nothing for that long while
  the server has more to send than fits in its buffers, or while a closing connection still
  holds data, is disconnected (a slow reader that keeps reading is not);
- bounds on the request line and headers (`HEADER_BYTES_MAX`, `HEADERS_MAX`: 431) and on what
  follows them (body and chunked trailers, `MESSAGE_BYTES_MAX`: 413), counted before the bytes
  are parsed;
- bounds on open connections in all (`THYMOS_CONNECTIONS_MAX`) and per client
  (`THYMOS_CONNECTIONS_PER_CLIENT_MAX`; a client is an IPv4 address or an IPv6 /64): a client
  over its share is answered 429 and closed; at the total, the connection idle the longest (no
  request in progress and nothing left to send: between requests or still sending its headers)
  is dropped to make room, and only when none is idle is the new one refused;

and it answers a request that does not parse with the one error envelope (400) instead of
uvicorn's plain text. Pipelined requests (a request sent before the previous response ended)
are not served: the connection closes after the current response, and HTTP/1.1 clients retry on
a new one; an `Upgrade` is never performed, and a request asking for one with a body is refused
(the parser's state after it cannot be trusted). The idle time between requests is uvicorn's
keep-alive timeout (`THYMOS_IDLE_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio
import ipaddress
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
from ._limits import BODY_BYTES_MAX

HEADER_BYTES_MAX = 64 * 1024
"""The request line and all headers together: a bearer key, a long query and a browser's headers
take a few KiB; nothing legitimate comes near 64 KiB."""

HEADERS_MAX = 100
"""Header lines (and trailer lines) per request; browsers send about twenty."""

MESSAGE_BYTES_MAX = BODY_BYTES_MAX + HEADER_BYTES_MAX
"""What may follow the headers on the wire: the largest body the app accepts, with its chunk
framing and trailers. The app refuses large bodies itself (413); this also bounds what is parsed
when the app answers without reading the body."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    connections_max: int
    connections_per_client_max: int
    header_bytes_max: int = HEADER_BYTES_MAX
    headers_max: int = HEADERS_MAX
    message_bytes_max: int = MESSAGE_BYTES_MAX


def client_key(address: str) -> str:
    """Who a connection belongs to for the per-client share: its IPv4 address, or the /64 of its
    IPv6 address (one network, which a single host can fill with addresses)."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Evictable:
    """What the table needs of a connection to drop it for room."""

    def evictable(self) -> bool:
        """True when dropping it loses nothing: no request in progress, nothing left to send."""
        raise NotImplementedError

    def evict(self) -> None:
        raise NotImplementedError


@dataclass(slots=True)
class ConnectionTable:
    """Open connections of one server: how many in all and per client, and which are idle, in
    the order they became idle (touched only on the event loop)."""

    total: int = 0
    by_client: Counter[str] = field(default_factory=Counter)
    idle: dict[Evictable, None] = field(default_factory=dict)

    def admit(self, client: str, limits: ConnectionLimits) -> bool:
        if self.by_client[client] >= limits.connections_per_client_max:
            return False
        if self.total >= limits.connections_max:
            # Room for the new connection: the one idle the longest goes (it releases itself).
            oldest = next((c for c in self.idle if c.evictable()), None)
            if oldest is None:
                return False
            oldest.evict()
        self.total += 1
        self.by_client[client] += 1
        return True

    def release(self, client: str) -> None:
        self.total -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]
        assert self.total >= 0, "a connection was released twice"


class _Refuse(Exception):
    """Raised from a parser callback to stop parsing and answer with an error."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Pipelined(Exception):
    """Raised from a parser callback when a request begins before the previous response ended."""


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
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
}

_HEAD, _BODY, _APP = "head", "body", "app"
"""Where a connection is: reading a request's line and headers (or idle before one), reading its
body, or waiting for the app (input is then not parsed until the response ends)."""


def limited_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` applied; one class (and one connection table)
    per server."""
    table = ConnectionTable()

    class LimitedHttpProtocol(HttpToolsProtocol, Evictable):
        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._phase = _HEAD
            self._bytes = 0
            """Bytes of the current phase: the request line and headers, or what follows them."""
            self._lines = 0
            self._deadline: asyncio.TimerHandle | None = None
            self._send_watch: asyncio.TimerHandle | None = None
            self._send_left = 0
            self._client: str | None = None
            self._ignore_input = False

        # -- connections ---------------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            client = client_key(self.client[0] if self.client else "unknown")
            if not table.admit(client, limits):
                self._refuse(
                    ErrorCode.TOO_MANY_CONNECTIONS,
                    "this server holds as many connections from this client (or in all) as it "
                    "allows; close some and retry",
                )
                return
            self._client = client
            self._set_idle(True)
            self._arm(limits.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._unwatch_send()
            self._release()
            super().connection_lost(exc)

        def evictable(self) -> bool:
            return (
                self._phase == _HEAD
                and (self.cycle is None or self.cycle.response_complete)
                and self.transport.get_write_buffer_size() == 0
                and not self.transport.is_closing()
            )

        def evict(self) -> None:
            """Dropped to make room for a new connection: release the slot now, close at once."""
            self._release()
            self._ignore_input = True
            self._disarm()
            self.transport.abort()

        def _release(self) -> None:
            """Give back the connection's slot, once (on eviction or when it is lost)."""
            self._set_idle(False)
            if self._client is not None:
                table.release(self._client)
                self._client = None

        def _set_idle(self, idle: bool) -> None:
            if idle and self._client is not None:
                table.idle[self] = None
            else:
                table.idle.pop(self, None)

        # -- bytes in ------------------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            if self._ignore_input or self.transport.is_closing():
                return
            self._unset_keepalive_if_required()
            while data:
                if self._phase == _HEAD:
                    if self._deadline is None:
                        self._arm(limits.header_timeout_s)
                    budget, code, what = (
                        limits.header_bytes_max,
                        ErrorCode.HEADERS_TOO_LARGE,
                        "the request line and headers are",
                    )
                else:
                    budget, code, what = (
                        limits.message_bytes_max,
                        ErrorCode.BODY_TOO_LARGE,
                        "the request body is",
                    )
                room = budget - self._bytes
                if room <= 0:
                    self._refuse(code, f"{what} over {budget} bytes")
                    return
                part, data = data[:room], data[room:]
                self._bytes += len(part)
                if not self._feed(part):
                    return

        def _feed(self, data: bytes) -> bool:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                return self._upgrade_asked()
            except httptools.HttpParserError as exc:
                cause = exc.__context__
                if isinstance(cause, _Pipelined):
                    return False
                if isinstance(cause, _Refuse):
                    self._refuse(cause.code, cause.message)
                else:
                    self._refuse(ErrorCode.MALFORMED_REQUEST, "the request is not valid HTTP/1.1")
                return False
            return not self.transport.is_closing()

        def _upgrade_asked(self) -> bool:
            """No upgrade is ever performed, and the parser stops reading the request's body at
            an upgrade: a request with a body is refused (its body would be read as the next
            request), one without is answered and the connection then closed."""
            body = any(
                (name == b"content-length" and value.strip() not in (b"0", b""))
                or name == b"transfer-encoding"
                for name, value in self.headers
            )
            if body:
                self._refuse(
                    ErrorCode.MALFORMED_REQUEST, "a request with a body cannot ask for an upgrade"
                )
                return False
            self._ignore_input = True
            self._disarm()
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return False

        # -- parser callbacks ----------------------------------------------------------------

        def on_message_begin(self) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                # A request begun before the previous response ended (pipelined): not served,
                # and not parsed (its headers would escape the header limit and deadline). The
                # current response ends the connection.
                self._ignore_input = True
                self._disarm()
                self.cycle.keep_alive = False
                raise _Pipelined
            self._lines = 0
            super().on_message_begin()

        def on_header(self, name: bytes, value: bytes) -> None:
            # Counted for headers and for chunked trailers alike (the parser reports both here).
            self._lines += 1
            if self._lines > limits.headers_max:
                raise _Refuse(
                    ErrorCode.HEADERS_TOO_LARGE,
                    f"the request has more than {limits.headers_max} header or trailer lines",
                )
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._set_idle(False)
            self._phase = _BODY
            self._bytes = 0
            self._arm(limits.body_timeout_s)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._bytes = 0
            self._disarm()
            # The app may have answered before the body ended (a 401, a 405): then the next
            # request's headers come next; otherwise input waits for the response.
            answered = self.cycle is not None and self.cycle.response_complete
            self._phase = _HEAD if answered else _APP
            super().on_message_complete()
            if answered:
                self._set_idle(True)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._phase == _APP:
                self._phase = _HEAD  # the next request's headers may come
            if self.transport.is_closing():
                self._abort_unless_flushed()
            elif self._phase == _HEAD:
                self._set_idle(True)

        def timeout_keep_alive_handler(self) -> None:
            super().timeout_keep_alive_handler()
            self._abort_unless_flushed()

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

        def pause_writing(self) -> None:
            # More to send than the buffers hold: the client must keep reading.
            super().pause_writing()
            self._watch_send()

        def resume_writing(self) -> None:
            super().resume_writing()
            if not self.transport.is_closing():
                self._unwatch_send()

        def _abort_unless_flushed(self) -> None:
            """A closing connection waits for its buffer to be sent, possibly for ever: it is
            watched like a paused one, and dropped if the client stops reading."""
            self._watch_send()

        def _watch_send(self) -> None:
            if self._send_watch is None:
                self._send_left = self.transport.get_write_buffer_size()
                self._send_watch = self.loop.call_later(limits.send_timeout_s, self._send_check)

        def _unwatch_send(self) -> None:
            if self._send_watch is not None:
                self._send_watch.cancel()
                self._send_watch = None

        def _send_check(self) -> None:
            """The send deadline: what is left to send must have shrunk since the last check
            (the client is reading, however slowly), else the client is gone in all but name."""
            self._send_watch = None
            left = self.transport.get_write_buffer_size()
            if left and left < self._send_left:
                self._watch_send()
                return
            if left == 0 and not self.transport.is_closing():
                return
            self._end_request()
            self.transport.abort()

        def _end_request(self) -> None:
            """The app's request in progress is over: it reads a disconnect, and what it sends
            from now on is dropped (uvicorn's own state for a client that went away)."""
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True
                self.cycle.message_event.set()

        # -- refusing ------------------------------------------------------------------------

        def _refuse(self, code: ErrorCode, message: str) -> None:
            """Answer `code` unless the request already has a response under way, then close."""
            self._ignore_input = True
            self._disarm()
            self._set_idle(False)
            cycle = self.cycle
            if cycle is None or (cycle.response_complete and self._phase == _HEAD):
                answered = False  # no request yet, or the previous one is done: a new request
            else:
                answered = cycle.response_started
            if not answered:
                self.transport.write(error_bytes(code, message))
            self._end_request()
            self.transport.close()
            self._abort_unless_flushed()

    return LimitedHttpProtocol
