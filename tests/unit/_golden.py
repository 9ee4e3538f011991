"""How the golden ledgers under `tests/unit/golden/` were made (run once; the files are committed).

    .venv/bin/python -m tests.unit._golden governed

`governed` drives a scripted mock run under a policy with a quorum, a veto channel and a forbid
through the real Runtime on a throwaway SQLite file (fixed clock, randomness and root key), and
writes its `?proof=true` export (entries, the documents its decisions name, the signed heads)
and what it must replay to. `kv_run` is a ledger of body format 1, written by an earlier
release with `.venv/bin/python -m tests.unit._golden kv_run` (today's code writes format 2): it
is kept as it was, to show that old chains still verify.

The golden tests never regenerate: they read the committed bytes, so a change to the envelope,
the canonical encoding, the world hash or the decisions that breaks old ledgers fails them.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import biscuit_auth as biscuit
import orjson

from tests.governed import drive, governed_policy
from tests.policies import GOVERNED_INTENTS
from thymos.core import EntryKind, World, deltas_of, parse_envelope
from thymos.governance import key_pair, private_key_from_hex, public_key_hex
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.runtime._replay import read_bundle, replay_bundle
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN_LEDGER = GOLDEN_DIR / "kv_run.jsonl"
GOLDEN_EXPECTED = GOLDEN_DIR / "kv_run.expected.json"
GOLDEN_TAMPERED = GOLDEN_DIR / "kv_run.tampered.jsonl"
GOVERNED_LEDGER = GOLDEN_DIR / "governed_run.jsonl"
GOVERNED_EXPECTED = GOLDEN_DIR / "governed_run.expected.json"
GOLDEN_ROOT_KEY = "a1" * 32
"""The fixed root key of the golden runs (a test key, never a server's)."""
TAMPERED_SEQ = 5
"""The entry whose bytes the tampered copy edits (a commit: its recorded output is changed)."""

SCRIPT: list[dict[str, Any]] = [
    {"text": "I will record a few settings.", "usage": {"input_tokens": 12, "output_tokens": 7}},
    {
        "intents": [
            {"tool": "kv_set", "args": {"key": "colour", "value": "blue"}},
            {"tool": "kv_set", "args": {"key": "limits", "value": {"max": 3, "ratio": 0.25}}},
        ]
    },
    {"tool": "kv_set", "args": {"key": "colour"}},
    {"tool": "kv_set", "args": {"key": "colour", "value": "gr\u00fcn \U0001f33f"}},
    {"tool": "kv_get", "args": {"key": "limits"}},
    {"tool": "fs_read", "args": {"path": "README.md"}},
    {"final": "Recorded colour and limits."},
]


class FixedClock:
    def __init__(self) -> None:
        self._us = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z

    def now_us(self) -> int:
        self._us += 1_000
        return self._us

    def monotonic_ms(self) -> int:
        return 0


def fixed_random(count: int) -> bytes:
    return bytes(range(count))


async def _record(folder: Path) -> tuple[str, list[tuple[int, str, bytes]]]:
    store = SqliteLedgerStore(folder / "ledger.sqlite3")
    await store.open()
    workspace = folder / "workspace"
    workspace.mkdir()
    try:
        runtime = Runtime(
            store=store,
            tools=builtin_tools(),
            config=RuntimeConfig(workspace=workspace),
            clock=FixedClock(),
            random=fixed_random,
        )
        record, _ = await runtime.start_run(
            StartRun(task="record settings", max_steps=10, tool_scopes=["kv_*"], script=SCRIPT),
            tenant="default",
        )
        active = runtime.active(record.run_id)
        assert active is not None and active.task is not None
        await active.task
        rows = await store.read_rows(record.run_id, after_seq=-1, limit=1000)
        return record.run_id, [(row.seq, row.id, row.raw) for row in rows]
    finally:
        await store.close()


GOVERNED_SCRIPT: list[dict[str, Any]] = [
    {
        "text": "Settings first, then production.",
        "usage": {"input_tokens": 40, "output_tokens": 12},
    },
    *GOVERNED_INTENTS,
    {"final": "Production database configured; the cache flush was vetoed."},
]
GOVERNED_VOTES = [[("alice", True), ("bob", True)], [("alice", True), ("carol", False)]]
"""prod-db: approved by a quorum of two; prod-cache: one approval, then a veto."""


def golden_root() -> biscuit.KeyPair:
    return key_pair(private_key_from_hex(GOLDEN_ROOT_KEY))


async def _record_governed(folder: Path) -> bytes:
    store = SqliteLedgerStore(folder / "ledger.sqlite3")
    await store.open()
    workspace = folder / "workspace"
    workspace.mkdir()
    try:
        runtime = Runtime(
            store=store,
            tools=builtin_tools(),
            config=RuntimeConfig(workspace=workspace),
            clock=FixedClock(),
            random=fixed_random,
            root=golden_root(),
            policy=governed_policy(),
        )
        record, _ = await runtime.start_run(
            StartRun(
                task="configure production",
                max_steps=20,
                tool_scopes=["kv_*", "fs_read"],
                script=GOVERNED_SCRIPT,
            ),
            tenant="default",
        )
        await drive(runtime, record.run_id, GOVERNED_VOTES)
        chunks = await runtime.export(record.run_id, None, -1, proof=True)
        return b"".join([chunk async for chunk in chunks])
    finally:
        await store.close()


def governed() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        export = asyncio.run(_record_governed(Path(tmp)))
    bundle = read_bundle(export.splitlines())
    report = replay_bundle(bundle, root=golden_root().public_key)
    assert report["verified"], report["failures"]
    GOVERNED_LEDGER.write_bytes(export)
    expected = {
        "run_id": bundle.run_id,
        "root_public_key": public_key_hex(golden_root().public_key),
        "head_seq": report["head_seq"],
        "head_id": report["head_id"],
        "world_hash": report["world_hash"],
        "kinds": report["kinds"],
        "signed_through": report["signed_through"],
    }
    GOVERNED_EXPECTED.write_bytes(orjson.dumps(expected, option=orjson.OPT_INDENT_2) + b"\n")


def kv_run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_id, rows = asyncio.run(_record(Path(tmp)))
    world = World()
    kinds: list[str] = []
    for seq, _, raw in rows:
        entry = parse_envelope(raw, run_id=run_id, seq=seq)
        kinds.append(entry.kind)
        if entry.kind == EntryKind.COMMIT:
            world.apply_all(deltas_of(entry.body))
    assert kinds[TAMPERED_SEQ] == EntryKind.COMMIT, kinds
    GOLDEN_DIR.mkdir(exist_ok=True)
    GOLDEN_LEDGER.write_bytes(b"".join(raw + b"\n" for _, _, raw in rows))
    expected = {
        "run_id": run_id,
        "ids": [ident for _, ident, _ in rows],
        "kinds": kinds,
        "head_id": rows[-1][1],
        "world_hash": world.hash,
        "resources": [r.as_dict() for r in world.resources()],
    }
    GOLDEN_EXPECTED.write_bytes(orjson.dumps(expected, option=orjson.OPT_INDENT_2) + b"\n")
    tampered = [raw for _, _, raw in rows]
    original = tampered[TAMPERED_SEQ]
    edited = original.replace(b'"version":1', b'"version":7', 1)
    assert edited != original
    tampered[TAMPERED_SEQ] = edited
    GOLDEN_TAMPERED.write_bytes(b"".join(raw + b"\n" for raw in tampered))


if __name__ == "__main__":
    {"governed": governed, "kv_run": kv_run}[sys.argv[1]]()
