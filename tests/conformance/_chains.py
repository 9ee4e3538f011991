"""Helpers of the conformance suite: sealed chains of entries as a run's single writer makes
them, and the few calls every test makes with them. Written against the `LedgerStore` contract
only, so any backend's store takes them."""

from __future__ import annotations

import os
from typing import Any

from thymos.core import ChainVerifier, Entry, EntryKind, RunSummary, StoredRow, seal, uuid7
from thymos.storage import Checkpoint, LedgerStore, RunRecord, RunUpdate

TIME = "2026-01-01T00:00:00.000000Z"
BASE_MS = 1_767_225_600_000


def run_id_at(ms_offset: int, salt: int = 0) -> str:
    """A run id that sorts by `ms_offset` (UUID v7 puts the time first)."""
    return uuid7(BASE_MS + ms_offset, salt.to_bytes(10, "big"))


def fresh_run_id() -> str:
    """A run id no other test uses (notices may travel further than one test's data)."""
    return uuid7(BASE_MS, os.urandom(10))


class Chain:
    """Seals consecutive entries of one run, as its single writer would."""

    def __init__(self, run_id: str, tenant: str = "default") -> None:
        self.run_id = run_id
        self.tenant = tenant
        self.entries: list[Entry] = []

    def next(
        self, count: int = 1, kind: EntryKind = EntryKind.TURN, body: dict[str, Any] | None = None
    ) -> list[Entry]:
        """Seal `count` entries after the current head without recording them as written."""
        sealed: list[Entry] = []
        parent = self.entries[-1].id if self.entries else None
        seq = len(self.entries)
        for _ in range(count):
            entry = seal(
                run_id=self.run_id,
                seq=seq,
                parent=parent,
                kind=EntryKind.RUN_STARTED if seq == 0 else kind,
                time=TIME,
                body={"n": seq} if body is None else body,
            )
            sealed.append(entry)
            seq, parent = seq + 1, entry.id
        return sealed

    def accept(self, entries: list[Entry]) -> None:
        self.entries.extend(entries)

    def record(
        self,
        status: str = "running",
        *,
        summary: dict[str, Any] | None = None,
        created_by: str | None = None,
        writ_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> RunRecord:
        return RunRecord(
            self.run_id,
            self.tenant,
            status,
            TIME,
            TIME,
            {"task": "t"},
            RunSummary().as_dict() if summary is None else summary,
            created_by=created_by,
            writ_id=writ_id,
            parent_run_id=parent_run_id,
        )

    def update(self, status: str = "running") -> RunUpdate:
        return RunUpdate(status, TIME, {"head_seq": len(self.entries) - 1})


async def create(store: LedgerStore, chain: Chain, **kwargs: Any) -> None:
    """Create the chain's run with its seq-0 entry (`kwargs` go to `Chain.record`)."""
    first = chain.next()
    await store.create_run(chain.record(**kwargs), first[0])
    chain.accept(first)


async def append(
    store: LedgerStore, chain: Chain, count: int, checkpoint: Checkpoint | None = None
) -> list[Entry]:
    """Append `count` more entries to the chain's run and record them as written."""
    entries = chain.next(count)
    await store.append(chain.run_id, entries, RunUpdate("running", TIME, {"n": count}), checkpoint)
    chain.accept(entries)
    return entries


async def rows_of(store: LedgerStore, run_id: str) -> list[StoredRow]:
    return await store.read_rows(run_id, after_seq=-1, limit=100_000)


def expected_rows(chain: Chain) -> list[StoredRow]:
    return [StoredRow(e.seq, e.id, e.raw) for e in chain.entries]


def verifies(run_id: str, rows: list[StoredRow]) -> bool:
    """True when `rows` are a whole, sound chain of `run_id` (hashes, links and seqs)."""
    verifier = ChainVerifier(run_id)
    for row in rows:
        verifier.check(row)
    return verifier.verified
