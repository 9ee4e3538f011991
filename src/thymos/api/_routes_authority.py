"""Authority routes: approvals, writ revocation, the root public key and the policy schema."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from thymos.governance import SCHEMA

from ._body import parse_body, parse_optional_body, request_body_schema
from ._caller import Caller, Role, current_caller
from ._deps import runtime_of
from ._models import ERROR_RESPONSES, ApprovalBody, RevokeBody

router = APIRouter(tags=["authority"], responses=ERROR_RESPONSES)
CallerDep = Annotated[Caller, Depends(current_caller)]
CHANNEL_PATTERN = "^[a-z0-9][a-z0-9_-]{0,63}$"
CHANNEL = Annotated[str, Path(pattern=CHANNEL_PATTERN)]
CHANNEL_QUERY = Annotated[str | None, Query(pattern=CHANNEL_PATTERN)]


@router.post(
    "/runs/{run_id}/approvals/{channel}",
    summary="Approve or deny a pending proposal",
    openapi_extra=request_body_schema(ApprovalBody),
)
async def approve(
    run_id: str, channel: CHANNEL, request: Request, caller: CallerDep
) -> dict[str, Any]:
    caller.require(Role.OPERATOR)
    body = await parse_body(request, ApprovalBody)
    return await runtime_of(request).approve(
        run_id,
        caller.tenant,
        channel=channel,
        approve=body.approve,
        proposal_id=body.proposal_id,
        reason=body.reason,
        approver=caller.name,
        key_id=caller.key_id,
    )


@router.get("/approvals", summary="Pending approvals of every run the caller can see")
async def approvals(
    request: Request, caller: CallerDep, channel: CHANNEL_QUERY = None
) -> dict[str, Any]:
    pending = await runtime_of(request).pending_approvals(caller.tenant, channel)
    return {"approvals": pending}


@router.post(
    "/writs/{writ_id}/revoke",
    summary="Revoke a writ and every writ derived from it (admin)",
    openapi_extra=request_body_schema(RevokeBody, required=False),
)
async def revoke(writ_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    caller.require(Role.ADMIN)
    reason = (await parse_optional_body(request, RevokeBody)).reason
    return await runtime_of(request).revoke(writ_id, caller.tenant, by=caller.name, reason=reason)


@router.get("/writs/root-key", summary="The root public key that verifies every writ")
async def root_key(request: Request, caller: CallerDep) -> dict[str, Any]:
    return runtime_of(request).root_key()


@router.get(
    "/policy",
    summary="The caller's tenant's active policy set: its files (the server's and the policy "
    "packages the tenant activated) and hash",
)
async def policy(request: Request, caller: CallerDep) -> dict[str, Any]:
    active = (await runtime_of(request).views.view(caller.tenant)).policy
    return {"policy_hash": active.hash, "files": list(active.files)}


@router.get(
    "/policy/schema",
    summary="Thymos's Cedar schema, which policies are validated against",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def policy_schema(caller: CallerDep) -> Response:
    return Response(SCHEMA, media_type="text/plain; charset=utf-8")
