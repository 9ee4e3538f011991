"""Audit figures on a ledger of at least a million entries (SQLite).

The ledger is written straight to the store: runs of `RUN_ENTRIES` sealed entries each (kinds
rotating, small bodies, times one millisecond apart), every `OTHER_TENANT_EVERY`th run another
tenant's. Then, for the bench tenant:

- `audit_first_page_ms`, `audit_middle_page_ms`: one page of 100 entries from the start, and
  from a cursor halfway through its ledger (what `GET /audit/entries` reads);
- `audit_count_ms` (every entry), `audit_count_kind_ms` (`kind=commit`),
  `audit_count_window_ms` (`from`/`to` around the middle tenth);
- `audit_csv_s`, `audit_csv_rows_per_s`: the whole tenant's export through the CSV writer
  `GET /audit/entries?format=csv` streams, bytes produced and dropped as a client would read
  them;
- `audit_csv_peak_mib`: the peak of Python's allocations during a second export (tracemalloc),
  which stays one page's worth however long the ledger is.
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

from thymos.core import EntryKind, RunSummary, rfc3339_from_us, seal, uuid7
from thymos.runtime import Audit, AuditFilters
from thymos.storage import AuditQuery, RunRecord, SqliteLedgerStore

RUN_ENTRIES = 2000
APPEND_BATCH = 500
OTHER_TENANT_EVERY = 10
PAGE = 100
START_US = 1_767_225_600_000_000
KINDS = (EntryKind.TURN, EntryKind.INTENT, EntryKind.COMMIT)


async def _fill(store: SqliteLedgerStore, entries: int) -> tuple[int, int]:
    """Write runs until `entries` entries are stored; (entries stored, the bench tenant's)."""
    runs = max(1, -(-entries // RUN_ENTRIES))
    clock = START_US
    mine = 0
    for index in range(runs):
        tenant = "other" if index % OTHER_TENANT_EVERY == OTHER_TENANT_EVERY - 1 else "bench"
        run_id = uuid7(clock // 1000, index.to_bytes(10, "big"))
        batch = []
        parent = None
        for seq in range(RUN_ENTRIES):
            kind = EntryKind.RUN_STARTED if seq == 0 else KINDS[seq % len(KINDS)]
            entry = seal(
                run_id=run_id,
                seq=seq,
                parent=parent,
                kind=kind,
                time=rfc3339_from_us(clock),
                body={"n": seq, "note": "an audited entry", "run": index},
            )
            clock += 1000
            parent = entry.id
            batch.append(entry)
        record = RunRecord(
            run_id, tenant, "completed", batch[0].time, batch[-1].time, {}, RunSummary().as_dict()
        )
        await store.create_run(record, batch[0])
        for start in range(1, RUN_ENTRIES, APPEND_BATCH):
            await store.append(run_id, batch[start : start + APPEND_BATCH], None)
        if tenant == "bench":
            mine += RUN_ENTRIES
    return runs * RUN_ENTRIES, mine


async def _timed_ms(call: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = await call
    return value, round((time.perf_counter() - started) * 1000, 2)


async def _export(audit: Audit) -> tuple[int, int]:
    """Rows and bytes of the bench tenant's CSV export."""
    size = 0
    lines = 0
    async for chunk in audit.csv("bench", AuditFilters(), cursor=None, limit=None):
        size += len(chunk)
        lines += chunk.count(b"\r\n")
    return lines - 1, size


async def audit_figures(data_dir: Path, entries: int) -> dict[str, Any]:
    store = SqliteLedgerStore(data_dir / "audit.sqlite3")
    await store.open()
    try:
        started = time.perf_counter()
        total, mine = await _fill(store, entries)
        fill_s = time.perf_counter() - started
        audit = Audit(store)
        tenant = AuditQuery("bench")
        first, first_ms = await _timed_ms(store.audit_entries(tenant, limit=PAGE))
        assert len(first) == PAGE
        middle_rows = await store.audit_entries(
            replace(tenant, since=rfc3339_from_us(START_US + entries * 500)), limit=1
        )
        middle = middle_rows[0]
        after = (middle.created_at, middle.run_id, middle.seq)
        _, middle_ms = await _timed_ms(
            store.audit_entries(replace(tenant, after=after), limit=PAGE)
        )
        counted, count_ms = await _timed_ms(store.audit_count(tenant))
        assert counted == mine, (counted, mine)
        _, kind_ms = await _timed_ms(store.audit_count(replace(tenant, kinds=("commit",))))
        window = replace(
            tenant,
            since=rfc3339_from_us(START_US + entries * 450),
            until=rfc3339_from_us(START_US + entries * 550),
        )
        _, window_ms = await _timed_ms(store.audit_count(window))
        started = time.perf_counter()
        rows, size = await _export(audit)
        csv_s = time.perf_counter() - started
        assert rows == mine, (rows, mine)
        tracemalloc.start()
        try:
            await _export(audit)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return {
            "audit_ledger_entries": total,
            "audit_tenant_entries": mine,
            "audit_fill_s": round(fill_s, 1),
            "audit_first_page_ms": first_ms,
            "audit_middle_page_ms": middle_ms,
            "audit_count_ms": count_ms,
            "audit_count_kind_ms": kind_ms,
            "audit_count_window_ms": window_ms,
            "audit_csv_s": round(csv_s, 2),
            "audit_csv_rows_per_s": round(rows / csv_s),
            "audit_csv_mib": round(size / 2**20, 1),
            "audit_csv_peak_mib": round(peak / 2**20, 2),
        }
    finally:
        await store.close()
