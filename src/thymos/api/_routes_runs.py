"""Run routes: create, list, read, execution session, world, replay and ledger export.

Each handler parses, calls one runtime method, and maps the result.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response, StreamingResponse

from thymos.core import ErrorCode, RunStatus, ThymosError, is_run_id
from thymos.observability import note_run
from thymos.runtime import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX

from ._body import parse_body, parse_optional_body, request_body_schema
from ._caller import Caller, Role, current_caller
from ._deps import runtime_of
from ._models import (
    ERROR_RESPONSES,
    BranchRunBody,
    CancelBody,
    CreateRunBody,
    ResumeBody,
    RunCancelling,
    RunCreated,
)

router = APIRouter(tags=["runs"], responses=ERROR_RESPONSES)

IDEMPOTENCY_KEY_CHARS_MAX = 200
SEQ_MAX = 2**63 - 1
"""The largest seq a query may name (SQLite's INTEGER); larger is a bad query value, not a crash."""
CallerDep = Annotated[Caller, Depends(current_caller)]


@router.post(
    "/runs",
    status_code=202,
    response_model=RunCreated,
    summary="Start a new run",
    openapi_extra=request_body_schema(CreateRunBody),
)
async def create_run(
    request: Request,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(max_length=IDEMPOTENCY_KEY_CHARS_MAX)] = None,
) -> Any:
    caller.require(Role.OPERATOR)
    body = await parse_body(request, CreateRunBody)
    record, _ = await runtime_of(request).start_run(
        body.to_request(),
        tenant=caller.tenant,
        idempotency_key=idempotency_key,
        created_by=caller.key_id,
    )
    note_run(record.run_id)
    return {"run_id": record.run_id, "task": record.spec["task"], "status": record.status}


RUN_ID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def decode_cursor(cursor: str) -> str:
    """A cursor is the last run id of the previous page. Clients treat it as opaque; any run id
    is a valid position in the newest-first order, so every cursor the schema allows is one the
    server accepts."""
    if not is_run_id(cursor):
        raise ThymosError(ErrorCode.INVALID_CURSOR, "cursor is not one this server issued")
    return cursor


@router.get("/runs", summary="List visible runs, newest first")
async def list_runs(
    request: Request,
    caller: CallerDep,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = PAGE_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None, Query(max_length=200, json_schema_extra={"pattern": RUN_ID_PATTERN})
    ] = None,
    parent_run_id: Annotated[
        str | None,
        Query(
            max_length=200,
            json_schema_extra={"pattern": RUN_ID_PATTERN},
            description="Only the child runs this run's `delegate` calls started",
        ),
    ] = None,
) -> dict[str, Any]:
    before = decode_cursor(cursor) if cursor is not None else None
    if parent_run_id is not None and not is_run_id(parent_run_id):
        raise ThymosError(
            ErrorCode.INVALID_QUERY,
            "parent_run_id is not a run id",
            {"parameter": "parent_run_id"},
        )
    runs = await runtime_of(request).list_runs(
        tenant=caller.tenant,
        status=status.value if status else None,
        before=before,
        limit=limit + 1,
        parent_run_id=parent_run_id,
    )
    next_cursor = runs[limit - 1]["run_id"] if len(runs) > limit else None
    return {"runs": runs[:limit], "next_cursor": next_cursor}


@router.get("/runs/{run_id}", summary="The persisted run record and summary")
async def get_run(run_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    return await runtime_of(request).get_run(run_id, caller.tenant)


@router.post(
    "/runs/{run_id}/resume",
    status_code=202,
    response_model=RunCreated,
    summary="Resume a failed or cancelled run on its own ledger (operator)",
    openapi_extra=request_body_schema(ResumeBody, required=False),
)
async def resume_run(run_id: str, request: Request, caller: CallerDep) -> Any:
    caller.require(Role.OPERATOR)
    max_steps = (await parse_optional_body(request, ResumeBody)).max_steps
    record = await runtime_of(request).resume(
        run_id, caller.tenant, max_steps=max_steps, requested_by=caller.name, key_id=caller.key_id
    )
    return {"run_id": record.run_id, "task": record.spec["task"], "status": record.status}


@router.post(
    "/runs/{run_id}/branch",
    status_code=201,
    response_model=RunCreated,
    summary="Start a new run from the world after one of this run's commits (operator)",
    description=(
        "The branch is a run like any other, with its own writ (the source's tool scopes, "
        "effect ceiling and budget) and the source's task, max_steps and cognition unless the "
        "body changes them. Its first entry records `branch_of`; its world starts as the "
        "source's world after the commit. A commit id that is not one of the source run's "
        "commits is 422 `commit_not_in_run`."
    ),
    openapi_extra=request_body_schema(BranchRunBody),
)
async def branch_run(run_id: str, request: Request, caller: CallerDep) -> Any:
    caller.require(Role.OPERATOR)
    body = await parse_body(request, BranchRunBody)
    record = await runtime_of(request).branch(
        run_id,
        caller.tenant,
        body.to_request(),
        created_by=caller.key_id,
        requested_by=caller.name,
    )
    return {"run_id": record.run_id, "task": record.spec["task"], "status": record.status}


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    response_model=RunCancelling,
    summary="Cancel an active run now (operator)",
    openapi_extra=request_body_schema(CancelBody, required=False),
)
async def cancel_run(run_id: str, request: Request, caller: CallerDep) -> Any:
    caller.require(Role.OPERATOR)
    reason = (await parse_optional_body(request, CancelBody)).reason
    return await runtime_of(request).cancel(
        run_id, caller.tenant, requested_by=caller.name, key_id=caller.key_id, reason=reason
    )


@router.get(
    "/runs/{run_id}/delegations",
    summary="The child runs this run delegated to, newest first",
    description=(
        "One item per child run its `delegate` calls started: `child_run_id`, `task`, "
        "`status`, `terminated_by`, `final_answer`, `usage`, the child's narrowed authority "
        "(`tool_scopes`, `tools`, `effect_ceiling`, `budget`, `writ` id and validity) and "
        "`seq`, the parent's `delegation` entry. Paged like `GET /runs`."
    ),
)
async def delegations(
    run_id: str,
    request: Request,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = PAGE_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None, Query(max_length=200, json_schema_extra={"pattern": RUN_ID_PATTERN})
    ] = None,
) -> dict[str, Any]:
    before = decode_cursor(cursor) if cursor is not None else None
    children = await runtime_of(request).delegations.list(
        run_id, caller.tenant, before=before, limit=limit + 1
    )
    next_cursor = children[limit - 1]["child_run_id"] if len(children) > limit else None
    return {"run_id": run_id, "delegations": children[:limit], "next_cursor": next_cursor}


@router.get("/runs/{run_id}/execution", summary="The live execution session")
async def execution(run_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    return await runtime_of(request).execution(run_id, caller.tenant)


@router.get("/runs/{run_id}/world", summary="The current projected world of the run")
async def world(run_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    return await runtime_of(request).world(run_id, caller.tenant, None)


@router.get("/runs/{run_id}/world/at", summary="The world replayed up to a sequence number")
async def world_at(
    run_id: str,
    request: Request,
    caller: CallerDep,
    # Parsed here, not by FastAPI, so a bad value is answered with the run's head in `details`.
    seq: Annotated[str, Query(json_schema_extra={"type": "integer", "minimum": 0})],
) -> dict[str, Any]:
    runtime = runtime_of(request)
    try:
        at = int(seq)
    except ValueError:
        view = await runtime.get_run(run_id, caller.tenant)
        head = view["summary"]["head_seq"]
        raise ThymosError(
            ErrorCode.SEQ_OUT_OF_RANGE,
            f"seq must be a whole number between 0 and {head}",
            {"head": head},
        ) from None
    return await runtime.world(run_id, caller.tenant, at)


@router.get("/runs/{run_id}/replay", summary="Verify the ledger and fold it into a replay report")
async def replay(
    run_id: str,
    request: Request,
    caller: CallerDep,
    require_compiler: Annotated[str | None, Query(max_length=200)] = None,
    require_policy: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    return await runtime_of(request).replay(
        run_id, caller.tenant, require_compiler=require_compiler, require_policy=require_policy
    )


@router.get(
    "/runs/{run_id}/ledger",
    summary="The run's ledger as JSON Lines of canonical envelopes",
    description=(
        "Each line is a stored canonical envelope, verbatim, in seq order. With `proof=true` the "
        'export also carries what proves it: `{"document": {...}}` lines (the policy sets and '
        "tool catalogs its decisions name, each before the first entry naming it) and "
        '`{"signed_head": {...}}` lines (the server\'s Ed25519 signatures over heads, each '
        "right after the entry it signs). docs/LEDGER.md documents the format."
    ),
    response_class=Response,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def ledger(
    run_id: str,
    request: Request,
    caller: CallerDep,
    after_seq: Annotated[int, Query(ge=-1, le=SEQ_MAX)] = -1,
    proof: bool = False,
) -> Response:
    chunks = await runtime_of(request).export(run_id, caller.tenant, after_seq, proof=proof)
    return StreamingResponse(chunks, media_type="application/x-ndjson")
