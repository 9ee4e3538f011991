"""How the golden ledgers under `tests/unit/golden/` were made (run once; the files are committed).

    .venv/bin/python -m tests.unit._golden

It drives one scripted mock run through the real Runtime on a throwaway SQLite file, with a fixed
clock and fixed randomness, and writes the run's stored envelopes verbatim as JSON Lines (the
export format), the stored ids and the recorded world beside them, and a tampered copy. The
golden test never regenerates: it reads the committed bytes, so a change to the envelope, the
canonical encoding or the world hash that breaks old ledgers fails the test.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import orjson

from thymos.core import EntryKind, World, deltas_of, parse_envelope
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN_LEDGER = GOLDEN_DIR / "kv_run.jsonl"
GOLDEN_EXPECTED = GOLDEN_DIR / "kv_run.expected.json"
GOLDEN_TAMPERED = GOLDEN_DIR / "kv_run.tampered.jsonl"
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


def main() -> None:
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
    main()
