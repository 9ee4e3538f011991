"""Audit reads on every backend: a tenant's entries across runs in `(created_at, run_id, seq)`
order, filtered by run, kinds and a half-open time window, paged from a position, and counted
alike; entries carry their run's tenant from the moment they are stored."""

from __future__ import annotations

from dataclasses import replace

import pytest

from thymos.core import Entry, EntryKind, RunSummary, seal
from thymos.storage import AuditQuery, AuditRow, RunRecord, Storage

from ._chains import fresh_run_id

KINDS = (EntryKind.TURN, EntryKind.COMMIT, EntryKind.INTENT)


def _time(second: int) -> str:
    return f"2026-03-01T10:00:{second:02d}.000000Z"


async def _run(storage: Storage, tenant: str, seconds: list[int]) -> list[Entry]:
    """A run whose entries were made at these seconds (the first is its start)."""
    run_id = fresh_run_id()
    entries: list[Entry] = []
    parent = None
    for seq, second in enumerate(seconds):
        kind = EntryKind.RUN_STARTED if seq == 0 else KINDS[seq % len(KINDS)]
        entry = seal(
            run_id=run_id, seq=seq, parent=parent, kind=kind, time=_time(second), body={"n": seq}
        )
        entries.append(entry)
        parent = entry.id
    record = RunRecord(
        run_id, tenant, "running", _time(seconds[0]), _time(seconds[0]), {}, RunSummary().as_dict()
    )
    await storage.ledger.create_run(record, entries[0])
    await storage.ledger.append(run_id, entries[1:], None)
    return entries


def _key(entry: Entry) -> tuple[str, str, int]:
    return entry.time, entry.run_id, entry.seq


async def _all_pages(storage: Storage, query: AuditQuery, limit: int) -> list[AuditRow]:
    rows: list[AuditRow] = []
    while True:
        page = await storage.ledger.audit_entries(query, limit=limit)
        rows.extend(page)
        if len(page) < limit:
            return rows
        last = page[-1]
        query = replace(query, after=(last.created_at, last.run_id, last.seq))


@pytest.mark.anyio
async def test_audit_lists_and_counts_a_tenants_entries_in_time_order(storage: Storage) -> None:
    one = await _run(storage, "acme", [0, 2, 4, 6, 8, 8, 9])
    two = await _run(storage, "acme", [1, 2, 3, 8, 8, 10])
    other = await _run(storage, "globex", [0, 5, 7])
    acme = sorted(one + two, key=_key)
    cases: list[tuple[AuditQuery, list[Entry]]] = [
        (AuditQuery("acme"), acme),
        (AuditQuery("globex"), sorted(other, key=_key)),
        (AuditQuery("acme", run_id=two[0].run_id), two),
        (AuditQuery("acme", run_id=other[0].run_id), []),
        (AuditQuery("acme", kinds=("commit",)), [e for e in acme if e.kind == "commit"]),
        (
            AuditQuery("acme", kinds=("run_started", "intent")),
            [e for e in acme if e.kind in ("run_started", "intent")],
        ),
        (AuditQuery("acme", since=_time(8)), [e for e in acme if e.time >= _time(8)]),
        (AuditQuery("acme", until=_time(8)), [e for e in acme if e.time < _time(8)]),
        (AuditQuery("acme", since=_time(2), until=_time(2)), []),
        (
            AuditQuery("acme", run_id=one[0].run_id, kinds=("turn",), since=_time(3)),
            [e for e in one if e.kind == "turn" and e.time >= _time(3)],
        ),
        (AuditQuery(None), sorted(one + two + other, key=_key)),
    ]
    for query, expected in cases:
        for limit in (1, 2, 100):
            rows = await _all_pages(storage, query, limit)
            assert [(r.run_id, r.seq) for r in rows] == [(e.run_id, e.seq) for e in expected]
            assert [r.raw for r in rows] == [e.raw for e in expected]
            assert [(r.id, r.kind, r.created_at) for r in rows] == [
                (e.id, e.kind, e.time) for e in expected
            ]
        assert await storage.ledger.audit_count(query) == len(expected), query
