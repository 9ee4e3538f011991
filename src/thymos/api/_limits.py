"""Request size limits, enforced before a handler sees the body."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thymos.core import ErrorCode

from ._errors import error_response

BODY_BYTES_MAX = 1024 * 1024
"""1 MiB by default (`THYMOS_BODY_BYTES_MAX`): a run request with a long mock script fits."""


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Answers 413 when the declared or actual body is over `limit` (`THYMOS_BODY_BYTES_MAX`)."""

    def __init__(self, app: ASGIApp, limit: int = BODY_BYTES_MAX) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(
            ErrorCode.BODY_TOO_LARGE, f"the request body is over {self.limit} bytes"
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await too_large(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await too_large(scope, receive, send)
