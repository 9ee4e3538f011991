"""Run control costs: how long a restarted server takes to resume the runs a crash interrupted.

A first runtime starts `RUNS` runs; each commits one `kv_set` and then thinks forever. The
database is then copied as it stands (SQLite's online backup: a consistent snapshot, exactly
what a process killed at that moment leaves on disk, every run still `running`). A second
runtime opens the copy, as a restarted server would, and the clock runs from opening the store
to the first resumed run's first step (its model turn) and to the last one's.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import biscuit_auth as biscuit

from thymos.cognition import CognitionContext, Emit, Turn
from thymos.core import Intent, RunSpec
from thymos.governance import new_root_key
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

RUNS = 100


class _Stuck:
    """Commits one `kv_set`, then thinks until cancelled (the crash happens meanwhile)."""

    live = False

    def __init__(self, thinking: asyncio.Event) -> None:
        self.thinking = thinking

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        if context.turns_taken == 0:
            return Turn(intents=(Intent("kv_set", {"key": "k", "value": 1}, "c0"),))
        self.thinking.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class _Resumed:
    """A resumed run's cognition: notes when the run's first resumed step asks it, then ends."""

    live = False

    def __init__(self, steps: list[float], all_stepped: asyncio.Event) -> None:
        self.steps = steps
        self.all_stepped = all_stepped

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        self.steps.append(time.perf_counter())
        if len(self.steps) == RUNS:
            self.all_stepped.set()
        return Turn(final="resumed")


async def _crashed_database(data_dir: Path, root: biscuit.KeyPair) -> Path:
    """A database holding `RUNS` runs left running, as a killed server leaves it."""
    live_path, copy_path = data_dir / "before-crash.sqlite3", data_dir / "after-crash.sqlite3"
    store = SqliteLedgerStore(live_path)
    await store.open()
    events = [asyncio.Event() for _ in range(RUNS)]
    stuck = iter(events)
    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=data_dir, runs_active_max=RUNS + 1),
        root=root,
        provider_factory=lambda spec: _Stuck(next(stuck)),
    )
    try:
        for index in range(RUNS):
            await runtime.start_run(
                StartRun(task=f"crash {index}", tool_scopes=["kv_set"]), tenant="bench"
            )
        for event in events:
            await event.wait()
        await asyncio.to_thread(_snapshot, live_path, copy_path)
    finally:
        await runtime.shutdown(0.0)
        await store.close()
    return copy_path


def _snapshot(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as live, sqlite3.connect(target) as copy:
        live.backup(copy)
    live.close()
    copy.close()


async def recovery_figures(data_dir: Path) -> dict[str, Any]:
    root = new_root_key()  # one server's key, before and after its crash
    path = await _crashed_database(data_dir, root)
    steps: list[float] = []
    all_stepped = asyncio.Event()

    def factory(spec: RunSpec) -> _Resumed:
        return _Resumed(steps, all_stepped)

    started = time.perf_counter()
    store = SqliteLedgerStore(path)
    await store.open()
    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=data_dir, runs_active_max=RUNS + 1),
        root=root,
        provider_factory=factory,
    )
    try:
        interrupted = await runtime.recover()
        assert interrupted == RUNS, interrupted
        await all_stepped.wait()
        first, last = min(steps) - started, max(steps) - started
        return {
            "recovery_runs": RUNS,
            "recovery_first_step_ms": round(first * 1000, 1),
            "recovery_all_steps_ms": round(last * 1000, 1),
        }
    finally:
        await runtime.shutdown(5.0)
        await store.close()
