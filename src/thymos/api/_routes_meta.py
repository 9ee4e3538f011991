"""`/health`, `/ready`, `/tools`: facts about the server itself."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from thymos.core import ErrorCode

from ._caller import Caller, current_caller
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
