"""`/health`, `/ready`, `/tools`, `/metrics`: facts about the server itself."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from thymos.core import ErrorCode
from thymos.observability import CONTENT_TYPE

from ._caller import Caller, Role, current_caller
from ._deps import runtime_of
from ._errors import error_response
from ._models import ErrorEnvelope

router = APIRouter(tags=["server"])


@router.get(
    "/health", summary="Liveness plus the runtime facts an operator should not have to infer"
)
async def health(request: Request) -> dict[str, Any]:
    return await runtime_of(request).health()


@router.get(
    "/ready",
    summary=("200 when the ledger and every MCP server answer and the server is not shutting down"),
    responses={503: {"model": ErrorEnvelope, "description": "Shutting down, or not ready"}},
)
async def ready(request: Request) -> Response:
    runtime = runtime_of(request)
    if not runtime.accepting:
        return error_response(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
    if not await runtime.ready():
        return error_response(ErrorCode.NOT_READY, "the ledger backend does not answer")
    if runtime.mcp is not None and not runtime.mcp.ready:
        down = sorted(n for n, s in runtime.mcp.state().items() if s["status"] != "ready")
        return error_response(
            ErrorCode.NOT_READY,
            f"MCP servers not ready: {', '.join(down)} (see /health)",
            {"mcp_servers": down},
        )
    return Response(b'{"status":"ready"}', media_type="application/json")


@router.get(
    "/providers",
    summary="Every cognition provider: default model, endpoint, and whether it is usable (never a key)",
    dependencies=[Depends(current_caller)],
)
async def providers(request: Request) -> dict[str, Any]:
    config = runtime_of(request).config
    return {
        "default_provider": config.default_provider,
        "providers": config.providers.listing(),
    }


@router.get(
    "/tools",
    summary="Every capability the caller's runs may scope: the server's and the packages its "
    "tenant installed",
)
async def tools(
    request: Request, caller: Annotated[Caller, Depends(current_caller)]
) -> dict[str, Any]:
    view = await runtime_of(request).views.view(caller.tenant)
    return {"tools": [spec.as_dict() for spec in view.tools.specs().values()]}


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format): for an admin key or the THYMOS_METRICS_TOKEN bearer",
    description=(
        "Counters of what this server recorded (runs by ending, intents, decisions, rejections "
        "by reason, votes, tool executions by tool), gauges of active runs, waiting approvals "
        "and SSE streams, and latency histograms (ledger append and commit, model turns by "
        "provider, tools by tool, approval waits, replays). Labels never hold a tenant, key or "
        "run id. Readable by an admin key (anyone, on an open server) or by "
        "`Authorization: Bearer <THYMOS_METRICS_TOKEN>`, which reads nothing else."
    ),
    response_class=Response,
    responses={
        200: {
            "description": "The metrics in Prometheus text exposition format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        429: {"model": ErrorEnvelope, "description": "The key is over its rate limit"},
    },
)
async def metrics(request: Request) -> Response:
    if not _scraper(request):
        caller = await current_caller(request)
        caller.require(Role.ADMIN)
    body = runtime_of(request).observer.metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE)


def _scraper(request: Request) -> bool:
    """Whether the request carries the metrics token (compared in constant time)."""
    token: str | None = request.app.state.settings.metrics_token
    header = request.headers.get("authorization")
    if token is None or header is None:
        return False
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )
