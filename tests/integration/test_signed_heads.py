"""Signed heads: when the server signs, that each signature verifies under the root key and names
the stored entry, and that a restart refuses to continue a ledger cut below a signed head."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.governed import drive, governed_policy
from thymos.core import ErrorCode, HeadVerifier, RunStatus, ThymosError
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.runtime._limits import SIGNED_HEAD_INTERVAL
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

from ._runs import all_rows


def _runtime(store: SqliteLedgerStore, workspace: Path, root: Any = None) -> Runtime:
    return Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=workspace),
        policy=governed_policy(),
        root=root,
    )


async def _kinds_at(store: SqliteLedgerStore, run_id: str) -> dict[int, str]:
    return {row.seq: orjson.loads(row.raw)["kind"] for row in await all_rows(store, run_id)}


@pytest.mark.anyio
async def test_heads_are_signed_at_waiting_and_terminal_states_and_every_interval(
    store: SqliteLedgerStore, workspace: Path
) -> None:
    """A suspension, each vote while still waiting, and the end are signed; a long stretch of
    running entries is signed every `SIGNED_HEAD_INTERVAL` entries; every signature verifies and
    names the stored entry at its seq."""
    runtime = _runtime(store, workspace)
    many = [{"tool": "kv_get", "args": {"key": "k"}}] * 600
    script: list[dict[str, Any]] = [
        {"intents": many},
        {"intents": many},
        {"tool": "kv_set", "args": {"key": "prod-db", "value": 1}},
        {"final": "done"},
    ]
    record, _ = await runtime.start_run(
        StartRun(task="long", max_steps=10, tool_scopes=["kv_*"], script=script), tenant="t"
    )
    await drive(runtime, record.run_id, [[("alice", True), ("bob", True)]])
    rows = {row.seq: row for row in await all_rows(store, record.run_id)}
    kinds = await _kinds_at(store, record.run_id)
    heads = await store.signed_heads(record.run_id)
    verifier = HeadVerifier(bytes(runtime.root.public_key.to_bytes()))
    assert all(verifier.verifies(h) and rows[h.seq].id == h.entry_id for h in heads)
    signed = [h.seq for h in heads]
    suspension = next(seq for seq, kind in kinds.items() if kind == "suspension")
    votes = [seq for seq, kind in kinds.items() if kind == "approval"]
    assert suspension in signed and votes[0] in signed
    assert signed[-1] == max(rows)  # the end
    running = [seq for seq in signed if seq < suspension]
    assert running, "2400 running entries must be signed at least once"
    assert all(b - a <= SIGNED_HEAD_INTERVAL for a, b in zip([0, *running], running, strict=False))
    await runtime.shutdown(5.0)


@pytest.mark.anyio
async def test_a_restart_refuses_to_continue_a_ledger_cut_below_a_signed_head(
    tmp_path: Path, workspace: Path
) -> None:
    """A run waits for approval (its suspension is signed) when the server stops. Someone deletes
    the suspension from the file. The next start does not relaunch the run (which would append
    and sign after the cut, vouching for it): a vote is refused and nothing is appended."""
    path = tmp_path / "ledger.sqlite3"
    store = SqliteLedgerStore(path)
    await store.open()
    runtime = _runtime(store, workspace)
    script: list[dict[str, Any]] = [
        {"tool": "kv_set", "args": {"key": "prod-db", "value": 1}},
        {"final": "done"},
    ]
    record, _ = await runtime.start_run(
        StartRun(task="wait", max_steps=5, tool_scopes=["kv_*"], script=script), tenant="t"
    )
    active = runtime.active(record.run_id)
    assert active is not None
    async for batch in active.entries.follow(-1, timeout_s=60, strict=False):
        if any(entry.kind == "suspension" for _, entry in batch):
            break
    await active.actor.trajectory.flush()
    await runtime.shutdown(5.0)
    await store.close()
    root = runtime.root
    head = max(h.seq for h in await _signed(path, record.run_id))

    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM entries WHERE run_id = ? AND seq = ?", (record.run_id, head))
    conn.commit()
    conn.close()

    store = SqliteLedgerStore(path)
    await store.open()
    try:
        again = _runtime(store, workspace, root)
        await again.recover()
        assert again.active(record.run_id) is None
        with pytest.raises(ThymosError) as refused:
            await again.approve(
                record.run_id,
                None,
                channel="ops",
                approve=True,
                proposal_id=None,
                reason=None,
                approver="alice",
                key_id=None,
            )
        assert refused.value.code is ErrorCode.RUN_NOT_ACTIVE
        assert max(row.seq for row in await all_rows(store, record.run_id)) == head - 1
        stored = await store.get_run(record.run_id)
        assert stored is not None and stored.status == RunStatus.WAITING_APPROVAL.value
        report = await again.replay(record.run_id, None, require_compiler=None, require_policy=None)
        assert {f["code"] for f in report["failures"]} >= {"truncated"}
        await again.shutdown(5.0)
    finally:
        await store.close()


async def _signed(path: Path, run_id: str) -> list[Any]:
    store = SqliteLedgerStore(path)
    await store.open()
    try:
        return await store.signed_heads(run_id)
    finally:
        await store.close()
