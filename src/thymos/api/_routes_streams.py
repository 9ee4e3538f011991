"""The three Server-Sent Event streams of a run.

Every event carries an `id:`; a comment keep-alive goes out when nothing else has for the
keep-alive interval; `Last-Event-ID` resumes; each stream ends once its run is terminal and
everything has been sent, or when the server shuts down.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response, StreamingResponse

from thymos.core import Entry, ErrorCode, ThymosError
from thymos.runtime import Damaged, KeepAlive, Runtime

from ._caller import Caller, current_caller
from ._deps import runtime_of
from ._models import ERROR_RESPONSES
from ._routes_runs import SEQ_MAX

router = APIRouter(tags=["streams"], responses=ERROR_RESPONSES)
CallerDep = Annotated[Caller, Depends(current_caller)]
KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event_id: str | int, event: str, data: Any) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        str(event_id).encode(),
        event.encode(),
        orjson.dumps(data),
    )


FRAMES_KEPT = 4096
"""Encoded ledger events kept: every subscriber of a live run sends the same bytes for each
entry, encoded once (an entry's id is the hash of its bytes, so it names one frame)."""
_frames: OrderedDict[str, bytes] = OrderedDict()


def entry_frame(entry: Entry) -> bytes:
    """The SSE event of a ledger entry, encoded once for all its subscribers."""
    frame = _frames.get(entry.id)
    if frame is None:
        frame = sse(entry.seq, entry.kind, entry.as_public())
        _frames[entry.id] = frame
        if len(_frames) > FRAMES_KEPT:
            _frames.popitem(last=False)
    return frame


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
    async for item in runtime.streams.entries(run_id, last, keepalive):
        if isinstance(item, KeepAlive):
            yield KEEPALIVE
        elif isinstance(item, Damaged):
            error = {"code": "ledger_corrupt", "message": item.message, "seq": item.seq}
            yield sse(item.seq, "error", error)
        else:
            yield entry_frame(item)


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
    async for item in runtime.streams.snapshots(run_id, tenant, last_id, keepalive):
        if isinstance(item, KeepAlive):
            yield KEEPALIVE
        else:
            yield sse(item.ident, "snapshot", item.session)


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
    async for item in runtime.streams.cognition(run_id, last, keepalive):
        if isinstance(item, KeepAlive):
            yield KEEPALIVE
        else:
            ident, event = item
            yield sse(ident, event.type, dict(event.data))
