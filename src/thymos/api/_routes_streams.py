"""The three Server-Sent Event streams of a run.

Every event carries an `id:`; a comment keep-alive goes out when nothing else has for the
keep-alive interval; `Last-Event-ID` resumes; each stream ends once its run is terminal and
everything has been sent, or when the server shuts down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response, StreamingResponse

from thymos.core import CorruptEntry, ErrorCode, ThymosError, parse_envelope
from thymos.runtime import FellBehind, Runtime

from ._caller import Caller, current_caller
from ._deps import runtime_of
from ._models import ERROR_RESPONSES
from ._routes_runs import SEQ_MAX

router = APIRouter(tags=["streams"], responses=ERROR_RESPONSES)
CallerDep = Annotated[Caller, Depends(current_caller)]
PAGE_ROWS = 500
KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event_id: str | int, event: str, data: Any) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        str(event_id).encode(),
        event.encode(),
        orjson.dumps(data),
    )


def _stream(body: AsyncIterator[bytes], runtime: Runtime, run_id: str) -> StreamingResponse:
    subscription = runtime.subscribe(run_id)

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        finally:
            runtime.unsubscribe(subscription)

    return StreamingResponse(guarded(), media_type="text/event-stream", headers=SSE_HEADERS)


SEQ_ID_PATTERN = "^(-1|[0-9]{1,19})$"
"""A `Last-Event-ID` of the entry and cognition streams: a seq (or -1 for before the first)."""
LastSeqId = Annotated[
    str | None, Header(max_length=100, json_schema_extra={"pattern": SEQ_ID_PATTERN})
]


def _int_or(value: str | None, default: int) -> int:
    """The seq a client last saw; a seq past any that can exist means nothing is missed."""
    if value is None:
        return default
    text = value.strip()
    if text != "-1" and not (text.isdigit() and len(text) <= 19):
        raise ThymosError(
            ErrorCode.INVALID_QUERY,
            f"Last-Event-ID {value[:40]!r} is not a sequence number",
            {"pattern": SEQ_ID_PATTERN},
        )
    return min(int(text), SEQ_MAX)


@router.get(
    "/runs/{run_id}/events", summary="SSE stream of ledger entries", response_class=Response
)
async def events(
    run_id: str,
    request: Request,
    caller: CallerDep,
    after_seq: Annotated[int | None, Query(ge=-1, le=SEQ_MAX)] = None,
    last_event_id: LastSeqId = None,
) -> Response:
    runtime = runtime_of(request)
    await runtime.visible_record(run_id, caller.tenant)
    start = _int_or(last_event_id, after_seq if after_seq is not None else -1)
    keepalive = request.app.state.settings.keepalive_s
    return _stream(_entries(runtime, run_id, start, keepalive), runtime, run_id)


async def _entries(
    runtime: Runtime, run_id: str, last: int, keepalive: float
) -> AsyncIterator[bytes]:
    while True:
        active = runtime.active(run_id)
        # Everything durable first (a reconnect or a late subscriber catches up from storage).
        while True:
            rows = await runtime.store.read_rows(run_id, after_seq=last, limit=PAGE_ROWS)
            for row in rows:
                try:
                    entry = parse_envelope(row.raw, run_id=run_id, seq=row.seq)
                except CorruptEntry as exc:
                    yield sse(
                        row.seq,
                        "error",
                        {"code": "ledger_corrupt", "message": exc.message, "seq": row.seq},
                    )
                    return
                yield sse(entry.seq, entry.kind, entry.as_public())
                last = entry.seq
            if len(rows) < PAGE_ROWS:
                break
        if active is None or runtime.closed.is_set():
            return
        # Then live entries from the run's feed, with no gap and no duplicate.
        try:
            async for batch in active.entries.follow(last, timeout_s=keepalive, strict=True):
                if not batch:
                    if runtime.closed.is_set():
                        return
                    yield KEEPALIVE
                    continue
                for seq, entry in batch:
                    yield sse(seq, entry.kind, entry.as_public())
                    last = seq
        except FellBehind:
            continue


@router.get(
    "/runs/{run_id}/execution/stream",
    summary="SSE stream of execution-session snapshots",
    response_class=Response,
)
async def execution_stream(
    run_id: str,
    request: Request,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header(max_length=100)] = None,
) -> Response:
    runtime = runtime_of(request)
    await runtime.visible_record(run_id, caller.tenant)
    keepalive = request.app.state.settings.keepalive_s
    return _stream(
        _snapshots(runtime, run_id, caller.tenant, last_event_id, keepalive), runtime, run_id
    )


async def _snapshots(
    runtime: Runtime, run_id: str, tenant: str, last_id: str | None, keepalive: float
) -> AsyncIterator[bytes]:
    while True:
        active = runtime.active(run_id)
        if active is None:
            snapshot = await runtime.execution(run_id, tenant)
            ident = f"{snapshot['head_seq']}.final"
            if ident != last_id:
                yield sse(ident, "snapshot", snapshot)
            return
        cell = active.snapshot
        version = cell.version
        snapshot = cell.value
        ident = f"{snapshot['head_seq']}.{version}"
        if ident != last_id:
            yield sse(ident, "snapshot", snapshot)
            last_id = ident
            if snapshot["status"] in ("completed", "failed", "cancelled"):
                return
        if cell.closed:
            if runtime.active(run_id) is active:
                return  # closed while still active: the server is stopping
            continue  # the run just ended: send its final snapshot
        if not await cell.wait_change(version, keepalive):
            if runtime.closed.is_set():
                return
            yield KEEPALIVE


@router.get(
    "/runs/{run_id}/stream", summary="SSE stream of raw cognition events", response_class=Response
)
async def cognition_stream(
    run_id: str,
    request: Request,
    caller: CallerDep,
    last_event_id: LastSeqId = None,
) -> Response:
    runtime = runtime_of(request)
    await runtime.visible_record(run_id, caller.tenant)
    start = _int_or(last_event_id, -1)
    keepalive = request.app.state.settings.keepalive_s
    return _stream(_cognition(runtime, run_id, start, keepalive), runtime, run_id)


async def _cognition(
    runtime: Runtime, run_id: str, last: int, keepalive: float
) -> AsyncIterator[bytes]:
    active = runtime.active(run_id)
    if active is None:
        return  # events of a finished run are not kept
    async for batch in active.cognition.follow(last, timeout_s=keepalive, strict=False):
        if not batch:
            if runtime.closed.is_set():
                return
            yield KEEPALIVE
            continue
        for ident, event in batch:
            yield sse(ident, event.type, dict(event.data))
