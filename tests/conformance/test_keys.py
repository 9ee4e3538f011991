"""API keys and their usage on every backend: a key is stored with only its secret's hash and
found by its secret; names are unique across tenants; seeding makes the env keys exactly the
seeds (upsert by name keeping the key id, deleting env keys no longer listed, leaving CLI keys
alone unless named, secrets swapped in one go); request counts add up and counts of deleted keys
are dropped; run totals sum the stored usage of the runs each key created."""

from __future__ import annotations

import pytest

from thymos.storage import KeyNameTaken, KeySeed, RunTotals, Storage, hash_secret

from ._chains import Chain, create, run_id_at


def _usage(input_tokens: int, output_tokens: int, tool_calls: int, usd: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "tool_calls": tool_calls,
        "usd_millicents": usd,
    }


@pytest.mark.anyio
async def test_a_created_key_is_found_by_its_secret_and_listed_by_name(storage: Storage) -> None:
    """create returns the stored key (without its secret); find, the lookup table by secret
    hash and the listings return it as stored; the listing is ordered by name, all keys or one
    tenant's; an unknown secret finds nothing."""
    keys = storage.keys
    bob = await keys.create(
        name="bob", tenant="acme", role="operator", secret="s-bob", rpm=60, source="cli"
    )
    alice = await keys.create(
        name="alice", tenant="acme", role="admin", secret="s-alice", rpm=None, source="cli"
    )
    carol = await keys.create(
        name="carol", tenant="globex", role="viewer", secret="s-carol", rpm=5, source="env"
    )
    assert (bob.name, bob.tenant, bob.role, bob.rpm, bob.source) == (
        "bob",
        "acme",
        "operator",
        60,
        "cli",
    )
    assert len({bob.key_id, alice.key_id, carol.key_id}) == 3
    assert await keys.find("s-bob") == bob
    assert await keys.find("s-alice") == alice
    assert await keys.find("s-nobody") is None
    assert await keys.by_secret_hashes() == {
        hash_secret("s-bob"): bob,
        hash_secret("s-alice"): alice,
        hash_secret("s-carol"): carol,
    }
    assert await keys.list_keys() == [alice, bob, carol]
    assert await keys.list_keys("acme") == [alice, bob]
    assert await keys.list_keys("globex") == [carol]
    assert await keys.list_keys("initech") == []


@pytest.mark.anyio
async def test_a_taken_key_name_is_refused_in_any_tenant(storage: Storage) -> None:
    """Key names are unique across tenants: creating one that exists raises KeyNameTaken and
    stores nothing."""
    keys = storage.keys
    first = await keys.create(
        name="ci", tenant="acme", role="operator", secret="s-1", rpm=None, source="cli"
    )
    with pytest.raises(KeyNameTaken) as taken:
        await keys.create(
            name="ci", tenant="globex", role="admin", secret="s-2", rpm=None, source="cli"
        )
    assert taken.value.name == "ci"
    assert await keys.list_keys() == [first]
    assert await keys.find("s-2") is None


@pytest.mark.anyio
async def test_seeding_upserts_by_name_and_keeps_the_key_id(storage: Storage) -> None:
    """A seed for a name that exists updates that key in place (tenant, role, rate limit and
    secret: the old secret finds nothing), keeping its id and so its usage; a new name is a new
    env key; seeding the same list again changes nothing."""
    keys = storage.keys
    await keys.seed([KeySeed("app", "acme", "operator", "s-old", 30)])
    (before,) = await keys.list_keys()
    assert (before.name, before.tenant, before.role, before.rpm, before.source) == (
        "app",
        "acme",
        "operator",
        30,
        "env",
    )
    await keys.add_requests({before.key_id: 7})

    seeds = [
        KeySeed("app", "globex", "admin", "s-new", None),
        KeySeed("batch", "acme", "viewer", "s-batch", 10),
    ]
    await keys.seed(seeds)
    app = await keys.find("s-new")
    assert app is not None
    assert app.key_id == before.key_id
    assert (app.tenant, app.role, app.rpm, app.source) == ("globex", "admin", None, "env")
    assert await keys.find("s-old") is None
    batch = await keys.find("s-batch")
    assert batch is not None
    assert (batch.name, batch.tenant, batch.source) == ("batch", "acme", "env")
    assert await keys.requests() == {before.key_id: 7}

    await keys.seed(seeds)
    assert await keys.list_keys() == [app, batch]


@pytest.mark.anyio
async def test_seeding_deletes_env_keys_no_longer_listed_and_leaves_cli_keys(
    storage: Storage,
) -> None:
    """An env key left out of the seeds is deleted (with its usage): taking a key out of the
    configuration revokes it. CLI keys are left alone unless a seed names one, which then takes
    it over (its id kept). Seeding nothing deletes every env key."""
    keys = storage.keys
    cli = await keys.create(
        name="ops", tenant="acme", role="admin", secret="s-ops", rpm=None, source="cli"
    )
    named = await keys.create(
        name="named", tenant="acme", role="viewer", secret="s-named", rpm=None, source="cli"
    )
    await keys.seed(
        [KeySeed("gone", "acme", "operator", "s-gone"), KeySeed("kept", "acme", "operator", "s-k")]
    )
    gone = await keys.find("s-gone")
    assert gone is not None
    await keys.add_requests({gone.key_id: 3})

    await keys.seed(
        [KeySeed("kept", "acme", "operator", "s-k"), KeySeed("named", "globex", "admin", "s-n2")]
    )
    assert await keys.find("s-gone") is None
    assert gone.key_id not in await keys.requests()
    assert await keys.find("s-ops") == cli
    taken_over = await keys.find("s-n2")
    assert taken_over is not None
    assert taken_over.key_id == named.key_id
    assert (taken_over.tenant, taken_over.role) == ("globex", "admin")
    assert [k.name for k in await keys.list_keys()] == ["kept", "named", "ops"]

    await keys.seed([])
    assert await keys.list_keys() == [cli]


@pytest.mark.anyio
async def test_seeding_can_swap_two_keys_secrets_in_one_go(storage: Storage) -> None:
    """Two seeded keys may exchange secrets (and a seed may take the secret a CLI key had): the
    seed lands as one consistent change, each secret finding the key that now holds it."""
    keys = storage.keys
    cli = await keys.create(
        name="laptop", tenant="acme", role="viewer", secret="s-3", rpm=None, source="cli"
    )
    await keys.seed(
        [KeySeed("one", "acme", "operator", "s-1"), KeySeed("two", "acme", "admin", "s-2")]
    )
    one, two = await keys.find("s-1"), await keys.find("s-2")
    assert one is not None and two is not None
    await keys.seed(
        [
            KeySeed("one", "acme", "operator", "s-2"),
            KeySeed("two", "acme", "admin", "s-3"),
        ]
    )
    assert await keys.find("s-2") == one
    assert await keys.find("s-3") == two
    assert await keys.find("s-1") is None
    # The CLI key whose secret a seed took can no longer be used, but still exists.
    assert [k.key_id for k in await keys.list_keys()] == [cli.key_id, one.key_id, two.key_id]
    held = await keys.by_secret_hashes()
    assert (held[hash_secret("s-2")], held[hash_secret("s-3")]) == (one, two)
    assert hash_secret("s-1") not in held


@pytest.mark.anyio
async def test_request_counts_add_up_and_counts_of_deleted_keys_are_dropped(
    storage: Storage,
) -> None:
    """add_requests adds to each key's stored count; counts for key ids that do not exist (a key
    deleted meanwhile) are dropped, and zero counts store nothing."""
    keys = storage.keys
    a = await keys.create(name="a", tenant="t", role="admin", secret="s-a", rpm=None, source="cli")
    b = await keys.create(name="b", tenant="t", role="admin", secret="s-b", rpm=None, source="cli")
    assert await keys.requests() == {}
    await keys.add_requests({a.key_id: 5, b.key_id: 0, "no-such-key": 9})
    await keys.add_requests({a.key_id: 2, b.key_id: 1})
    await keys.add_requests({})
    assert await keys.requests() == {a.key_id: 7, b.key_id: 1}


@pytest.mark.anyio
async def test_run_totals_sum_the_stored_usage_of_each_keys_runs(storage: Storage) -> None:
    """run_totals counts the runs each key created and sums their stored usage (missing fields
    count as zero), as the latest stored summary says; runs without a creator are left out."""
    store = storage.ledger
    assert await storage.keys.run_totals() == {}
    one, two, three, anonymous = (Chain(run_id_at(i)) for i in range(4))
    await create(store, one, created_by="k1", summary={"usage": _usage(10, 20, 3, 400)})
    await create(store, two, created_by="k1", summary={"usage": {"input_tokens": 5}})
    await create(store, three, created_by="k2", summary={"usage": _usage(1, 2, 3, 4)})
    await create(store, anonymous, summary={"usage": _usage(100, 100, 100, 100)})
    assert await storage.keys.run_totals() == {
        "k1": RunTotals(
            runs=2, input_tokens=15, output_tokens=20, tool_calls=3, usd_millicents=400
        ),
        "k2": RunTotals(runs=1, input_tokens=1, output_tokens=2, tool_calls=3, usd_millicents=4),
    }
    # A large usage sums without overflow or rounding.
    big = Chain(run_id_at(5))
    await create(store, big, created_by="k2", summary={"usage": _usage(2**40, 0, 0, 2**41)})
    totals = await storage.keys.run_totals()
    assert totals["k2"] == RunTotals(2, 2**40 + 1, 2, 3, 2**41 + 4)
    assert all(isinstance(v, int) for v in (totals["k2"].input_tokens, totals["k1"].runs))
