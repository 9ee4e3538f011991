"""`GET /usage`: per-key usage when the API gateway is on (keys exist)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from ._auth import Gateway
from ._caller import Caller, current_caller
from ._deps import runtime_of
from ._models import ERROR_RESPONSES

router = APIRouter(tags=["usage"])

CallerDep = Annotated[Caller, Depends(current_caller)]


class RateWindow(BaseModel):
    """The key's current rate-limit window (a sliding minute)."""

    kind: Literal["sliding"]
    used: int = Field(description="Requests admitted in the last 60 seconds")
    remaining: int = Field(description="Requests the key may still make now")
    resets_at: str | None = Field(
        description="When the oldest request in the window leaves it (RFC 3339); null if empty"
    )


class KeyUsage(BaseModel):
    key_id: str
    name: str
    tenant: str
    role: Literal["admin", "operator", "viewer"]
    source: Literal["cli", "env"]
    created_at: str
    requests: int = Field(description="Authenticated requests admitted (rate-limited ones are not)")
    runs_created: int
    input_tokens: int = Field(description="Model input tokens of the runs this key created")
    output_tokens: int = Field(description="Model output tokens of the runs this key created")
    tool_calls: int = Field(description="Tool calls of the runs this key created")
    usd_millicents: int = Field(description="Model spend of the runs this key created")
    rpm: int | None = Field(description="Requests per minute allowed; null is unlimited")
    window: RateWindow | None = Field(description="Null for a key without a rate limit")


class UsageReport(BaseModel):
    gateway: bool = Field(description="False when no keys exist and the server is open")
    window_seconds: float
    keys: list[KeyUsage]


@router.get(
    "/usage",
    response_model=UsageReport,
    summary="Per-key usage: every key for an admin, the caller's own key otherwise",
    responses={
        401: {**ERROR_RESPONSES[429], "description": "No or bad API key"},
        429: ERROR_RESPONSES[429],
    },
)
async def usage(request: Request, caller: CallerDep) -> Any:
    gateway: Gateway = request.app.state.gateway
    report: dict[str, Any] = await gateway.usage(caller, runtime_of(request).unpersisted_usage())
    return report
