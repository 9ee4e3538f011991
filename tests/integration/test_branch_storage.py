"""What branches need of storage: an entry found by its run and id, and a run created with the
world it inherited as its checkpoint at seq 0, in the same transaction as its first entry."""

from __future__ import annotations

import pytest

from tests.integration.test_sqlite_store import Chain, append, create, run_id_at
from thymos.core import Delta, World
from thymos.storage import Checkpoint, SeqConflict, SqliteLedgerStore


@pytest.mark.anyio
async def test_find_entry_finds_an_entry_of_the_run_by_id_and_nothing_else(
    store: SqliteLedgerStore,
) -> None:
    """Every entry of a run is found by (run, id) with its seq and verbatim bytes; the id of
    another run's entry, or of no entry, finds nothing."""
    one, other = Chain(run_id_at(0)), Chain(run_id_at(1))
    await create(store, one)
    await create(store, other)
    await append(store, one, 5)
    await append(store, other, 2)
    for entry in one.entries:
        row = await store.find_entry(one.run_id, entry.id)
        assert row is not None
        assert (row.seq, row.id, row.raw) == (entry.seq, entry.id, entry.raw)
    assert await store.find_entry(one.run_id, other.entries[1].id) is None
    assert await store.find_entry(other.run_id, one.entries[1].id) is None
    assert await store.find_entry(one.run_id, "0" * 64) is None


@pytest.mark.anyio
async def test_a_run_created_with_a_checkpoint_has_it_at_seq_zero(
    store: SqliteLedgerStore,
) -> None:
    """The checkpoint given to `create_run` is the run's checkpoint at seq 0 (what `world/at`
    folds from); a refused creation stores neither the run nor its checkpoint."""
    world = World()
    world.apply(Delta("create", "kv", "a", 1))
    chain = Chain(run_id_at(0))
    first = chain.next()
    snapshot = world.snapshot()
    await store.create_run(chain.record(), first[0], None, Checkpoint(chain.run_id, 0, snapshot))
    chain.accept(first)
    await append(store, chain, 3)
    checkpoint = await store.latest_checkpoint(chain.run_id, at_or_before=3)
    assert checkpoint is not None
    assert checkpoint.seq == 0
    assert World.restore(checkpoint.world).hash == world.hash

    with pytest.raises(SeqConflict):
        await store.create_run(
            chain.record(), first[0], None, Checkpoint(chain.run_id, 0, World().snapshot())
        )
    kept = await store.latest_checkpoint(chain.run_id, at_or_before=0)
    assert kept is not None and kept.world == snapshot
