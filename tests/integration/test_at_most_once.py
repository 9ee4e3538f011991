"""At most once: an external tool's execution is on record, durably, before it runs, and replay
refuses an external commit without that record."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.forgery import Export, reseal
from thymos.core import Effect
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.runtime._replay import read_bundle, replay_bundle
from thymos.storage import SqliteLedgerStore
from thymos.tools import ToolContext, ToolOutcome, builtin_tools

from ._runs import all_rows, finish, tool_spec


class Notify:
    """An external tool that looks, as it runs, at what the ledger already holds."""

    spec = tool_spec("notify", Effect.EXTERNAL)

    def __init__(self, store: SqliteLedgerStore) -> None:
        self.store = store
        self.seen: list[str] = []

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        rows = await all_rows(self.store, ctx.run_id)
        self.seen.append(rows[-1].raw.decode())
        return ToolOutcome({"sent": True})


@pytest.mark.anyio
async def test_an_external_call_is_recorded_durably_before_it_runs(
    store: SqliteLedgerStore, workspace: Path
) -> None:
    notify = Notify(store)
    registry = builtin_tools()
    registry.register(notify)
    runtime = Runtime(store=store, tools=registry, config=RuntimeConfig(workspace=workspace))
    record, _ = await runtime.start_run(
        StartRun(task="n", tool_scopes=["notify"], script=[{"tool": "notify", "args": {}}]),
        tenant="t",
    )
    await finish(runtime, record.run_id)
    assert len(notify.seen) == 1
    assert '"kind":"execution_started"' in notify.seen[0]  # stored before the tool ran
    chunks = await runtime.export(record.run_id, None, -1, proof=True)
    data = b"".join([c async for c in chunks])
    assert replay_bundle(read_bundle(data.splitlines()), root=runtime.root.public_key)["verified"]

    export = Export.parse(data)
    stripped = [e for e in export.envelopes if e["kind"] != "execution_started"]
    forged = export.assemble(reseal(stripped))
    report = replay_bundle(
        read_bundle(forged.splitlines()), root=runtime.root.public_key, allow_unsigned_tail=True
    )
    commit = next(e["seq"] for e in Export.parse(forged).envelopes if e["kind"] == "commit")
    assert (commit, "execution_unannounced") in {(f["seq"], f["code"]) for f in report["failures"]}
    await runtime.shutdown(5.0)
