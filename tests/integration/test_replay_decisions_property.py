"""Property: for random governed runs (commits, rejections of every kind, suspensions, quorum
approvals and vetoes), replay's decisions equal the live decisions, entry by entry.

Each example drives a real Runtime on its own SQLite file under a policy with a quorum channel
and a forbid; the votes for each suspension are drawn too (a quorum of approvals, or some
approvals then a veto). The live decisions are what the actor recorded; replay decides every
decision entry again from the exported ledger alone.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.governed import Vote, drive, governed_policy
from thymos.core import EntryKind
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.runtime._replay import bundle_replayer, read_bundle
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

KEYS = ["colour", "prod-db", "prod-cache", "my-secret", "size"]

intents = st.one_of(
    st.builds(
        lambda key, value: {"tool": "kv_set", "args": {"key": key, "value": value}},
        st.sampled_from(KEYS),
        st.integers(0, 9),
    ),
    st.builds(lambda key: {"tool": "kv_set", "args": {"key": key}}, st.sampled_from(KEYS)),
    st.builds(lambda key: {"tool": "kv_get", "args": {"key": key}}, st.sampled_from(KEYS)),
    st.just({"tool": "fs_read", "args": {"path": "missing.txt"}}),
    st.just({"tool": "grep", "args": {"pattern": "x"}}),
    st.just({"tool": "no_such_tool", "args": {}}),
)
turns = st.lists(
    st.one_of(intents, st.lists(intents, min_size=2, max_size=3).map(lambda i: {"intents": i})),
    min_size=1,
    max_size=8,
)
vote_plans = st.lists(st.integers(0, 2), min_size=8, max_size=8)
"""Per suspension: how many approvals come before a veto (2 = approved by the quorum)."""


def _votes(plan: list[int]) -> list[list[Vote]]:
    approvers = ["alice", "bob"]
    return [
        [(approvers[i], True) for i in range(approvals)]
        + ([("carol", False)] if approvals < 2 else [])
        for approvals in plan
    ]


def _recorded(entry_kind: str, body: dict[str, Any]) -> str:
    """The live decision an entry records, in replay's vocabulary."""
    if entry_kind == EntryKind.SUSPENSION:
        return f"suspend:{body['channel']}"
    if entry_kind == EntryKind.REJECTION:
        return "deny" if body["reason"] == "approval_denied" else f"reject:{body['reason']}"
    return "execute"


async def _live_and_replayed(script: list[dict[str, Any]], plan: list[int]) -> tuple[Any, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "workspace").mkdir()
        store = SqliteLedgerStore(folder / "ledger.sqlite3")
        await store.open()
        try:
            runtime = Runtime(
                store=store,
                tools=builtin_tools(),
                config=RuntimeConfig(workspace=folder / "workspace"),
                policy=governed_policy(),
            )
            record, _ = await runtime.start_run(
                StartRun(
                    task="random", max_steps=20, tool_scopes=["kv_*", "fs_read"], script=script
                ),
                tenant="default",
            )
            await drive(runtime, record.run_id, _votes(plan))
            chunks = await runtime.export(record.run_id, None, -1, proof=True)
            bundle = read_bundle(b"".join([c async for c in chunks]).splitlines())
            await runtime.shutdown(5.0)
        finally:
            await store.close()
    live = []
    for row in bundle.rows:
        envelope = orjson.loads(row.raw)
        if envelope["kind"] in (
            EntryKind.SUSPENSION,
            EntryKind.REJECTION,
            EntryKind.COMMIT,
            EntryKind.TOOL_FAILURE,
        ):
            live.append((row.seq, _recorded(envelope["kind"], envelope["body"])))
    replayer = bundle_replayer(bundle, root=runtime.root.public_key, record_decisions=True)
    return live, replayer


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(script=turns, plan=vote_plans)
def test_replay_decides_every_entry_as_the_live_run_did(
    script: list[dict[str, Any]], plan: list[int]
) -> None:
    live, replayer = asyncio.run(_live_and_replayed([*script, {"final": "done"}], plan))
    report = replayer.report()
    assert report["verified"] is True, report["failures"]
    assert replayer.decisions == live
