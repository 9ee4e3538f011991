"""Helpers shared by integration tests that drive runs through the Runtime."""

from __future__ import annotations

from typing import Any

from thymos.core import Effect, Entry, Risk, StoredRow, ToolSpec, parse_envelope
from thymos.runtime import Runtime
from thymos.storage import LedgerStore

RUN_FINISH_TIMEOUT_S = 30.0


async def finish(runtime: Runtime, run_id: str) -> dict[str, Any]:
    """Wait for an active run's actor to end, then return its stored run view."""
    active = runtime.active(run_id)
    if active is not None and active.task is not None:
        await active.task
    view = await runtime.get_run(run_id, None)
    assert view["summary"]["terminated_by"] is not None, view
    return view


async def all_rows(store: LedgerStore, run_id: str, page: int = 100) -> list[StoredRow]:
    """Every stored row of a run, read page by page."""
    rows: list[StoredRow] = []
    after = -1
    while batch := await store.read_rows(run_id, after_seq=after, limit=page):
        rows.extend(batch)
        after = batch[-1].seq
    return rows


async def all_entries(store: LedgerStore, run_id: str) -> list[Entry]:
    return [parse_envelope(r.raw, run_id=run_id, seq=r.seq) for r in await all_rows(store, run_id)]


def tool_spec(name: str, effect: Effect = Effect.READ) -> ToolSpec:
    """The contract of a tool a test defines (no arguments, low risk)."""
    return ToolSpec(
        name=name,
        description=name,
        input_schema={"type": "object", "additionalProperties": False},
        effect=effect,
        risk=Risk.LOW,
        idempotent=False,
        compensable=False,
    )
