"""The ledger's contract on every backend: entries come back as the exact bytes sealed, a batch
lands whole or not at all, `(run, seq)` is taken once and a batch must continue the stored head
(`SeqConflict` otherwise, with nothing written), one writer's pipelined appends apply in the
order submitted, reads page and bound by seq, checkpoints, signed heads and documents are found
as kept, an entry is found by its run and id, everything acknowledged survives close and reopen,
and a closed store refuses work with `StorageError`."""

from __future__ import annotations

import pytest

from thymos.core import EntryKind, ErrorCode, RunSummary, SignedHead, StoredRow, seal
from thymos.storage import Checkpoint, Document, RunUpdate, SeqConflict, Storage, StorageError

from ._chains import TIME, Chain, append, create, expected_rows, rows_of, run_id_at, verifies
from .conftest import Place

WORLD = b'{"lattice":"","resources":[]}'


@pytest.mark.anyio
async def test_read_after_write_returns_the_sealed_bytes_verbatim(storage: Storage) -> None:
    """An acknowledged create and append are visible to the next read, with the stored id and the
    exact envelope bytes that were sealed, and the run row carries the latest update."""
    store = storage.ledger
    chain = Chain(run_id_at(0))
    await create(store, chain)
    await append(store, chain, 3)
    assert await rows_of(store, chain.run_id) == expected_rows(chain)
    assert verifies(chain.run_id, await rows_of(store, chain.run_id))
    record = await store.get_run(chain.run_id)
    assert record is not None
    assert record.summary == {"n": 3}
    assert record.spec == {"task": "t"}
    assert await store.get_run(run_id_at(99)) is None
    assert await rows_of(store, run_id_at(99)) == []
    assert await store.ping()


@pytest.mark.anyio
async def test_append_rejects_a_taken_seq_with_seq_conflict(storage: Storage) -> None:
    """A second append at a (run, seq) that is taken raises SeqConflict (code seq_conflict) and
    leaves the first writer's entry and run row in place: two writers can never fork a chain."""
    store = storage.ledger
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
    assert (record.status, record.summary) == ("running", {"n": 1})


@pytest.mark.anyio
@pytest.mark.parametrize("duplicate", ["inside_batch", "with_stored"])
async def test_append_with_a_duplicate_seq_inserts_nothing(
    storage: Storage, duplicate: str
) -> None:
    """A batch holding a seq that is duplicated (inside the batch, or against a stored entry) is
    refused whole: none of its entries, its run update, its checkpoint or its signed head is
    written, and the slots stay free for the rightful writer."""
    store = storage.ledger
    chain = Chain(run_id_at(0))
    await create(store, chain)
    await append(store, chain, 2)
    batch = chain.next(3)
    # Either the batch repeats its own last seq, or it ends with a seq already stored.
    batch = [*batch, batch[-1] if duplicate == "inside_batch" else chain.entries[1]]
    checkpoint = Checkpoint(chain.run_id, batch[-1].seq, WORLD)
    head = SignedHead(chain.run_id, batch[2].seq, batch[2].id, TIME, "ab" * 64)
    with pytest.raises(SeqConflict):
        await store.append(chain.run_id, batch, RunUpdate("completed", TIME, {}), checkpoint, head)
    assert await rows_of(store, chain.run_id) == expected_rows(chain)
    record = await store.get_run(chain.run_id)
    assert record is not None
    assert (record.status, record.summary) == ("running", {"n": 2})
    assert await store.latest_checkpoint(chain.run_id, at_or_before=100) is None
    assert await store.signed_heads(chain.run_id) == []
    await append(store, chain, 3)
    assert await rows_of(store, chain.run_id) == expected_rows(chain)


@pytest.mark.anyio
@pytest.mark.parametrize("shape", ["gap_after_head", "gap_inside_batch", "reordered_batch"])
async def test_append_that_would_leave_a_gap_is_refused(storage: Storage, shape: str) -> None:
    """A batch must continue the stored head with consecutive seqs: one that starts past the head,
    skips a seq inside itself or is out of order is refused whole with SeqConflict."""
    store = storage.ledger
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
    record = await store.get_run(chain.run_id)
    assert record is not None
    assert record.status == "running"


@pytest.mark.anyio
async def test_pipelined_appends_of_one_run_apply_in_submission_order(storage: Storage) -> None:
    """A run's writer may submit several appends before awaiting any: they are applied in the
    order submitted (whatever order they are awaited in), so the chain is intact when all of
    them are acknowledged."""
    store = storage.ledger
    chain = Chain(run_id_at(0))
    await create(store, chain)
    pending = []
    for size in (1, 3, 2, 5, 1, 4, 1):
        batch = chain.next(size)
        update = RunUpdate("running", TIME, {"head_seq": batch[-1].seq}) if size > 1 else None
        pending.append(store.append(chain.run_id, batch, update))
        chain.accept(batch)
    # Awaited last-submitted first: submission, not awaiting, is what orders them.
    for submitted in reversed(pending):
        await submitted
    assert await rows_of(store, chain.run_id) == expected_rows(chain)
    record = await store.get_run(chain.run_id)
    assert record is not None
    assert record.summary == {"head_seq": 16}  # the last update given (seq 17's batch had none)


@pytest.mark.anyio
async def test_a_failed_pipelined_append_fails_the_later_ones_of_its_run(storage: Storage) -> None:
    """When one of a writer's pipelined appends is refused, every later one of the same run is
    refused too (each continues a head that was never stored), and the earlier ones stay
    committed: a refused append never leaves a gap."""
    store = storage.ledger
    chain = Chain(run_id_at(0))
    await create(store, chain)
    good = chain.next(2)
    first = store.append(chain.run_id, good, None)
    chain.accept(good)
    written = expected_rows(chain)
    broken = chain.next(3)
    second = store.append(chain.run_id, [broken[0], broken[1], broken[1]], chain.update())
    chain.accept(broken)
    later = store.append(chain.run_id, chain.next(2), chain.update())
    await first
    with pytest.raises(SeqConflict):
        await second
    with pytest.raises(SeqConflict):
        await later
    assert await rows_of(store, chain.run_id) == written
    record = await store.get_run(chain.run_id)
    assert record is not None
    assert record.summary == RunSummary().as_dict()


@pytest.mark.anyio
async def test_read_rows_pages_in_seq_order_after_a_seq(storage: Storage) -> None:
    """read_rows returns rows with seq > after_seq in order, at most `limit` of them, so paging
    by the last seq seen visits every row once; read_rows_range bounds both ends; each run reads
    only its own rows."""
    store = storage.ledger
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
    assert middle == expected_rows(chain)[5:10]
    assert await store.read_rows_range(chain.run_id, after_seq=9, upto_seq=9) == []
    everything = await store.read_rows_range(chain.run_id, after_seq=-1, upto_seq=1000)
    assert everything == expected_rows(chain)
    other = Chain(run_id_at(1))
    await create(store, other)
    assert await rows_of(store, other.run_id) == expected_rows(other)


@pytest.mark.anyio
async def test_latest_checkpoint_is_the_newest_at_or_before_a_seq(storage: Storage) -> None:
    """Checkpoints written with appends are found by latest_checkpoint: the one with the highest
    seq not after the asked seq, or none, and only for their own run; a checkpoint written again
    at the same seq replaces the first."""
    store = storage.ledger
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
    await append(store, chain, 1, Checkpoint(chain.run_id, 12, b"twelve again"))
    assert await store.latest_checkpoint(chain.run_id, at_or_before=99) == Checkpoint(
        chain.run_id, 12, b"twelve again"
    )


@pytest.mark.anyio
async def test_a_run_created_with_a_checkpoint_has_it_at_seq_zero(storage: Storage) -> None:
    """The checkpoint given to `create_run` (the world a branch starts from) is the run's
    checkpoint at seq 0."""
    store = storage.ledger
    chain = Chain(run_id_at(0))
    first = chain.next()
    await store.create_run(chain.record(), first[0], None, Checkpoint(chain.run_id, 0, WORLD))
    chain.accept(first)
    await append(store, chain, 3)
    assert await store.latest_checkpoint(chain.run_id, at_or_before=3) == Checkpoint(
        chain.run_id, 0, WORLD
    )


@pytest.mark.anyio
async def test_signed_heads_are_kept_with_their_batch_and_read_by_seq_range(
    storage: Storage,
) -> None:
    """A signed head given with an append is stored with it and read back exactly, in seq order,
    bounded by after_seq and upto_seq, and only for its own run."""
    store = storage.ledger
    chain = Chain(run_id_at(0))
    other = Chain(run_id_at(1))
    await create(store, chain)
    await create(store, other)
    heads: list[SignedHead] = []
    for n in range(4):
        batch = chain.next(3)
        head = SignedHead(chain.run_id, batch[-1].seq, batch[-1].id, TIME, f"{n:02x}" * 64)
        await store.append(chain.run_id, batch, chain.update(), None, head)
        chain.accept(batch)
        heads.append(head)
    await append(store, chain, 2)
    assert [h.seq for h in heads] == [3, 6, 9, 12]
    assert await store.signed_heads(chain.run_id) == heads
    assert await store.signed_heads(chain.run_id, after_seq=3) == heads[1:]
    assert await store.signed_heads(chain.run_id, after_seq=3, upto_seq=9) == heads[1:3]
    assert await store.signed_heads(chain.run_id, upto_seq=2) == []
    assert await store.signed_heads(other.run_id) == []


@pytest.mark.anyio
async def test_documents_are_kept_once_by_hash_and_found_by_hash(storage: Storage) -> None:
    """Documents are kept by hash, byte for byte; one already kept is left as it is; looking up
    hashes returns the kept ones (absent ones are simply missing), across many hashes at once."""
    store = storage.ledger
    many = [Document(f"{n:064x}", "policy_set", f'{{"n":{n}}}'.encode()) for n in range(1200)]
    await store.put_documents(many[:700])
    await store.put_documents(many[600:])  # overlaps: the kept hundred stay as they are
    await store.put_documents([Document(many[0].hash, "tool_catalog", b'{"changed":true}')])
    await store.put_documents([])
    found = await store.documents([d.hash for d in many])
    assert found == {d.hash: d for d in many}
    absent = "f" * 64
    some = await store.documents([many[5].hash, absent, many[5].hash])
    assert some == {many[5].hash: many[5]}
    assert await store.documents([]) == {}
    assert await store.documents([absent]) == {}


@pytest.mark.anyio
async def test_find_entry_finds_an_entry_of_the_run_by_id_and_nothing_else(
    storage: Storage,
) -> None:
    """Every entry of a run is found by (run, id) with its seq and verbatim bytes; the id of
    another run's entry, or of no entry, finds nothing."""
    store = storage.ledger
    one, other = Chain(run_id_at(0)), Chain(run_id_at(1))
    await create(store, one)
    await create(store, other)
    await append(store, one, 5)
    await append(store, other, 2)
    for entry in one.entries:
        assert await store.find_entry(one.run_id, entry.id) == StoredRow(
            entry.seq, entry.id, entry.raw
        )
    assert await store.find_entry(one.run_id, other.entries[1].id) is None
    assert await store.find_entry(other.run_id, one.entries[1].id) is None
    assert await store.find_entry(one.run_id, "0" * 64) is None


@pytest.mark.anyio
async def test_data_survives_close_and_reopen(place: Place, anyio_backend: str) -> None:
    """Everything acknowledged before close is there for a new instance on the same store: runs,
    entries (byte for byte), checkpoints, signed heads, documents, revocations and idempotency
    rows; reopening does not disturb them and the run can be continued."""
    first = place.new()
    await first.open()
    chain = Chain(run_id_at(0))
    entry = chain.next()
    await first.ledger.create_run(chain.record(writ_id="writ-1"), entry[0], ("key", "hash"))
    chain.accept(entry)
    batch = chain.next(4)
    head = SignedHead(chain.run_id, 4, batch[-1].id, TIME, "cd" * 64)
    await first.ledger.append(
        chain.run_id,
        batch,
        RunUpdate("running", TIME, {"n": 4}),
        Checkpoint(chain.run_id, 4, b"snap"),
        head,
    )
    chain.accept(batch)
    document = Document("a" * 64, "policy_set", b"{}")
    await first.ledger.put_documents([document])
    assert await first.ledger.revoke(
        "writ-1", tenant="default", revoked_at=TIME, revoked_by="k", reason=None
    )
    await first.close()

    second = place.new()
    await second.open()
    try:
        store = second.ledger
        assert await rows_of(store, chain.run_id) == expected_rows(chain)
        record = await store.get_run(chain.run_id)
        assert record is not None
        assert record.summary == {"n": 4}
        assert await store.latest_checkpoint(chain.run_id, at_or_before=10) == Checkpoint(
            chain.run_id, 4, b"snap"
        )
        assert await store.signed_heads(chain.run_id) == [head]
        assert await store.documents([document.hash]) == {document.hash: document}
        assert await store.revocations() == ["writ-1"]
        hit = await store.find_idempotency("default", "key")
        assert hit is not None
        assert (hit.run_id, hit.body_hash) == (chain.run_id, "hash")
        await append(store, chain, 2)
        assert await rows_of(store, chain.run_id) == expected_rows(chain)
    finally:
        await second.close()


@pytest.mark.anyio
async def test_a_closed_store_refuses_work_with_storage_error(
    place: Place, anyio_backend: str
) -> None:
    """Reads and writes on a never opened or a closed store raise StorageError (answered 503,
    never a crash), and ping says the store is not ready."""
    chain = Chain(run_id_at(0))
    never = place.new()
    with pytest.raises(StorageError):
        await never.ledger.create_run(chain.record(), chain.next()[0])
    with pytest.raises(StorageError):
        await never.ledger.read_rows(chain.run_id, after_seq=-1, limit=1)
    assert not await never.ledger.ping()

    closed = place.new()
    await closed.open()
    await create(closed.ledger, chain)
    await closed.close()
    with pytest.raises(StorageError):
        await closed.ledger.get_run(chain.run_id)
    with pytest.raises(StorageError):
        await closed.ledger.append(chain.run_id, chain.next(1), None)
    with pytest.raises(StorageError):
        await closed.keys.list_keys()
    assert not await closed.ledger.ping()
