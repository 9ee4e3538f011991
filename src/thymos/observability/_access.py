"""The access log: exactly one line per HTTP request, written when its response is finished
(for a stream, when the stream ends), as pure ASGI middleware outside the app's own.

uvicorn's access log stays off, so there is one line per request, in the server's format.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import structlog

from ._logging import begin_request, end_request

Scope = dict[str, Any]
Receive = Any
Send = Any

log = structlog.get_logger("thymos.access")


class AccessLog:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        fields: dict[str, Any] = {"request_id": secrets.token_hex(8)}
        status = 0

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = begin_request(fields)
        try:
            await self.app(scope, receive, sending)
        except BaseException:
            status = status or 500
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            params = scope.get("path_params") or {}
            run_id = fields.get("run_id") or params.get("run_id")
            log.info(
                "request",
                method=scope.get("method"),
                path=template or scope.get("path"),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                key=fields.get("key"),
                tenant=fields.get("tenant"),
                run_id=run_id,
            )
            end_request(token)
