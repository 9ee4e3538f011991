"""The lean chain-and-usage loop over a stored run: the run's own summary when sound, and the
failure chain verification names when the stored bytes were edited in the file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.governed import drive, governed_policy
from thymos.core import verify_rows
from thymos.runtime import Runtime, RuntimeConfig, StartRun, chain_and_usage
from thymos.runtime._limits import REPLAY_PAGE_ROWS
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

from ._runs import all_rows

SUMMARY_FIELDS = (
    "status",
    "terminated_by",
    "steps_executed",
    "intents_submitted",
    "commits",
    "rejections",
    "failures",
    "usage",
    "max_steps",
    "head_seq",
    "head_id",
)


async def _governed_run(store: SqliteLedgerStore, workspace: Path) -> str:
    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=workspace),
        policy=governed_policy(),
    )
    many = [{"tool": "kv_set", "args": {"key": f"k{i % 7}", "value": i}} for i in range(700)]
    script: list[dict[str, Any]] = [
        {"intents": many},
        {"intents": many},
        {"tool": "kv_set", "args": {"key": "prod-db", "value": 1}},
        {"tool": "shell", "args": {"command": "true"}},
        {"final": "done"},
    ]
    record, _ = await runtime.start_run(
        StartRun(task="long", max_steps=10, tool_scopes=["kv_*"], script=script), tenant="t"
    )
    await drive(runtime, record.run_id, [[("alice", True), ("bob", True)]])
    await runtime.shutdown(5.0)
    return record.run_id


@pytest.mark.anyio
async def test_the_lean_loop_folds_a_stored_run_to_its_summary(
    store: SqliteLedgerStore, workspace: Path
) -> None:
    """Over several pages (votes, a rejection, a suspension, commits): verified, and the
    counters, usage, status and head are the stored run's summary."""
    run_id = await _governed_run(store, workspace)
    rows = await all_rows(store, run_id)
    assert len(rows) > 2 * REPLAY_PAGE_ROWS // 2
    fold = await chain_and_usage(store, run_id)
    assert fold.verified, fold.failures
    record = await store.get_run(run_id)
    assert record is not None
    shown = fold.usage.as_dict()
    assert {name: shown[name] for name in SUMMARY_FIELDS} == {
        name: record.summary[name] for name in SUMMARY_FIELDS
    }


@pytest.mark.anyio
async def test_the_lean_loop_names_bytes_edited_in_the_file(
    tmp_path: Path, workspace: Path
) -> None:
    """One stored envelope edited in the database file (a value changed, the id left): the lean
    loop fails it as `hash_mismatch` at that seq, exactly as chain verification does."""
    path = tmp_path / "ledger.sqlite3"
    store = SqliteLedgerStore(path)
    await store.open()
    try:
        run_id = await _governed_run(store, workspace)
        rows = await all_rows(store, run_id)
        target = next(row for row in rows if row.seq > 1500 and b'"value":3' in row.raw)
        conn = sqlite3.connect(path)
        conn.execute(
            "UPDATE entries SET envelope = ? WHERE run_id = ? AND seq = ?",
            (target.raw.replace(b'"value":3', b'"value":4', 1), run_id, target.seq),
        )
        conn.commit()
        conn.close()
        fold = await chain_and_usage(store, run_id)
        expected = [(f.seq, f.code) for f in verify_rows(run_id, await all_rows(store, run_id))]
        assert [(f.seq, f.code) for f in fold.failures] == expected
        assert expected[0] == (target.seq, "hash_mismatch")
    finally:
        await store.close()
