"""`/audit/entries` and `/audit/entries/count`: the entries of the caller's tenant, across runs,
in time order, as JSON pages or a streamed CSV export."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import StreamingResponse

from thymos.runtime import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, AuditFilters

from ._caller import Caller, current_caller
from ._deps import runtime_of
from ._models import ERROR_RESPONSES
from ._routes_runs import RUN_ID_PATTERN

router = APIRouter(tags=["audit"], responses=ERROR_RESPONSES)
CallerDep = Annotated[Caller, Depends(current_caller)]
TIME_CHARS_MAX = 64
KINDS_CHARS_MAX = 400


class AuditFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


def _filters(
    run_id: Annotated[
        str | None,
        Query(max_length=200, json_schema_extra={"pattern": RUN_ID_PATTERN}),
    ] = None,
    kind: Annotated[
        str | None,
        Query(
            max_length=KINDS_CHARS_MAX,
            description="An entry kind, or several separated by commas",
        ),
    ] = None,
    since: Annotated[
        str | None,
        Query(
            alias="from",
            max_length=TIME_CHARS_MAX,
            description="RFC 3339: entries created at or after this time",
        ),
    ] = None,
    until: Annotated[
        str | None,
        Query(
            alias="to",
            max_length=TIME_CHARS_MAX,
            description="RFC 3339: entries created before this time",
        ),
    ] = None,
) -> AuditFilters:
    return AuditFilters(run_id=run_id, kind=kind, since=since, until=until)


FiltersDep = Annotated[AuditFilters, Depends(_filters)]


@router.get(
    "/audit/entries",
    summary="Entries of the caller's tenant across runs, oldest first (JSON pages or CSV)",
    description=(
        "Ordered by creation time, then run and seq. JSON: `{entries, next_cursor}`. "
        "`format=csv`: a header row and one row per entry (the payload as JSON text), streamed, "
        "as an attachment: every entry the filters cover from the cursor on, or `limit` of them."
    ),
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
async def audit_entries(
    request: Request,
    caller: CallerDep,
    filters: FiltersDep,
    limit: Annotated[int | None, Query(ge=1, le=PAGE_LIMIT_MAX)] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    format: AuditFormat = AuditFormat.JSON,
) -> Any:
    audit = runtime_of(request).audit
    if format is AuditFormat.CSV:
        audit.check(caller.tenant, filters, cursor)
        rows = audit.csv(caller.tenant, filters, cursor=cursor, limit=limit)
        return StreamingResponse(
            rows,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit-entries.csv"'},
        )
    return await audit.page(
        caller.tenant, filters, cursor=cursor, limit=limit or PAGE_LIMIT_DEFAULT
    )


@router.get(
    "/audit/entries/count",
    summary="How many entries `/audit/entries` pages through with the same filters",
)
async def audit_count(request: Request, caller: CallerDep, filters: FiltersDep) -> dict[str, int]:
    return {"count": await runtime_of(request).audit.count(caller.tenant, filters)}
