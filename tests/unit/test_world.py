"""Properties of the world projection: the incremental LtHash, checkpoints and delta conflicts.

The world is a fold of commit deltas. Whatever path reaches a set of resources (incrementally,
from scratch, from a checkpoint folded forward, in any creation order) must give the same
resources and the same hash, and a delta that does not apply must change nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thymos.core import Delta, DeltaConflict, Resource, World, deltas_of
from thymos.core._world import LANES, _lanes_add, _lanes_sub

from ._strategies import json_values

KINDS = ("kv", "file")
IDS = ("a", "b", "c")
"""A small key space, so creates, replaces and retracts of the same resource collide often."""

json_value = json_values(max_leaves=6)

# An abstract step: which resource, what to do if it exists ("set" replaces, "drop" retracts; an
# absent resource is always created) and the value to write.
abstract_steps = st.lists(
    st.tuples(
        st.sampled_from(KINDS), st.sampled_from(IDS), st.sampled_from(("set", "drop")), json_value
    ),
    max_size=30,
)


def valid_deltas(steps: list[tuple[str, str, str, Any]], start: World | None = None) -> list[Delta]:
    """Turn abstract steps into deltas that apply in order to `start` (default: an empty world),
    tracking versions in a plain dict as the model."""
    versions = {(r.kind, r.id): r.version for r in (start.resources() if start else ())}
    deltas: list[Delta] = []
    for kind, ident, action, value in steps:
        current = versions.get((kind, ident))
        if current is None:
            deltas.append(Delta("create", kind, ident, value))
            versions[(kind, ident)] = 1
        elif action == "set":
            deltas.append(Delta("replace", kind, ident, value, expected_version=current))
            versions[(kind, ident)] = current + 1
        else:
            deltas.append(Delta("retract", kind, ident, expected_version=current))
            del versions[(kind, ident)]
    return deltas


def state_of(world: World) -> list[dict[str, Any]]:
    return [resource.as_dict() for resource in world.resources()]


def fold(deltas: list[Delta], world: World | None = None) -> World:
    world = World() if world is None else world
    for delta in deltas:
        world.apply(delta)
    return world


@given(steps=abstract_steps, data=st.data())
def test_incremental_scratch_and_checkpoint_folds_agree(
    steps: list[tuple[str, str, str, Any]], data: st.DataObject
) -> None:
    """The incremental world, a fold from scratch of its resources, and a world restored from a
    snapshot at any intermediate point then folded forward have the same resources and hash."""
    deltas = valid_deltas(steps)
    cut = data.draw(st.integers(min_value=0, max_value=len(deltas)), label="snapshot point")

    incremental = fold(deltas)
    scratch = World.from_resources(list(incremental.resources()))
    snapshot = fold(deltas[:cut]).snapshot()
    restored = fold(deltas[cut:], World.restore(snapshot))
    lazy = fold(deltas, World(lazy_hash=True))  # replay's fold: hashed once, at the end

    assert state_of(scratch) == state_of(incremental)
    assert state_of(restored) == state_of(incremental)
    assert state_of(lazy) == state_of(incremental)
    assert scratch.hash == incremental.hash
    assert restored.hash == incremental.hash
    assert lazy.hash == incremental.hash
    assert len(restored) == len(incremental)


@given(steps=abstract_steps)
def test_apply_all_matches_one_by_one_application(steps: list[tuple[str, str, str, Any]]) -> None:
    """Applying a valid batch atomically gives the same world as applying its deltas in turn."""
    deltas = valid_deltas(steps)
    batch = World()
    batch.apply_all(deltas)
    assert state_of(batch) == state_of(fold(deltas))
    assert batch.hash == fold(deltas).hash


resource_sets = st.dictionaries(
    st.tuples(st.sampled_from(KINDS), st.text(max_size=3)),
    st.tuples(st.integers(min_value=1, max_value=5), json_value),
    max_size=8,
)


@given(resources=resource_sets, data=st.data())
def test_hash_is_independent_of_creation_order(
    resources: dict[tuple[str, str], tuple[int, Any]], data: st.DataObject
) -> None:
    """The world hash depends only on the set of resources, not on the order they arrived in."""
    items = [
        Resource(kind, ident, version, value)
        for (kind, ident), (version, value) in resources.items()
    ]
    shuffled = data.draw(st.permutations(items), label="order")
    created = World()
    for kind, ident in data.draw(st.permutations(sorted(resources)), label="create order"):
        created.apply(Delta("create", kind, ident, resources[(kind, ident)][1]))
    assert World.from_resources(items).hash == World.from_resources(shuffled).hash
    recreated = World()
    for kind, ident in sorted(resources):
        recreated.apply(Delta("create", kind, ident, resources[(kind, ident)][1]))
    assert created.hash == recreated.hash
    assert state_of(created) == state_of(recreated)


@given(steps=abstract_steps)
def test_retracting_everything_returns_to_the_empty_hash(
    steps: list[tuple[str, str, str, Any]],
) -> None:
    """Lattice subtraction exactly undoes addition: retracting every resource gives the empty
    world's hash, whatever history led there."""
    world = fold(valid_deltas(steps))
    for resource in list(world.resources()):
        world.apply(Delta("retract", resource.kind, resource.id, expected_version=resource.version))
    assert len(world) == 0
    assert world.hash == World().hash


def test_hash_distinguishes_value_version_and_identity() -> None:
    """Worlds that differ in one resource's value, version, kind or id have different hashes."""
    base = World.from_resources([Resource("kv", "a", 1, 1)]).hash
    variants = [
        [Resource("kv", "a", 1, 2)],
        [Resource("kv", "a", 2, 1)],
        [Resource("kx", "a", 1, 1)],
        [Resource("kv", "b", 1, 1)],
        [],
    ]
    hashes = {World.from_resources(v).hash for v in variants}
    assert base not in hashes
    assert len(hashes) == len(variants)


lane_values = st.integers(min_value=0, max_value=2 ** (16 * LANES) - 1)


def naive_lanes(a: int, b: int, sign: int) -> int:
    lanes_a = a.to_bytes(2 * LANES, "little")
    lanes_b = b.to_bytes(2 * LANES, "little")
    out = bytearray()
    for i in range(0, 2 * LANES, 2):
        x = int.from_bytes(lanes_a[i : i + 2], "little")
        y = int.from_bytes(lanes_b[i : i + 2], "little")
        out += ((x + sign * y) % 2**16).to_bytes(2, "little")
    return int.from_bytes(bytes(out), "little")


def _lanes(value: int) -> Any:
    return np.frombuffer(value.to_bytes(2 * LANES, "little"), dtype="<u2").copy()


def _value(lanes: Any) -> int:
    return int.from_bytes(lanes.tobytes(), "little")


@given(a=lane_values, b=lane_values)
def test_lane_arithmetic_matches_per_lane_arithmetic(a: int, b: int) -> None:
    """The lattice's add and subtract (numpy, in place) equal per-lane arithmetic modulo 2**16,
    with no carry or borrow crossing lanes (the property the LtHash's order independence rests
    on), and the lanes are little-endian whatever the machine."""
    assert _value(_lanes_add(_lanes(a), _lanes(b))) == naive_lanes(a, b, 1)
    assert _value(_lanes_sub(_lanes(a), _lanes(b))) == naive_lanes(a, b, -1)


def test_a_copy_does_not_share_its_lattice() -> None:
    """The lattice is updated in place, so a copy (a probe of several deltas) has its own."""
    world = World()
    world.apply(Delta("create", "kv", "a", 1))
    before = world.hash
    probe = world.copy()
    probe.apply(Delta("replace", "kv", "a", 2, expected_version=1))
    assert world.hash == before
    assert probe.hash != before
    assert World.restore(world.snapshot()).hash == before


def conflicting_deltas(world: World) -> list[Delta]:
    """Deltas that cannot apply to `world`: one of each conflict for each key in the key space."""
    conflicts: list[Delta] = []
    for kind in KINDS:
        for ident in IDS:
            current = world.get(kind, ident)
            if current is None:
                conflicts.append(Delta("replace", kind, ident, 1, expected_version=1))
                conflicts.append(Delta("retract", kind, ident, expected_version=1))
            else:
                conflicts.append(Delta("create", kind, ident, 1))
                wrong = current.version + 1
                conflicts.append(Delta("replace", kind, ident, 1, expected_version=wrong))
                conflicts.append(Delta("retract", kind, ident, expected_version=wrong))
                conflicts.append(Delta("replace", kind, ident, 1, expected_version=0))
    return conflicts


@given(steps=abstract_steps, data=st.data())
def test_conflicting_delta_raises_and_leaves_world_unchanged(
    steps: list[tuple[str, str, str, Any]], data: st.DataObject
) -> None:
    """Creating an existing resource, replacing or retracting with the wrong version, or touching
    a missing resource raises DeltaConflict and changes neither resources nor hash."""
    world = fold(valid_deltas(steps))
    before_state, before_hash = state_of(world), world.hash
    conflict = data.draw(st.sampled_from(conflicting_deltas(world)), label="conflict")
    with pytest.raises(DeltaConflict):
        world.check(conflict)
    with pytest.raises(DeltaConflict):
        world.apply(conflict)
    assert state_of(world) == before_state
    assert world.hash == before_hash


@given(prefix=abstract_steps, batch=abstract_steps, data=st.data())
def test_apply_all_is_atomic_on_a_conflict(
    prefix: list[tuple[str, str, str, Any]],
    batch: list[tuple[str, str, str, Any]],
    data: st.DataObject,
) -> None:
    """A batch whose last delta conflicts applies nothing: apply_all and check_all both raise
    DeltaConflict and the world keeps its resources and hash."""
    world = fold(valid_deltas(prefix))
    before_state, before_hash = state_of(world), world.hash
    # Valid deltas for the world as it stands, then one that conflicts after them.
    good = valid_deltas(batch, world)
    probe = fold(good, world.copy())
    conflict = data.draw(st.sampled_from(conflicting_deltas(probe)), label="conflict")
    staged = [*good, conflict]
    with pytest.raises(DeltaConflict):
        world.check_all(staged)
    with pytest.raises(DeltaConflict):
        world.apply_all(staged)
    assert state_of(world) == before_state
    assert world.hash == before_hash


@given(steps=abstract_steps)
def test_delta_dict_round_trip_preserves_the_delta(steps: list[tuple[str, str, str, Any]]) -> None:
    """A delta recorded as a dict in a commit body parses back to the same delta."""
    deltas = valid_deltas(steps)
    body = {"deltas": [d.as_dict() for d in deltas]}
    assert deltas_of(body) == deltas


@pytest.mark.parametrize(
    "body",
    [
        {"deltas": "nope"},
        {"deltas": [1]},
        {"deltas": [{"op": "upsert", "kind": "kv", "id": "a"}]},
        {"deltas": [{"op": "create", "kind": 1, "id": "a"}]},
        {"deltas": [{"op": "replace", "kind": "kv", "id": "a", "value": 1}]},
        {"deltas": [{"op": "retract", "kind": "kv", "id": "a", "expected_version": True}]},
    ],
)
def test_malformed_recorded_deltas_are_conflicts(body: dict[str, Any]) -> None:
    """A commit body whose deltas do not parse raises DeltaConflict rather than a crash."""
    with pytest.raises(DeltaConflict):
        deltas_of(body)


def test_oversized_resource_names_are_refused() -> None:
    """Resource kinds and ids longer than the named limit are refused as conflicts."""
    with pytest.raises(DeltaConflict):
        World().apply(Delta("create", "kv", "x" * 513, 1))
