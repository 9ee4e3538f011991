"""Run leases on every backend, with the caller's clock given explicitly (never the wall clock):
a lease is claimed when free, expired or already the caller's, refused while another node holds
it; renewing extends the leases still naming the caller (not one another node claimed once it
expired) and says which it holds; only the holder
releases; expired leases are claimed in bulk by a node taking over; `lease_owner` names the
holder of an unexpired lease. (Races between nodes are in `test_concurrency`.)"""

from __future__ import annotations

import pytest

from thymos.storage import Storage

TTL = 1_000_000
T0 = 1_767_225_600_000_000


@pytest.mark.anyio
async def test_a_lease_is_claimed_when_free_and_refused_while_another_node_holds_it(
    storage: Storage,
) -> None:
    """A free run's lease goes to the first claimant; another node's claim is refused until the
    lease expires (at exactly now + ttl), after which it is taken; the holder's own claim
    succeeds and extends it."""
    leases = storage.ledger
    assert await leases.lease_owner("run-1", now_us=T0) is None
    assert await leases.claim_lease("run-1", "node-a", now_us=T0, ttl_us=TTL)
    assert await leases.lease_owner("run-1", now_us=T0) == "node-a"
    assert not await leases.claim_lease("run-1", "node-b", now_us=T0 + 10, ttl_us=TTL)
    assert await leases.lease_owner("run-1", now_us=T0 + TTL - 1) == "node-a"
    # The holder claims again: still its own, now until T0 + 500 + TTL.
    assert await leases.claim_lease("run-1", "node-a", now_us=T0 + 500, ttl_us=TTL)
    assert not await leases.claim_lease("run-1", "node-b", now_us=T0 + TTL, ttl_us=TTL)
    assert await leases.lease_owner("run-1", now_us=T0 + TTL) == "node-a"
    assert await leases.lease_owner("run-1", now_us=T0 + 500 + TTL) is None
    assert await leases.claim_lease("run-1", "node-b", now_us=T0 + 500 + TTL, ttl_us=TTL)
    assert await leases.lease_owner("run-1", now_us=T0 + 500 + TTL) == "node-b"
    assert not await leases.claim_lease("run-1", "node-a", now_us=T0 + 600 + TTL, ttl_us=TTL)
    # Other runs are independent.
    assert await leases.claim_lease("run-2", "node-a", now_us=T0 + 600 + TTL, ttl_us=TTL)


@pytest.mark.anyio
async def test_renewing_extends_the_leases_still_naming_the_caller(storage: Storage) -> None:
    """renew_leases extends every lease that still names the caller and returns those runs: its
    unexpired leases, and one that expired while no other node claimed it (still its own); a
    lease another node claimed after it expired is that node's, and other nodes' leases keep
    their expiry."""
    leases = storage.ledger
    assert await leases.claim_lease("run-1", "node-a", now_us=T0, ttl_us=100)
    assert await leases.claim_lease("run-2", "node-a", now_us=T0, ttl_us=TTL)
    assert await leases.claim_lease("run-3", "node-a", now_us=T0, ttl_us=TTL)
    assert await leases.claim_lease("run-4", "node-b", now_us=T0, ttl_us=TTL)
    assert await leases.claim_lease("run-5", "node-a", now_us=T0, ttl_us=100)
    assert await leases.claim_lease("run-5", "node-b", now_us=T0 + 200, ttl_us=TTL)
    assert await leases.lease_owner("run-1", now_us=T0 + 500) is None
    held = await leases.renew_leases("node-a", now_us=T0 + 500, ttl_us=TTL)
    assert held == {"run-1", "run-2", "run-3"}
    # Renewed: held past the original expiry, until T0 + 500 + TTL.
    for run_id in held:
        assert await leases.lease_owner(run_id, now_us=T0 + TTL + 499) == "node-a"
        assert await leases.lease_owner(run_id, now_us=T0 + TTL + 500) is None
    assert await leases.lease_owner("run-5", now_us=T0 + 500) == "node-b"
    # node-b's lease kept its own expiry.
    assert await leases.lease_owner("run-4", now_us=T0 + TTL) is None
    assert await leases.renew_leases("node-c", now_us=T0 + 500, ttl_us=TTL) == set()
    assert await leases.renew_leases("node-b", now_us=T0 + 500, ttl_us=TTL) == {"run-4", "run-5"}


@pytest.mark.anyio
async def test_only_the_holder_releases_a_lease(storage: Storage) -> None:
    """release_lease by another node leaves the lease as it is; by the holder it frees the run at
    once, for any node to claim; releasing a lease nobody holds is harmless."""
    leases = storage.ledger
    assert await leases.claim_lease("run-1", "node-a", now_us=T0, ttl_us=TTL)
    await leases.release_lease("run-1", "node-b")
    assert await leases.lease_owner("run-1", now_us=T0 + 1) == "node-a"
    assert not await leases.claim_lease("run-1", "node-b", now_us=T0 + 1, ttl_us=TTL)
    await leases.release_lease("run-1", "node-a")
    assert await leases.lease_owner("run-1", now_us=T0 + 1) is None
    assert await leases.renew_leases("node-a", now_us=T0 + 1, ttl_us=TTL) == set()
    assert await leases.claim_lease("run-1", "node-b", now_us=T0 + 2, ttl_us=TTL)
    await leases.release_lease("run-9", "node-a")
    assert await leases.lease_owner("run-1", now_us=T0 + 2) == "node-b"


@pytest.mark.anyio
async def test_expired_leases_are_claimed_in_bulk_up_to_a_limit(storage: Storage) -> None:
    """claim_expired_leases takes, for the caller, up to `limit` runs whose lease expired, and
    only those: unexpired leases (the caller's own or another node's) are left alone; the runs
    taken are held by the caller until now + ttl."""
    leases = storage.ledger
    dead = [f"run-{n:02}" for n in range(7)]
    for run_id in dead:
        assert await leases.claim_lease(run_id, "node-dead", now_us=T0, ttl_us=100)
    assert await leases.claim_lease("run-live", "node-b", now_us=T0, ttl_us=TTL)
    assert await leases.claim_lease("run-mine", "node-a", now_us=T0, ttl_us=TTL)
    assert await leases.claim_expired_leases("node-a", now_us=T0 + 50, ttl_us=TTL, limit=10) == []

    now = T0 + 1000
    first = await leases.claim_expired_leases("node-a", now_us=now, ttl_us=TTL, limit=4)
    assert len(first) == 4
    assert set(first) <= set(dead)
    rest = await leases.claim_expired_leases("node-a", now_us=now, ttl_us=TTL, limit=10)
    assert sorted(first + rest) == dead
    assert await leases.claim_expired_leases("node-a", now_us=now, ttl_us=TTL, limit=10) == []
    for run_id in dead:
        assert await leases.lease_owner(run_id, now_us=now + TTL - 1) == "node-a"
        assert await leases.lease_owner(run_id, now_us=now + TTL) is None
    assert await leases.lease_owner("run-live", now_us=now) == "node-b"
    held = await leases.renew_leases("node-a", now_us=now, ttl_us=TTL)
    assert held == {*dead, "run-mine"}
