"""`http_fetch`: one HTTP request to a public address, never into the server's own networks.

Every hop (the first request and each redirect, followed by hand) is checked after name
resolution: each address the name resolves to must be public, so loopback, private (RFC 1918,
IPv6 unique local), link-local (the cloud metadata address included), CGNAT, multicast,
unspecified and reserved addresses are refused, in IPv4, IPv6 and IPv4-mapped IPv6, unless
`THYMOS_HTTP_ALLOW` names the host. The request then goes to the very address that was checked
(the name is kept for `Host` and TLS), so a name that resolves differently a moment later
cannot lead elsewhere. Time and size are bounded; a body over the cap is cut and says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from thymos.core import Effect, Risk, ToolFailureCode, ToolSpec

from ._contract import ToolContext, ToolFailure, ToolOutcome

FETCH_TIMEOUT_S = 30.0
FETCH_BODY_BYTES_MAX = 1024 * 1024
FETCH_REDIRECTS_MAX = 5
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
SHOWN_HEADERS = ("content-type", "content-length", "location", "etag", "last-modified")

Resolver = Callable[[str, int], Awaitable[list[str]]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def refused_address(text: str) -> str | None:
    """Why an address may not be fetched (None when it is public)."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata lives there)"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "carrier-grade NAT"
    if address.is_private:
        return "private"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "not a unicast public address"
    if not address.is_global:
        return "not a public address"
    return None


class HttpFetch:
    spec = ToolSpec(
        name="http_fetch",
        description=(
            "Make one HTTP request to a public address (redirects followed, each checked) and "
            "observe the status, main headers and body (text, capped at 1 MiB)."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "url": {"type": "string", "minLength": 1, "maxLength": 8192},
                "method": {"type": "string", "enum": list(METHODS)},
                "headers": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "maxLength": 8192},
                },
                "body": {"type": "string", "maxLength": FETCH_BODY_BYTES_MAX},
            },
            "required": ["url"],
            "additionalProperties": False,
        },
        effect=Effect.EXTERNAL,
        risk=Risk.MEDIUM,
        idempotent=False,
        compensable=False,
    )

    def __init__(
        self, allow: frozenset[str] = frozenset(), resolver: Resolver | None = None
    ) -> None:
        self.allow = frozenset(host.lower() for host in allow)
        self.resolve = resolver or system_resolver

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        method = str(args.get("method", "GET"))
        headers = {str(k): str(v) for k, v in (args.get("headers") or {}).items()}
        body = args.get("body")
        url = str(args["url"])
        try:
            async with httpx.AsyncClient(
                trust_env=False, timeout=FETCH_TIMEOUT_S, follow_redirects=False
            ) as client:
                async with asyncio.timeout(FETCH_TIMEOUT_S):
                    for _ in range(FETCH_REDIRECTS_MAX + 1):
                        response, data, cut = await self._hop(client, method, url, headers, body)
                        location = response.headers.get("location")
                        if response.is_redirect and location:
                            url = urljoin(url, location)
                            if response.status_code in (301, 302, 303) and method != "HEAD":
                                method, body = "GET", None
                            continue
                        return ToolOutcome(
                            {
                                "url": url,
                                "status": response.status_code,
                                "headers": {
                                    k: response.headers[k]
                                    for k in SHOWN_HEADERS
                                    if k in response.headers
                                },
                                "body": data.decode(response.encoding or "utf-8", "replace"),
                                "truncated": cut,
                            }
                        )
        except TimeoutError:
            raise ToolFailure(
                ToolFailureCode.TIMED_OUT, f"no answer within {FETCH_TIMEOUT_S:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise ToolFailure(
                ToolFailureCode.CONNECTION_FAILED, f"the request failed: {type(exc).__name__}"
            ) from None
        raise ToolFailure(
            ToolFailureCode.CONNECTION_FAILED, f"more than {FETCH_REDIRECTS_MAX} redirects"
        )

    async def _hop(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Any,
    ) -> tuple[httpx.Response, bytes, bool]:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            raise ToolFailure(ToolFailureCode.INVALID_URL, f"{url!r} is not an http(s) URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ToolFailure(ToolFailureCode.INVALID_URL, f"{url!r} has a bad port") from None
        try:
            addresses = await self.resolve(host, port)
        except OSError:
            raise ToolFailure(
                ToolFailureCode.CONNECTION_FAILED, f"{host!r} does not resolve"
            ) from None
        if not addresses:
            raise ToolFailure(ToolFailureCode.CONNECTION_FAILED, f"{host!r} does not resolve")
        if host not in self.allow:
            for address in addresses:
                why = refused_address(address)
                if why is not None:
                    raise ToolFailure(
                        ToolFailureCode.ADDRESS_REFUSED,
                        f"{host} resolves to {address}, a {why} address (THYMOS_HTTP_ALLOW "
                        "names hosts that may be fetched anyway)",
                    )
        address = addresses[0]
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        request = client.build_request(
            method,
            pinned,
            headers={**headers, "Host": parts.netloc.rsplit("@", 1)[-1]},
            content=body.encode() if isinstance(body, str) else None,
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )
        response = await client.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            size = 0
            cut = False
            async for chunk in response.aiter_bytes():
                if size + len(chunk) > FETCH_BODY_BYTES_MAX:
                    chunks.append(chunk[: FETCH_BODY_BYTES_MAX - size])
                    cut = True
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            await response.aclose()
        return response, b"".join(chunks), cut
