"""Governance under concurrency with every commit flushed to disk (`synchronous=full`).

For each count of concurrent runs, a fresh SQLite file opened with `synchronous=full` (each
transaction waits for the disk) holds that many runs started together, each proposing `turns`
turns of `intents` `kv_set` calls. The figure is the wall time from the first start to the last
end, divided by every intent of every run: what one intent costs the server when runs share it.
One run pays a flush for each of its writes; many runs share each flush (the SQLite writer
commits whatever is queued in one transaction), so the figure should fall as runs are added.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from thymos.core import RunSpec
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.storage import sqlite_storage
from thymos.tools import builtin_tools

TURNS = 20
INTENTS = 10


async def _one_count(data_dir: Path, runs: int) -> float:
    from ._main import _BenchCognition

    storage = sqlite_storage(data_dir / f"full-{runs}.sqlite3", synchronous="FULL")
    await storage.open()
    cognitions: dict[str, _BenchCognition] = {}

    def factory(spec: RunSpec) -> _BenchCognition:
        return cognitions.setdefault(spec.task, _BenchCognition([INTENTS] * TURNS))

    runtime = Runtime(
        store=storage.ledger,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=data_dir, runs_active_max=runs + 8),
        provider_factory=factory,
    )

    async def run(index: int) -> None:
        record, _ = await runtime.start_run(
            StartRun(task=f"run {index}", max_steps=TURNS + 1, tool_scopes=["kv_set"]),
            tenant="bench",
        )
        active = runtime.active(record.run_id)
        if active is not None and active.task is not None:
            await active.task

    try:
        await run(-1)  # warm-up: caches, the first checkpoints
        started = time.perf_counter()
        await asyncio.gather(*(run(i) for i in range(runs)))
        seconds = time.perf_counter() - started
    finally:
        await runtime.shutdown(1.0)
        await storage.close()
    return seconds / (runs * TURNS * INTENTS) * 1e6


def full_sync_concurrency(data_dir: Path, counts: tuple[int, ...] = (1, 16, 64)) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for runs in counts:
        figures[f"full_sync_us_per_intent_{runs}_runs"] = round(
            asyncio.run(_one_count(data_dir, runs)), 1
        )
    return figures
