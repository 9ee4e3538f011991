"""`world/at` through the runtime equals a fold from scratch of the stored ledger, at every seq.

A scripted mock run proposes a few hundred random `kv_set` intents (with some invalid ones that
are rejected and some `kv_get` reads) over a small key space, with world checkpoints made every
few entries. For every seq of the finished run, `Runtime.world(run_id, None, seq)` (which folds
forward from the nearest checkpoint) must equal a fold of the ledger rows 0..seq into a fresh
world.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

import thymos.runtime._state
from thymos.core import ChainVerifier, EntryKind, World, deltas_of, parse_envelope
from thymos.runtime import Runtime, StartRun
from thymos.storage import SqliteLedgerStore

from ._runs import all_rows, finish

KEYS = ("alpha", "beta", "gamma", "delta", "epsilon")
CHECKPOINT_EVERY = 8


def random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(7 if depth < 2 else 5)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.randint(-(2**53) + 1, 2**53 - 1)
    if choice == 3:
        return rng.uniform(-1e6, 1e6)
    if choice == 4:
        return "".join(rng.choice("ab\u00e9\u4e2d\U0001f600 \n") for _ in range(rng.randrange(6)))
    if choice == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randrange(3))}


def random_script(rng: random.Random, intents_total: int) -> list[dict[str, Any]]:
    """Turns of 1-6 intents: mostly kv_set, some kv_get, some rejected (no value, bad key)."""
    script: list[dict[str, Any]] = []
    remaining = intents_total
    while remaining > 0:
        count = min(remaining, rng.randint(1, 6))
        remaining -= count
        intents: list[dict[str, Any]] = []
        for _ in range(count):
            roll = rng.random()
            key = rng.choice(KEYS)
            if roll < 0.75:
                intents.append({"tool": "kv_set", "args": {"key": key, "value": random_value(rng)}})
            elif roll < 0.85:
                intents.append({"tool": "kv_get", "args": {"key": key}})
            elif roll < 0.95:
                intents.append({"tool": "kv_set", "args": {"key": key}})  # invalid: no value
            else:
                intents.append({"tool": "no_such_tool", "args": {}})
        script.append({"intents": intents})
    script.append({"final": "done"})
    return script


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [7, 2024])
async def test_world_at_every_seq_equals_a_fold_from_scratch(
    seed: int,
    runtime: Runtime,
    store: SqliteLedgerStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For every seq of a run with several checkpoints, `world(run, seq)` (checkpoint + fold
    forward) has the same resources and hash as a fresh world folded from ledger rows 0..seq."""
    monkeypatch.setattr(thymos.runtime._state, "CHECKPOINT_INTERVAL", CHECKPOINT_EVERY)
    rng = random.Random(seed)
    script = random_script(rng, intents_total=300)
    record, _ = await runtime.start_run(
        StartRun(
            task="set keys at random",
            max_steps=len(script),
            tool_scopes=["kv_*"],
            script=script,
        ),
        tenant="default",
    )
    view = await finish(runtime, record.run_id)
    assert view["summary"]["terminated_by"] == "final_answer", view
    assert view["summary"]["commits"] > 100
    assert view["summary"]["rejections"] > 0

    rows = await all_rows(store, record.run_id)
    head = rows[-1].seq
    assert head == view["summary"]["head_seq"]
    checkpoint_seqs = set()
    for seq in range(0, head + 1, CHECKPOINT_EVERY):
        checkpoint = await store.latest_checkpoint(record.run_id, at_or_before=seq)
        if checkpoint is not None:
            checkpoint_seqs.add(checkpoint.seq)
    assert len(checkpoint_seqs) >= 5, "the property must exercise several checkpoints"

    verifier = ChainVerifier(record.run_id)
    scratch = World()
    for row in rows:
        assert verifier.check(row) is not None
        entry = parse_envelope(row.raw, run_id=record.run_id, seq=row.seq)
        if entry.kind == EntryKind.COMMIT:
            scratch.apply_all(deltas_of(entry.body))
        at = await runtime.world(record.run_id, None, row.seq)
        assert at["seq"] == row.seq
        assert at["world_hash"] == scratch.hash, f"world hash differs at seq {row.seq}"
        assert at["resources"] == [r.as_dict() for r in scratch.resources()]
        # The scratch world is a fold of deltas; its hash must also equal a fold of its resources.
        assert World.from_resources(list(scratch.resources())).hash == scratch.hash
    assert verifier.verified

    report = await runtime.replay(record.run_id, None, require_compiler=None, require_policy=None)
    assert report["verified"], report["failures"]
    assert report["world_hash"] == scratch.hash
    assert report["world_matches"]


@pytest.mark.anyio
async def test_world_of_an_active_run_at_head_is_its_live_projection(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a run is active, `world(run, None)` answers from the live projection, and it
    agrees with the stored fold once the run has finished."""
    monkeypatch.setattr(thymos.runtime._state, "CHECKPOINT_INTERVAL", CHECKPOINT_EVERY)
    script: list[dict[str, Any]] = [
        {"tool": "kv_set", "args": {"key": "a", "value": 1}},
        {"tool": "kv_set", "args": {"key": "a", "value": 2}},
        {"sleep_ms": 200, "text": "thinking"},
        {"final": "ok"},
    ]
    record, _ = await runtime.start_run(
        StartRun(task="set a", max_steps=5, tool_scopes=["kv_set"], script=script),
        tenant="default",
    )
    # The third turn sleeps, so the run is still active after the second commit.
    seen: dict[str, Any] | None = None
    while runtime.active(record.run_id) is not None:
        current = await runtime.world(record.run_id, None, None)
        if current["resources"] and current["resources"][0]["value"] == 2:
            seen = current
            break
        await anyio.sleep(0.005)
    assert seen is not None, "the run ended before the live world was observed"
    await finish(runtime, record.run_id)
    final = await runtime.world(record.run_id, None, None)
    assert final["resources"] == [{"kind": "kv", "id": "a", "version": 2, "value": 2}]
    assert seen["world_hash"] == final["world_hash"]
