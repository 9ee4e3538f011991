"""Runs on every backend: a run, its first entry, its checkpoint and its idempotency row are
created together or not at all (a taken run id or idempotency key refuses the whole create);
listings are newest first with tenant, status, parent and `before` filters; runs are found by
status, by writ and as interrupted; revocations are kept once."""

from __future__ import annotations

import pytest

from thymos.core import ErrorCode, RunSummary, ThymosError
from thymos.storage import Checkpoint, RunUpdate, SeqConflict, Storage

from ._chains import TIME, Chain, create, expected_rows, rows_of, run_id_at


@pytest.mark.anyio
async def test_create_run_is_atomic_with_its_first_entry_and_idempotency_row(
    storage: Storage,
) -> None:
    """A run, its seq-0 entry and its idempotency row land together; a create that reuses an
    idempotency key of its tenant is refused whole (no run row, no entry, no checkpoint); the
    same key in another tenant is another key."""
    store = storage.ledger
    first = Chain(run_id_at(0), tenant="acme")
    entry = first.next()
    await store.create_run(first.record(), entry[0], ("key-1", "hash-1"))
    first.accept(entry)
    hit = await store.find_idempotency("acme", "key-1")
    assert hit is not None
    assert (hit.run_id, hit.body_hash) == (first.run_id, "hash-1")
    assert await store.find_idempotency("other-tenant", "key-1") is None
    assert await store.find_idempotency("acme", "key-2") is None
    assert await rows_of(store, first.run_id) == expected_rows(first)

    second = Chain(run_id_at(1), tenant="acme")
    with pytest.raises(ThymosError) as refused:
        await store.create_run(
            second.record(),
            second.next()[0],
            ("key-1", "hash-2"),
            Checkpoint(second.run_id, 0, b"world"),
        )
    assert refused.value.code is ErrorCode.IDEMPOTENCY_CONFLICT
    assert await store.get_run(second.run_id) is None
    assert await rows_of(store, second.run_id) == []
    assert await store.latest_checkpoint(second.run_id, at_or_before=0) is None
    hit = await store.find_idempotency("acme", "key-1")
    assert hit is not None
    assert (hit.run_id, hit.body_hash) == (first.run_id, "hash-1")

    third = Chain(run_id_at(2), tenant="other-tenant")
    await store.create_run(third.record(), third.next()[0], ("key-1", "hash-3"))
    hit = await store.find_idempotency("other-tenant", "key-1")
    assert hit is not None
    assert hit.run_id == third.run_id


@pytest.mark.anyio
async def test_creating_a_run_that_exists_is_a_seq_conflict_that_changes_nothing(
    storage: Storage,
) -> None:
    """A second create of the same run id is SeqConflict (its seq 0 is taken): the stored run,
    its entry, its checkpoint and its idempotency row are left as they were, and the refused
    create's idempotency key is not recorded."""
    store = storage.ledger
    chain = Chain(run_id_at(0))
    first = chain.next()
    await store.create_run(
        chain.record(), first[0], ("key-1", "hash-1"), Checkpoint(chain.run_id, 0, b"kept")
    )
    chain.accept(first)
    again = Chain(chain.run_id)
    with pytest.raises(SeqConflict):
        await store.create_run(
            again.record("completed"),
            again.next(body={"other": True})[0],
            ("key-2", "hash-2"),
            Checkpoint(chain.run_id, 0, b"replaced"),
        )
    assert await rows_of(store, chain.run_id) == expected_rows(chain)
    record = await store.get_run(chain.run_id)
    assert record is not None
    assert record.status == "running"
    kept = await store.latest_checkpoint(chain.run_id, at_or_before=0)
    assert kept == Checkpoint(chain.run_id, 0, b"kept")
    assert await store.find_idempotency("default", "key-2") is None


@pytest.mark.anyio
async def test_a_run_record_comes_back_as_created(storage: Storage) -> None:
    """Every field of a run record is stored and read back as given (spec and summary as JSON
    values, creator, writ and parent included)."""
    store = storage.ledger
    parent = Chain(run_id_at(0), tenant="acme")
    await create(store, parent)
    child = Chain(run_id_at(1), tenant="acme")
    summary = {"usage": {"input_tokens": 3}, "text": "ünïcode ✓", "nested": [1, None, True]}
    record = child.record(
        "waiting",
        summary=summary,
        created_by="key-1",
        writ_id="writ-1",
        parent_run_id=parent.run_id,
    )
    await store.create_run(record, child.next()[0])
    assert await store.get_run(child.run_id) == record
    assert await store.find_run_by_writ("writ-1") == record
    assert await store.find_run_by_writ("writ-2") is None


@pytest.mark.anyio
async def test_list_runs_is_newest_first_with_filters_and_before(storage: Storage) -> None:
    """list_runs orders by run id descending (creation time), filters by tenant and status,
    pages with `before` and honours `limit`; runs_with_status finds the runs with any of the
    statuses asked."""
    store = storage.ledger
    chains = [Chain(run_id_at(i, salt=i), tenant="acme" if i % 2 else "globex") for i in range(10)]
    for i, chain in enumerate(chains):
        await create(store, chain, status="completed" if i % 3 == 0 else "running")
    ids = [c.run_id for c in chains]
    listed = await store.list_runs(tenant=None, status=None, before=None, limit=100)
    assert [r.run_id for r in listed] == list(reversed(ids))
    acme = await store.list_runs(tenant="acme", status=None, before=None, limit=100)
    assert [r.run_id for r in acme] == [c.run_id for c in reversed(chains) if c.tenant == "acme"]
    done = await store.list_runs(tenant=None, status="completed", before=None, limit=100)
    assert [r.run_id for r in done] == [ids[9], ids[6], ids[3], ids[0]]
    page = await store.list_runs(tenant=None, status=None, before=ids[5], limit=3)
    assert [r.run_id for r in page] == [ids[4], ids[3], ids[2]]
    both = await store.list_runs(tenant="globex", status="running", before=ids[8], limit=10)
    assert [r.run_id for r in both] == [ids[4], ids[2]]
    assert await store.list_runs(tenant="initech", status=None, before=None, limit=10) == []
    running = await store.runs_with_status(["running"])
    assert sorted(r.run_id for r in running) == [c.run_id for i, c in enumerate(chains) if i % 3]
    either = await store.runs_with_status(["running", "completed"])
    assert sorted(r.run_id for r in either) == ids
    assert await store.runs_with_status(["cancelled"]) == []


@pytest.mark.anyio
async def test_list_runs_by_parent_lists_only_that_runs_children(storage: Storage) -> None:
    """With `parent_run_id`, list_runs returns the children of that run only, newest first, with
    the other filters still applied."""
    store = storage.ledger
    parent, other = Chain(run_id_at(0)), Chain(run_id_at(1))
    await create(store, parent)
    await create(store, other)
    children = [Chain(run_id_at(10 + i), tenant="acme" if i else "default") for i in range(4)]
    for child in children:
        await create(store, child, parent_run_id=parent.run_id)
    await create(store, Chain(run_id_at(20)), parent_run_id=other.run_id)
    listed = await store.list_runs(
        tenant=None, status=None, before=None, limit=10, parent_run_id=parent.run_id
    )
    assert [r.run_id for r in listed] == [c.run_id for c in reversed(children)]
    assert all(r.parent_run_id == parent.run_id for r in listed)
    acme = await store.list_runs(
        tenant="acme", status=None, before=children[3].run_id, limit=10, parent_run_id=parent.run_id
    )
    assert [r.run_id for r in acme] == [children[2].run_id, children[1].run_id]
    none = await store.list_runs(
        tenant=None, status=None, before=None, limit=10, parent_run_id=children[0].run_id
    )
    assert none == []


@pytest.mark.anyio
async def test_runs_interrupted_are_the_failed_runs_whose_latest_end_is_interrupted(
    storage: Storage,
) -> None:
    """runs_interrupted finds, oldest first, the runs whose stored status is failed with
    `terminated_by` interrupted in their summary, as the latest update left it: not runs that
    failed otherwise, not runs resumed since, not runs still running."""

    def ended(status: str, terminated_by: str | None) -> RunUpdate:
        summary = RunSummary().as_dict()
        summary["terminated_by"] = terminated_by
        return RunUpdate(status, TIME, summary)

    store = storage.ledger
    chains = [Chain(run_id_at(i)) for i in range(5)]
    for chain in chains:
        await create(store, chain)
    ends = [
        ended("failed", "interrupted"),
        ended("failed", "error"),
        ended("failed", "interrupted"),
        ended("running", None),
        ended("cancelled", "cancel"),
    ]
    for chain, end in zip(chains, ends, strict=True):
        batch = chain.next(1)
        await store.append(chain.run_id, batch, end)
        chain.accept(batch)
    interrupted = await store.runs_interrupted()
    assert [r.run_id for r in interrupted] == [chains[0].run_id, chains[2].run_id]
    # The first run is resumed: its latest end is no longer `interrupted`.
    batch = chains[0].next(1)
    await store.append(chains[0].run_id, batch, ended("running", "interrupted"))
    interrupted = await store.runs_interrupted()
    assert [r.run_id for r in interrupted] == [chains[2].run_id]


@pytest.mark.anyio
async def test_a_revocation_is_kept_once(storage: Storage) -> None:
    """revoke records a writ's revocation and says True; revoking it again says False and keeps
    the first; revocations lists every revoked writ id."""
    store = storage.ledger
    assert await store.revocations() == []
    assert await store.revoke(
        "writ-1", tenant="acme", revoked_at=TIME, revoked_by="key-1", reason="leaked"
    )
    assert not await store.revoke(
        "writ-1", tenant="acme", revoked_at=TIME, revoked_by="key-2", reason=None
    )
    assert await store.revoke(
        "writ-2", tenant="globex", revoked_at=TIME, revoked_by="key-3", reason=None
    )
    assert sorted(await store.revocations()) == ["writ-1", "writ-2"]
