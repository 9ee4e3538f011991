"""What a run waiting for approval costs: memory per parked run, and the time to wake one.

One runtime on a SQLite file in a temporary folder, whose policy makes `kv_set` wait for an
approval on channel `ops`. A first batch of runs is started and parked, then `runs` more;
each proposes one `kv_set` and parks (no actor, no slot, its state in the store). The resident
memory of the process is read after the first batch and once every run is parked (after a
garbage collection each time), and the difference is divided by `runs`: what one more parked run
keeps. Then a sample of them is approved one at a time: the time from
the vote to the run's end is what waking a parked run costs (its ledger folded and verified, an
actor started, the call executed, the final answer recorded).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from pathlib import Path
from typing import Any

from thymos.governance import PolicyFile, PolicySet, default_policy_files
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

APPROVE_KV_SET = (
    '@id("kv-set-needs-ops")\n@approval("ops")\n'
    'permit(principal, action, resource == Thymos::Tool::"kv_set");\n'
)
WAKE_SAMPLE = 50
START_BATCH = 200
"""Runs started together (each start is awaited; a batch is started concurrently)."""


def _rss_bytes() -> int:
    """The process's resident memory now (Linux: /proc/self/statm, in pages)."""
    import os

    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


async def _parked(data_dir: Path, runs: int) -> dict[str, Any]:
    store = SqliteLedgerStore(data_dir / "parked.sqlite3")
    await store.open()
    policy = PolicySet([*default_policy_files(), PolicyFile("ops.cedar", APPROVE_KV_SET)])
    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=data_dir, runs_active_max=START_BATCH + 8),
        policy=policy,
    )
    await runtime.recover()
    script: list[dict[str, Any]] = [
        {"tool": "kv_set", "args": {"key": "k", "value": 1}},
        {"final": "ok"},
    ]
    try:
        # One batch first, so what every run shares (code paths, caches, the allocator's arenas
        # at their high-water mark of a batch of active runs) is there before counting: what
        # grows after it is what parked runs keep.
        run_ids: list[str] = []
        before = 0
        started = time.perf_counter()
        for offset in range(0, runs + START_BATCH, START_BATCH):
            if offset == START_BATCH:
                gc.collect()
                before = _rss_bytes()
                started = time.perf_counter()
            batch = await asyncio.gather(
                *(
                    runtime.start_run(
                        StartRun(
                            task=f"park {offset + i}", tool_scopes=["kv_set"], script=tuple(script)
                        ),
                        tenant="bench",
                    )
                    for i in range(min(START_BATCH, runs + START_BATCH - offset))
                )
            )
            ids = [record.run_id for record, _ in batch]
            await _until_parked(runtime, ids)
            run_ids.extend(ids)
        parking_s = time.perf_counter() - started
        gc.collect()
        after = _rss_bytes()
        waiting = await runtime.pending_approvals(None, "ops")
        assert len(waiting) == runs + START_BATCH, (len(waiting), runs)
        assert not runtime._active, "every waiting run is parked"
        wakes: list[float] = []
        for run_id in run_ids[:WAKE_SAMPLE]:
            voted = time.perf_counter()
            await runtime.approve(
                run_id,
                None,
                channel="ops",
                approve=True,
                proposal_id=None,
                reason=None,
                approver="bench",
                key_id=None,
            )
            active = runtime.active(run_id)
            if active is not None and active.task is not None:
                await active.task
            wakes.append(time.perf_counter() - voted)
            record = await store.get_run(run_id)
            assert record is not None and record.status == "completed", record
    finally:
        await runtime.shutdown(5)
        await store.close()
    return {
        "parked_runs": runs,
        "parked_bytes_per_run": round((after - before) / runs),
        "parked_waiting_total": runs + START_BATCH,
        "parked_rss_mib": round(after / 2**20, 1),
        "parked_start_runs_per_s": round(runs / parking_s, 1),
        "parked_wake_to_end_ms": round(statistics.median(wakes) * 1000, 2),
    }


async def _until_parked(runtime: Runtime, run_ids: list[str]) -> None:
    """Wait until each run waits for approval with no actor."""
    for run_id in run_ids:
        while True:
            active = runtime.active(run_id)
            if active is None:
                record = await runtime.store.get_run(run_id)
                assert record is not None
                if record.status == "waiting_approval":
                    break
                raise RuntimeError(f"run {run_id} ended {record.status} instead of waiting")
            if active.task is not None:
                await active.task


def parked_runs(data_dir: Path, runs: int) -> dict[str, Any]:
    return asyncio.run(_parked(data_dir, runs))
