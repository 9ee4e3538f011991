"""The storage conformance suite, run against SqliteLedgerStore.

Every backend must pass these: atomic batches, duplicate-seq rejection, concurrent appenders
grouped into shared transactions without one failure spoiling the group, read-after-write,
paging, checkpoints, run listings, idempotency rows, durability across close and reopen, and a
race test proving that readers never see a gap in a run's seqs.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from thymos.core import (
    ChainVerifier,
    Entry,
    EntryKind,
    ErrorCode,
    RunSummary,
    StoredRow,
    ThymosError,
    seal,
    uuid7,
)
from thymos.storage import (
    Checkpoint,
    RunRecord,
    RunUpdate,
    SeqConflict,
    SqliteLedgerStore,
    StorageError,
)
from thymos.storage._migrations import SQLITE_MIGRATIONS

TIME = "2026-01-01T00:00:00.000000Z"
BASE_MS = 1_767_225_600_000


def run_id_at(ms_offset: int, salt: int = 0) -> str:
    """A run id that sorts by `ms_offset` (UUID v7 puts the time first)."""
    return uuid7(BASE_MS + ms_offset, salt.to_bytes(10, "big"))


class Chain:
    """Seals consecutive entries of one run, as its single writer would."""

    def __init__(self, run_id: str, tenant: str = "default") -> None:
        self.run_id = run_id
        self.tenant = tenant
        self.entries: list[Entry] = []

    def next(self, count: int = 1, kind: EntryKind = EntryKind.TURN) -> list[Entry]:
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
                body={"n": seq},
            )
            sealed.append(entry)
            seq, parent = seq + 1, entry.id
        return sealed

    def accept(self, entries: list[Entry]) -> None:
        self.entries.extend(entries)

    def record(self, status: str = "running") -> RunRecord:
        return RunRecord(
            self.run_id, self.tenant, status, TIME, TIME, {"task": "t"}, RunSummary().as_dict()
        )

    def update(self, status: str = "running") -> RunUpdate:
        return RunUpdate(status, TIME, {"head_seq": len(self.entries) - 1})


async def create(store: SqliteLedgerStore, chain: Chain, **kwargs: Any) -> None:
    first = chain.next()
    await store.create_run(chain.record(**kwargs), first[0])
    chain.accept(first)


async def append(
    store: SqliteLedgerStore, chain: Chain, count: int, checkpoint: Checkpoint | None = None
) -> list[Entry]:
    entries = chain.next(count)
    await store.append(chain.run_id, entries, RunUpdate("running", TIME, {"n": count}), checkpoint)
    chain.accept(entries)
    return entries


async def rows_of(store: SqliteLedgerStore, run_id: str) -> list[StoredRow]:
    return await store.read_rows(run_id, after_seq=-1, limit=100_000)


def expected_rows(chain: Chain) -> list[StoredRow]:
    return [StoredRow(e.seq, e.id, e.raw) for e in chain.entries]


@pytest.mark.anyio
async def test_read_after_write_returns_the_sealed_bytes_verbatim(store: SqliteLedgerStore) -> None:
    """An acknowledged create and append are visible to the next read, with the stored id and the
    exact envelope bytes that were sealed, and the run row carries the latest update."""
    chain = Chain(run_id_at(0))
    await create(store, chain)
    await append(store, chain, 3)
    assert await rows_of(store, chain.run_id) == expected_rows(chain)
    record = await store.get_run(chain.run_id)
    assert record is not None
    assert record.summary == {"n": 3}
    assert record.spec == {"task": "t"}
    assert await store.get_run(run_id_at(99)) is None
    assert await store.ping()


@pytest.mark.anyio
async def test_append_rejects_duplicate_seq_with_seq_conflict(store: SqliteLedgerStore) -> None:
    """A second append at a (run, seq) that is taken raises SeqConflict (code seq_conflict) and
    leaves the first writer's entry in place: two writers can never fork a chain."""
    chain = Chain(run_id_at(0))
    await create(store, chain)
    await append(store, chain, 1)
    forked = [
        seal(
            run_id=chain.run_id,
            seq=1,
            parent=chain.entries[0].id,
            kind=EntryKind.TURN,
            time=TIME,
            body={"fork": True},
        )
    ]
    with pytest.raises(SeqConflict) as caught:
        await store.append(chain.run_id, forked, RunUpdate("failed", TIME, {"fork": True}))
    assert caught.value.code is ErrorCode.SEQ_CONFLICT
    assert caught.value.details == {"seq": 1}
    assert await rows_of(store, chain.run_id) == expected_rows(chain)
    record = await store.get_run(chain.run_id)
    assert record is not None
    assert record.status == "running"


@pytest.mark.anyio
@pytest.mark.parametrize("duplicate", ["inside_batch", "with_stored"])
async def test_append_with_a_duplicate_seq_inserts_nothing(
    store: SqliteLedgerStore, duplicate: str
) -> None:
    """A batch holding a seq that is duplicated (inside the batch, or against a stored entry) is
    refused whole: none of its entries, its run update or its checkpoint is written."""
    chain = Chain(run_id_at(0))
    await create(store, chain)
    await append(store, chain, 2)
    batch = chain.next(3)
    # Either the batch repeats its own last seq, or it ends with a seq already stored.
    batch = [*batch, batch[-1] if duplicate == "inside_batch" else chain.entries[1]]
    checkpoint = Checkpoint(chain.run_id, batch[-1].seq, b'{"lattice":"","resources":[]}')
    with pytest.raises(SeqConflict):
        await store.append(chain.run_id, batch, RunUpdate("completed", TIME, {}), checkpoint)
    assert await rows_of(store, chain.run_id) == expected_rows(chain)
    record = await store.get_run(chain.run_id)
    assert record is not None
    assert (record.status, record.summary) == ("running", {"n": 2})
    assert await store.latest_checkpoint(chain.run_id, at_or_before=100) is None
    # The refused slots are still free for the rightful writer.
    await append(store, chain, 3)
    assert await rows_of(store, chain.run_id) == expected_rows(chain)


@pytest.mark.anyio
@pytest.mark.parametrize("shape", ["gap_after_head", "gap_inside_batch", "reordered_batch"])
async def test_append_that_would_leave_a_gap_is_refused(
    store: SqliteLedgerStore, shape: str
) -> None:
    """A batch must continue the stored head with consecutive seqs: one that starts past the head,
    skips a seq inside itself or is out of order is refused whole with SeqConflict."""
    chain = Chain(run_id_at(0))
    await create(store, chain)
    await append(store, chain, 2)
    batch = chain.next(4)
    if shape == "gap_after_head":
        batch = batch[1:]
    elif shape == "gap_inside_batch":
        batch = [batch[0], batch[1], batch[3]]
    else:
        batch = [batch[0], batch[2], batch[1], batch[3]]
    with pytest.raises(SeqConflict):
        await store.append(chain.run_id, batch, RunUpdate("failed", TIME, {}))
    assert await rows_of(store, chain.run_id) == expected_rows(chain)


@pytest.mark.anyio
async def test_pipelined_appends_of_one_run_apply_in_submission_order(
    store: SqliteLedgerStore,
) -> None:
    """A run's writer may submit several appends before awaiting any: they are applied in the
    order submitted, so the chain is intact when all of them are acknowledged."""
    chain = Chain(run_id_at(0))
    await create(store, chain)
    pending = []
    for size in (1, 3, 2, 5, 1):
        batch = chain.next(size)
        pending.append(store.append(chain.run_id, batch, RunUpdate("running", TIME, {})))
        chain.accept(batch)
    await asyncio.gather(*pending)
    assert await rows_of(store, chain.run_id) == expected_rows(chain)


@pytest.mark.anyio
async def test_create_run_is_atomic_with_its_first_entry_and_idempotency_row(
    store: SqliteLedgerStore,
) -> None:
    """A run, its seq-0 entry and its idempotency row land together; a create that reuses an
    idempotency key is refused whole (no run row, no entry)."""
    first = Chain(run_id_at(0), tenant="acme")
    entry = first.next()
    await store.create_run(first.record(), entry[0], ("key-1", "hash-1"))
    hit = await store.find_idempotency("acme", "key-1")
    assert hit is not None
    assert (hit.run_id, hit.body_hash) == (first.run_id, "hash-1")
    assert await store.find_idempotency("other-tenant", "key-1") is None
    assert await store.find_idempotency("acme", "key-2") is None

    second = Chain(run_id_at(1), tenant="acme")
    with pytest.raises(ThymosError) as refused:
        await store.create_run(second.record(), second.next()[0], ("key-1", "hash-2"))
    assert refused.value.code is ErrorCode.IDEMPOTENCY_CONFLICT
    assert await store.get_run(second.run_id) is None
    assert await rows_of(store, second.run_id) == []
    # The same key in another tenant is a different key.
    third = Chain(run_id_at(2), tenant="other-tenant")
    await store.create_run(third.record(), third.next()[0], ("key-1", "hash-3"))
    hit = await store.find_idempotency("other-tenant", "key-1")
    assert hit is not None
    assert hit.run_id == third.run_id


@pytest.mark.anyio
async def test_concurrent_appenders_on_different_runs_all_land_in_shared_transactions(
    store: SqliteLedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many runs appending at once all land, each chain intact and in order, and the writer
    groups submissions from different runs into shared transactions."""
    group_sizes: list[int] = []
    run_group = store._run_group

    def counting(conn: sqlite3.Connection, group: list[Any]) -> None:
        group_sizes.append(len(group))
        run_group(conn, group)

    monkeypatch.setattr(store, "_run_group", counting)
    chains = [Chain(run_id_at(i)) for i in range(40)]
    await asyncio.gather(*(create(store, chain) for chain in chains))

    async def writer(chain: Chain, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(15):
            await append(store, chain, rng.randint(1, 3))

    await asyncio.gather(*(writer(chain, i) for i, chain in enumerate(chains)))
    for chain in chains:
        rows = await rows_of(store, chain.run_id)
        assert rows == expected_rows(chain)
        verifier = ChainVerifier(chain.run_id)
        for row in rows:
            verifier.check(row)
        assert verifier.verified
    assert max(group_sizes) > 1, "concurrent appends should share transactions"
    assert sum(group_sizes) == 40 + 40 * 15, "every submission ran exactly once"
    assert len(group_sizes) < sum(group_sizes)


@pytest.mark.anyio
async def test_a_failing_append_does_not_fail_the_others_in_its_group(
    store: SqliteLedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one submission in a grouped transaction conflicts, only its caller gets SeqConflict;
    every other submission of the same transaction is committed."""
    chains = [Chain(run_id_at(i)) for i in range(8)]
    for chain in chains:
        await create(store, chain)
        await append(store, chain, 1)
    group_sizes: list[int] = []
    run_group = store._run_group

    def counting(conn: sqlite3.Connection, group: list[Any]) -> None:
        group_sizes.append(len(group))
        run_group(conn, group)

    monkeypatch.setattr(store, "_run_group", counting)

    # Hold the writer thread inside a job so that every append below queues up behind it and
    # is taken as one group.
    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    holder = asyncio.ensure_future(store._write(hold))
    await asyncio.to_thread(started.wait, 10)

    async def good(chain: Chain) -> None:
        await append(store, chain, 2)

    bad_chain = chains[3]
    stale = [bad_chain.entries[1]]  # seq 1 is taken: this submission conflicts
    bad = asyncio.ensure_future(
        store.append(bad_chain.run_id, stale, RunUpdate("failed", TIME, {"bad": True}))
    )
    goods = [asyncio.ensure_future(good(c)) for c in chains if c is not bad_chain]
    while store._queue.qsize() < len(chains):  # noqa: ASYNC110 - the queue has no async signal
        await asyncio.sleep(0.001)
    release.set()
    await holder
    results = await asyncio.gather(bad, *goods, return_exceptions=True)
    assert isinstance(results[0], SeqConflict)
    assert all(result is None for result in results[1:]), results
    assert group_sizes and group_sizes[-1] == len(chains)
    for chain in chains:
        assert await rows_of(store, chain.run_id) == expected_rows(chain)
    record = await store.get_run(bad_chain.run_id)
    assert record is not None
    assert record.status == "running"


@pytest.mark.anyio
async def test_read_rows_pages_in_seq_order_after_a_seq(store: SqliteLedgerStore) -> None:
    """read_rows returns rows with seq > after_seq in order, at most `limit` of them, so paging
    by the last seq seen visits every row once; read_rows_range bounds both ends."""
    chain = Chain(run_id_at(0))
    await create(store, chain)
    await append(store, chain, 24)
    pages: list[list[StoredRow]] = []
    after = -1
    while page := await store.read_rows(chain.run_id, after_seq=after, limit=7):
        pages.append(page)
        after = page[-1].seq
    assert [len(p) for p in pages] == [7, 7, 7, 4]
    assert [row for page in pages for row in page] == expected_rows(chain)
    tail = await store.read_rows(chain.run_id, after_seq=10, limit=100)
    assert [row.seq for row in tail] == list(range(11, 25))
    assert await store.read_rows(chain.run_id, after_seq=24, limit=10) == []
    middle = await store.read_rows_range(chain.run_id, after_seq=4, upto_seq=9)
    assert [row.seq for row in middle] == [5, 6, 7, 8, 9]
    assert await store.read_rows_range(chain.run_id, after_seq=9, upto_seq=9) == []
    other = Chain(run_id_at(1))
    await create(store, other)
    assert [r.seq for r in await rows_of(store, other.run_id)] == [0]


@pytest.mark.anyio
async def test_latest_checkpoint_is_the_newest_at_or_before_a_seq(store: SqliteLedgerStore) -> None:
    """Checkpoints written with appends are found by latest_checkpoint: the one with the highest
    seq not after the asked seq, or none, and only for their own run."""
    chain = Chain(run_id_at(0))
    other = Chain(run_id_at(1))
    await create(store, chain)
    await create(store, other)
    await append(store, chain, 5, Checkpoint(chain.run_id, 5, b"five"))
    await append(store, chain, 7, Checkpoint(chain.run_id, 12, b"twelve"))
    await append(store, chain, 3)
    assert await store.latest_checkpoint(chain.run_id, at_or_before=4) is None
    found = {
        seq: await store.latest_checkpoint(chain.run_id, at_or_before=seq)
        for seq in (5, 11, 12, 99)
    }
    assert found[5] == Checkpoint(chain.run_id, 5, b"five")
    assert found[11] == Checkpoint(chain.run_id, 5, b"five")
    assert found[12] == Checkpoint(chain.run_id, 12, b"twelve")
    assert found[99] == Checkpoint(chain.run_id, 12, b"twelve")
    assert await store.latest_checkpoint(other.run_id, at_or_before=99) is None


@pytest.mark.anyio
async def test_list_runs_is_newest_first_with_filters_and_before(store: SqliteLedgerStore) -> None:
    """list_runs orders by run id descending (creation time), filters by tenant and status,
    pages with `before` and honours `limit`; runs_with_status finds runs by status."""
    chains = [Chain(run_id_at(i, salt=i), tenant="acme" if i % 2 else "globex") for i in range(10)]
    for i, chain in enumerate(chains):
        await create(store, chain, status="completed" if i % 3 == 0 else "running")
    ids = [c.run_id for c in chains]
    newest_first = list(reversed(ids))
    listed = await store.list_runs(tenant=None, status=None, before=None, limit=100)
    assert [r.run_id for r in listed] == newest_first
    acme = await store.list_runs(tenant="acme", status=None, before=None, limit=100)
    assert [r.run_id for r in acme] == [c.run_id for c in reversed(chains) if c.tenant == "acme"]
    done = await store.list_runs(tenant=None, status="completed", before=None, limit=100)
    assert [r.run_id for r in done] == [ids[9], ids[6], ids[3], ids[0]]
    page = await store.list_runs(tenant=None, status=None, before=ids[5], limit=3)
    assert [r.run_id for r in page] == [ids[4], ids[3], ids[2]]
    both = await store.list_runs(tenant="globex", status="running", before=ids[8], limit=10)
    assert [r.run_id for r in both] == [ids[4], ids[2]]
    running = await store.runs_with_status(["running"])
    assert sorted(r.run_id for r in running) == sorted(
        c.run_id for i, c in enumerate(chains) if i % 3 != 0
    )
    assert await store.runs_with_status(["cancelled"]) == []


@pytest.mark.anyio
async def test_data_survives_close_and_reopen(tmp_path: Path, anyio_backend: str) -> None:
    """Everything acknowledged before close is there after reopening the same file: runs,
    entries (byte for byte), checkpoints and idempotency rows; reopening does not re-migrate."""
    path = tmp_path / "durable.sqlite3"
    first = SqliteLedgerStore(path)
    await first.open()
    chain = Chain(run_id_at(0))
    entry = chain.next()
    await first.create_run(chain.record(), entry[0], ("key", "hash"))
    chain.accept(entry)
    await append(first, chain, 4, Checkpoint(chain.run_id, 4, b"snap"))
    await first.close()
    with pytest.raises(StorageError):
        await first.get_run(chain.run_id)

    second = SqliteLedgerStore(path)
    await second.open()
    try:
        assert await rows_of(second, chain.run_id) == expected_rows(chain)
        record = await second.get_run(chain.run_id)
        assert record is not None
        assert record.summary == {"n": 4}
        assert await second.latest_checkpoint(chain.run_id, at_or_before=10) == Checkpoint(
            chain.run_id, 4, b"snap"
        )
        hit = await second.find_idempotency("default", "key")
        assert hit is not None
        assert hit.run_id == chain.run_id
        await append(second, chain, 2)
        assert await rows_of(second, chain.run_id) == expected_rows(chain)
    finally:
        await second.close()
    with sqlite3.connect(path) as conn:
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
    conn.close()
    assert versions == [(v,) for v in range(1, len(SQLITE_MIGRATIONS) + 1)]


@pytest.mark.anyio
async def test_a_closed_store_refuses_work_with_storage_error(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Reads and writes on a closed (or never opened) store raise StorageError, and ping says
    the ledger is not ready."""
    store = SqliteLedgerStore(tmp_path / "closed.sqlite3")
    chain = Chain(run_id_at(0))
    with pytest.raises(StorageError):
        await store.create_run(chain.record(), chain.next()[0])
    with pytest.raises(StorageError):
        await store.read_rows(chain.run_id, after_seq=-1, limit=1)
    assert not await store.ping()


@pytest.mark.anyio
async def test_readers_never_see_a_gap_while_a_run_is_appended(store: SqliteLedgerStore) -> None:
    """While one task appends a run's entries in batches of varying size (and other runs append
    beside it), readers polling read_rows from the last seq they saw always get the next seq
    first and consecutive seqs after it, and the rows they assemble verify as a chain."""
    target = Chain(run_id_at(0))
    noise = [Chain(run_id_at(i + 1)) for i in range(3)]
    for chain in (target, *noise):
        await create(store, chain)
    total = 300
    done = asyncio.Event()

    async def writer() -> None:
        rng = random.Random(11)
        while len(target.entries) < total:
            await append(store, target, min(rng.randint(1, 4), total - len(target.entries)))
        done.set()

    async def background(chain: Chain) -> None:
        while not done.is_set():
            await append(store, chain, 1)

    async def reader(page: int) -> int:
        verifier = ChainVerifier(target.run_id)
        last = -1
        polls = 0
        while last < total - 1:
            rows = await store.read_rows(target.run_id, after_seq=last, limit=page)
            polls += 1
            seqs = [row.seq for row in rows]
            assert seqs == list(range(last + 1, last + 1 + len(rows))), (last, seqs)
            for row in rows:
                verifier.check(row)
            if rows:
                last = rows[-1].seq
            else:
                await asyncio.sleep(0)
        assert verifier.verified, verifier.failures
        return polls

    readers = [asyncio.ensure_future(reader(page)) for page in (1, 3, 50, 1000)]
    await asyncio.gather(writer(), *(background(c) for c in noise), *readers)
    assert all(task.result() >= 1 for task in readers)
