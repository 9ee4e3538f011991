"""Concurrency on every backend, with two storage instances on one store standing for two nodes:
`(run, seq)` is unique whoever writes (two writers racing for a slot: exactly one wins, the other
gets `SeqConflict`, and the chain verifies); two creators of one run: one wins; many runs
appending at once all land intact; readers never see a gap while a run is appended; two nodes
racing for a lease never both get it; expired leases claimed by two nodes at once are shared
out, never given to both; messages taken by two instances at once are taken once each."""

from __future__ import annotations

import asyncio
import random

import pytest

from thymos.core import StoredRow
from thymos.storage import SeqConflict, Storage

from ._chains import Chain, append, create, expected_rows, rows_of, run_id_at, verifies

T0 = 1_767_225_600_000_000
TTL = 1_000_000


def _one_won(results: list[BaseException | None]) -> int:
    """The index of the one racer that succeeded; every other one must have got SeqConflict."""
    winners = [i for i, result in enumerate(results) if result is None]
    assert len(winners) == 1, results
    losers = [result for result in results if result is not None]
    assert all(isinstance(result, SeqConflict) for result in losers), results
    return winners[0]


@pytest.mark.anyio
async def test_two_writers_racing_for_the_same_seq_never_fork_the_chain(
    storage: Storage, other_storage: Storage
) -> None:
    """Two instances append, at the same moment, different entries at the same seqs of one run
    (round after round, batches of varying size): each time exactly one succeeds and the other
    gets SeqConflict, so the stored chain is the winners' entries, verifies, and both instances
    read it alike."""
    one, two = storage.ledger, other_storage.ledger
    rng = random.Random(7)
    chain = Chain(run_id_at(0))
    await create(one, chain)
    for round_ in range(30):
        size = rng.randint(1, 3)
        mine = chain.next(size, body={"writer": 1, "round": round_})
        theirs = chain.next(rng.randint(1, 3), body={"writer": 2, "round": round_})
        first, second = (one, two) if round_ % 2 else (two, one)
        results = await asyncio.gather(
            first.append(chain.run_id, mine, chain.update()),
            second.append(chain.run_id, theirs, chain.update()),
            return_exceptions=True,
        )
        chain.accept(mine if _one_won(list(results)) == 0 else theirs)
    rows = await rows_of(one, chain.run_id)
    assert rows == expected_rows(chain)
    assert await rows_of(two, chain.run_id) == rows
    assert verifies(chain.run_id, rows)


@pytest.mark.anyio
async def test_two_creators_of_the_same_run_one_wins(
    storage: Storage, other_storage: Storage
) -> None:
    """Two instances create the same run at the same moment: one create lands whole, the other
    is SeqConflict, and the run holds the winner's first entry and record."""
    for n in range(10):
        run_id = run_id_at(n)
        mine, theirs = Chain(run_id, tenant="acme"), Chain(run_id, tenant="globex")
        first_mine, first_theirs = mine.next(), theirs.next(body={"other": True})
        results = await asyncio.gather(
            storage.ledger.create_run(mine.record(), first_mine[0], (f"k-{n}", "h")),
            other_storage.ledger.create_run(theirs.record(), first_theirs[0], (f"k-{n}", "h")),
            return_exceptions=True,
        )
        winner = mine if _one_won(list(results)) == 0 else theirs
        winner.accept(first_mine if winner is mine else first_theirs)
        assert await rows_of(other_storage.ledger, run_id) == expected_rows(winner)
        record = await storage.ledger.get_run(run_id)
        assert record is not None
        assert record.tenant == winner.tenant
        hit = await storage.ledger.find_idempotency(winner.tenant, f"k-{n}")
        assert hit is not None
        assert hit.run_id == run_id


@pytest.mark.anyio
async def test_concurrent_appenders_on_different_runs_all_land_intact(storage: Storage) -> None:
    """Many runs appending at once (each run's writer awaiting its own appends) all land: every
    chain is intact, in order, and verifies."""
    store = storage.ledger
    chains = [Chain(run_id_at(i)) for i in range(30)]
    await asyncio.gather(*(create(store, chain) for chain in chains))

    async def writer(chain: Chain, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(12):
            await append(store, chain, rng.randint(1, 3))

    await asyncio.gather(*(writer(chain, i) for i, chain in enumerate(chains)))
    for chain in chains:
        rows = await rows_of(store, chain.run_id)
        assert rows == expected_rows(chain)
        assert verifies(chain.run_id, rows)


@pytest.mark.anyio
async def test_readers_never_see_a_gap_while_a_run_is_appended(
    storage: Storage, other_storage: Storage
) -> None:
    """While one task appends a run's entries in batches of varying size (and other runs append
    beside it), readers polling read_rows from the last seq they saw, on the writer's instance
    and on another one, always get the next seq first and consecutive seqs after it, and the
    rows they assemble verify as a chain."""
    store = storage.ledger
    target = Chain(run_id_at(0))
    noise = [Chain(run_id_at(i + 1)) for i in range(3)]
    for chain in (target, *noise):
        await create(store, chain)
    total = 200
    done = asyncio.Event()

    async def writer() -> None:
        rng = random.Random(11)
        while len(target.entries) < total:
            await append(store, target, min(rng.randint(1, 4), total - len(target.entries)))
        done.set()

    async def background(chain: Chain) -> None:
        while not done.is_set():
            await append(store, chain, 1)

    async def reader(on: Storage, page: int) -> list[StoredRow]:
        seen: list[StoredRow] = []
        last = -1
        while last < total - 1:
            rows = await on.ledger.read_rows(target.run_id, after_seq=last, limit=page)
            seqs = [row.seq for row in rows]
            assert seqs == list(range(last + 1, last + 1 + len(rows))), (last, seqs)
            seen.extend(rows)
            if rows:
                last = rows[-1].seq
            else:
                await asyncio.sleep(0.001)  # nothing new yet: let the writer on
        return seen

    readers = [
        asyncio.ensure_future(reader(on, page))
        for on, page in ((storage, 1), (storage, 50), (other_storage, 3), (other_storage, 1000))
    ]
    await asyncio.gather(writer(), *(background(c) for c in noise), *readers)
    for task in readers:
        assert task.result() == expected_rows(target)
    assert verifies(target.run_id, expected_rows(target))


@pytest.mark.anyio
async def test_two_nodes_racing_for_a_lease_never_both_get_it(
    storage: Storage, other_storage: Storage
) -> None:
    """Two nodes claim the same free runs at the same moment, from two instances: for every run
    exactly one claim is True, and that node is the lease's owner."""
    runs = [f"run-{n:02}" for n in range(25)]
    claims = [
        claim
        for run_id in runs
        for claim in (
            storage.ledger.claim_lease(run_id, "node-a", now_us=T0, ttl_us=TTL),
            other_storage.ledger.claim_lease(run_id, "node-b", now_us=T0, ttl_us=TTL),
        )
    ]
    results = await asyncio.gather(*claims)
    for n, run_id in enumerate(runs):
        won_a, won_b = results[2 * n], results[2 * n + 1]
        assert won_a != won_b, (run_id, won_a, won_b)
        owner = await storage.ledger.lease_owner(run_id, now_us=T0 + 1)
        assert owner == ("node-a" if won_a else "node-b")


@pytest.mark.anyio
async def test_expired_leases_claimed_by_two_nodes_at_once_go_to_one_each(
    storage: Storage, other_storage: Storage
) -> None:
    """Two nodes take over the expired leases of a dead one at the same moment, a few at a time:
    no run is given to both, together they take every one, and each run's owner is the node
    that got it."""
    dead = [f"run-{n:02}" for n in range(60)]
    for run_id in dead:
        assert await storage.ledger.claim_lease(run_id, "node-dead", now_us=T0, ttl_us=10)
    now = T0 + 100

    async def take_over(on: Storage, node: str) -> list[str]:
        taken: list[str] = []
        while batch := await on.ledger.claim_expired_leases(node, now_us=now, ttl_us=TTL, limit=7):
            taken.extend(batch)
        return taken

    got_a, got_b = await asyncio.gather(
        take_over(storage, "node-a"), take_over(other_storage, "node-b")
    )
    assert not set(got_a) & set(got_b)
    assert sorted(got_a + got_b) == dead
    for run_id in dead:
        expected = "node-a" if run_id in got_a else "node-b"
        assert await other_storage.ledger.lease_owner(run_id, now_us=now) == expected


@pytest.mark.anyio
async def test_messages_taken_by_two_instances_at_once_are_taken_once_each(
    storage: Storage, other_storage: Storage
) -> None:
    """Two instances take one node's messages at the same moment: each message goes to exactly
    one of them."""
    sent: list[str] = []
    for round_ in range(5):
        ids = [f"msg-{round_}-{n}" for n in range(10)]
        for message_id in ids:
            await storage.ledger.send_message(message_id, "run", "node-a", b"x", now_us=T0)
        sent.extend(ids)
        got_one, got_two = await asyncio.gather(
            storage.ledger.take_messages("node-a"), other_storage.ledger.take_messages("node-a")
        )
        one = [m.message_id for m in got_one]
        two = [m.message_id for m in got_two]
        assert not set(one) & set(two)
        assert sorted(one + two) == sorted(ids)
    assert await storage.ledger.take_messages("node-a") == []


@pytest.mark.anyio
async def test_a_writer_that_lost_its_run_to_another_gets_seq_conflict_never_a_gap(
    storage: Storage, other_storage: Storage
) -> None:
    """Instance one appends to a run, then instance two (a node that took the run over) appends
    after it; one's next append continues where one left off, not the stored head: it is
    SeqConflict and nothing is stored, whatever one remembers of the head."""
    one, two = storage.ledger, other_storage.ledger
    chain = Chain(run_id_at(0))
    await create(one, chain)
    mine = chain.next(2)
    await one.append(chain.run_id, mine, None)
    chain.accept(mine)
    stale = Chain(chain.run_id)
    stale.accept(list(chain.entries))
    taken_over = chain.next(3, body={"node": 2})
    await two.append(chain.run_id, taken_over, None)
    chain.accept(taken_over)
    for size in (1, 3):
        late = stale.next(size, body={"node": 1})
        with pytest.raises(SeqConflict):
            await one.append(chain.run_id, late, None)
    rows = await rows_of(one, chain.run_id)
    assert rows == expected_rows(chain)
    assert verifies(chain.run_id, rows)
