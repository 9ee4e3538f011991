"""The request guard: what a request must be before any route sees it.

A server on a developer's machine is reachable by every web page the developer opens: a page can
send a "simple" cross-origin POST (`text/plain`, no preflight), and a name the page's owner
controls can be rebound to 127.0.0.1 (DNS rebinding). With tools that edit files and run
commands, either would be code execution from a web page. So, in this order, every request:

1. names each single-valued header at most once (`duplicate_header`, 400): two `Authorization`
   or `Host` headers are ambiguous, and different parts of a stack may pick different ones;
2. names a host this server serves (`host_not_allowed`, 400): loopback names and addresses, the
   address it is bound to, and `THYMOS_ALLOWED_HOSTS`; a rebound name is refused;
3. comes from no browser origin, its own origin, or one listed in `THYMOS_CORS_ORIGINS`
   (`origin_not_allowed`, 403); listed origins get CORS headers and preflight answers;
4. sends its body as JSON (`unsupported_media_type`, 415), which a browser cannot do across
   origins without a preflight.

`HEAD` is answered wherever `GET` is: the request is routed as a `GET` and only the status and
headers are sent, so a stream's `HEAD` ends at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thymos.core import ErrorCode

from ._errors import error_response

SINGLE_HEADERS = (
    b"host",
    b"authorization",
    b"content-type",
    b"content-length",
    b"origin",
    b"idempotency-key",
    b"last-event-id",
)
"""Headers whose repetition would be ambiguous: each may appear at most once."""

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
CORS_EXPOSE_HEADERS = "Retry-After, Content-Disposition, WWW-Authenticate"
CORS_ALLOW_METHODS = "GET, HEAD, POST"
CORS_MAX_AGE_S = 600
"""How long a browser may cache a preflight answer."""

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """Which hosts and browser origins this server answers to."""

    hosts: frozenset[str]
    host_suffixes: tuple[str, ...]
    any_host: bool
    cors_origins: frozenset[str]

    @classmethod
    def build(
        cls, *, bind_host: str, allowed_hosts: Iterable[str], cors_origins: Iterable[str]
    ) -> GuardPolicy:
        hosts = set(LOOPBACK_NAMES)
        bound = bind_host.strip("[]").lower()
        if bound not in ("0.0.0.0", "::", ""):
            hosts.add(bound)
        suffixes = [".localhost"]
        any_host = False
        for host in allowed_hosts:
            if host == "*":
                any_host = True
            elif host.startswith("*."):
                suffixes.append(host[1:])
            else:
                hosts.add(host)
        return cls(frozenset(hosts), tuple(suffixes), any_host, frozenset(cors_origins))

    def host_allowed(self, host: str) -> bool:
        """`host` is the Host header's name or address, lowercase, without port or brackets."""
        if self.any_host or host in self.hosts or host.endswith(self.host_suffixes):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def split_host(value: str) -> str | None:
    """The name or address of a Host header value (`name[:port]`, `[v6]:port`), lowercase;
    None when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not _is_port(value[end + 1 :])):
            return None
        return value[1:end] or None
    if value.count(":") > 1:
        return None  # an IPv6 address must be in brackets
    name, sep, port = value.rpartition(":") if ":" in value else (value, "", "")
    if sep and not _is_port(":" + port):
        return None
    if not name or any(c in name for c in "/@?#\\ "):
        return None
    return name


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and len(text) <= 6


def _media_type_is_json(value: str) -> bool:
    media, _, params = value.partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if not key.strip():
            continue
        if key.strip().lower() != "charset" or val.strip().strip('"').lower() != "utf-8":
            return False
    return True


class RequestGuard:
    """Pure ASGI middleware applying the checks in the module docstring."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in headers and name in SINGLE_HEADERS:
                await error_response(
                    ErrorCode.DUPLICATE_HEADER,
                    f"the {name.decode()} header is sent more than once",
                    {"header": name.decode()},
                )(scope, receive, send)
                return
            headers.setdefault(name, value)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            code, message, details = refusal
            await error_response(code, message, details)(scope, receive, send)
            return
        origin = headers.get(b"origin", b"").decode("latin-1")
        cors = origin if origin in self.policy.cors_origins else None
        method = scope["method"]
        if method == "OPTIONS" and b"access-control-request-method" in headers:
            await self._preflight(cors, origin, scope, receive, send)
            return
        if cors is not None:
            send = _with_cors(send, cors)
        if method == "HEAD":
            await self.app({**scope, "method": "GET"}, receive, _headers_only(send))
            return
        await self.app(scope, receive, send)

    def _refusal(
        self, scope: Scope, headers: dict[bytes, bytes]
    ) -> tuple[ErrorCode, str, dict[str, str] | None] | None:
        raw_host = headers.get(b"host")
        if raw_host is None:
            return ErrorCode.HOST_NOT_ALLOWED, "the request has no Host header", None
        host_value = raw_host.decode("latin-1")
        host = split_host(host_value)
        if host is None or not self.policy.host_allowed(host):
            return (
                ErrorCode.HOST_NOT_ALLOWED,
                f"this server does not answer to the host {host_value[:200]!r}; "
                "THYMOS_ALLOWED_HOSTS lists more names",
                {"host": host_value[:200]},
            )
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            same = text.lower() in (f"http://{host_value.lower()}", f"https://{host_value.lower()}")
            if not same and text not in self.policy.cors_origins:
                return (
                    ErrorCode.ORIGIN_NOT_ALLOWED,
                    f"requests from the web origin {text[:200]!r} are refused; "
                    "THYMOS_CORS_ORIGINS lists the origins allowed",
                    {"origin": text[:200]},
                )
        elif headers.get(b"sec-fetch-site") == b"cross-site":
            return (
                ErrorCode.ORIGIN_NOT_ALLOWED,
                "cross-site browser requests are refused",
                None,
            )
        if scope["method"] in BODY_METHODS:
            content_type = headers.get(b"content-type")
            if content_type is None:
                has_body = headers.get(b"content-length", b"0").strip() not in (b"0", b"")
                if has_body or b"transfer-encoding" in headers:
                    return (
                        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                        "a request body must be sent as Content-Type: application/json",
                        None,
                    )
            elif not _media_type_is_json(content_type.decode("latin-1")):
                return (
                    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                    "a request body must be sent as Content-Type: application/json, "
                    f"not {content_type.decode('latin-1')[:100]!r}",
                    {"content_type": content_type.decode("latin-1")[:100]},
                )
        return None

    async def _preflight(
        self, cors: str | None, origin: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if cors is None:
            # Same-origin requests never preflight; anything else asking must be listed.
            await error_response(
                ErrorCode.ORIGIN_NOT_ALLOWED,
                f"requests from the web origin {origin[:200]!r} are refused; "
                "THYMOS_CORS_ORIGINS lists the origins allowed",
                {"origin": origin[:200]} if origin else None,
            )(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-origin", cors.encode()),
                    (b"access-control-allow-methods", CORS_ALLOW_METHODS.encode()),
                    (b"access-control-allow-headers", CORS_ALLOW_HEADERS.encode()),
                    (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
                    (b"vary", b"Origin"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _with_cors(send: Send, origin: str) -> Send:
    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers += [
                (b"access-control-allow-origin", origin.encode()),
                (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode()),
                (b"vary", b"Origin"),
            ]
            message = {**message, "headers": headers}
        await send(message)

    return cors_send


def _headers_only(send: Send) -> Send:
    """For HEAD: the status and headers of the GET, then the end of the response at once (the
    server then reports the client gone, which ends a stream's producer)."""
    done = False

    async def head_send(message: Message) -> None:
        nonlocal done
        if done:
            return
        if message["type"] == "http.response.start":
            await send(message)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            done = True

    return head_send
