"""A tool never outlives its run's authority to act: a shutdown (and later a cancel) or the end of
the wall-clock budget stops a tool mid-flight, kills a child process's whole group, and records
the call as a `tool_failure` with code `stopped` before the run ends."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from thymos.cognition import CognitionContext, Emit, Turn
from thymos.core import Budget
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.storage import SqliteLedgerStore
from thymos.tools import ToolContext, ToolOutcome, ToolRegistry, builtin_tools
from thymos.tools._pool import TOOL_THREADS
from thymos.tools._process import run_process

from ._runs import all_rows, finish, tool_spec


class Sleeper:
    """Starts `sleep 300` in a process group of its own and waits for it."""

    spec = tool_spec("sleeper")

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.pid = 0

    def _started(self, pid: int) -> None:
        self.pid = pid
        self.started.set()

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        done = await run_process(
            ["sh", "-c", "sleep 300; sleep 300"],
            cwd=ctx.workspace.root,
            env={"PATH": os.environ["PATH"]},
            timeout_s=600,
            started=self._started,
        )
        return ToolOutcome({"exit_code": done.exit_code})


class StepClock:
    """Real wall time for `now_us`; a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.ms = 0

    def now_us(self) -> int:
        return time.time_ns() // 1000

    def monotonic_ms(self) -> int:
        return self.ms


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _kinds(store: SqliteLedgerStore, run_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(row.raw) for row in await all_rows(store, run_id)]


@pytest.fixture
def sleeper() -> Sleeper:
    return Sleeper()


def _registry(tool: Sleeper) -> ToolRegistry:
    registry = builtin_tools()
    registry.register(tool)
    return registry


@pytest.mark.anyio
async def test_a_shutdown_stops_a_running_tool_and_kills_its_process_group(
    store: SqliteLedgerStore, workspace: Path, sleeper: Sleeper
) -> None:
    runtime = Runtime(
        store=store, tools=_registry(sleeper), config=RuntimeConfig(workspace=workspace)
    )
    record, _ = await runtime.start_run(
        StartRun(task="sleep", tool_scopes=["sleeper"], script=[{"tool": "sleeper", "args": {}}]),
        tenant="t",
    )
    await sleeper.started.wait()
    pid = sleeper.pid
    assert _alive(pid)
    await runtime.shutdown(30.0)
    assert not _alive(pid)
    entries = await _kinds(store, record.run_id)
    failure = entries[-2]
    assert failure["kind"] == "tool_failure"
    assert failure["body"]["error"]["code"] == "stopped"
    assert entries[-1]["body"]["terminated_by"] == "interrupted"
    report = await runtime.replay(record.run_id, None, require_compiler=None, require_policy=None)
    assert report["verified"], report["failures"]


@pytest.mark.anyio
async def test_the_wall_clock_budget_stops_a_running_tool(
    store: SqliteLedgerStore, workspace: Path, sleeper: Sleeper
) -> None:
    """The run's wall-clock budget is nearly spent when the tool starts (the monotonic clock is
    moved by hand): the tool is stopped when it runs out, not when the tool would have ended."""
    clock = StepClock()
    runtime = Runtime(
        store=store,
        tools=_registry(sleeper),
        config=RuntimeConfig(workspace=workspace),
        clock=clock,
    )
    record, _ = await runtime.start_run(
        StartRun(
            task="sleep",
            tool_scopes=["sleeper"],
            script=[{"tool": "sleeper", "args": {}}],
            budget=Budget(wall_clock_ms=60_000),
        ),
        tenant="t",
    )
    clock.ms = 59_950
    view = await finish(runtime, record.run_id)
    assert view["summary"]["terminated_by"] == "budget_exhausted"
    assert sleeper.started.is_set()
    assert not _alive(sleeper.pid)
    entries = await _kinds(store, record.run_id)
    assert [e["kind"] for e in entries[-2:]] == ["tool_failure", "run_ended"]
    assert entries[-2]["body"]["error"]["code"] == "stopped"
    await runtime.shutdown(5.0)


class Blocker:
    """Blocks one of the tools' threads until released."""

    spec = tool_spec("blocker")

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = 0
        self.all_in = asyncio.Event()
        self.expected = 0

    def _block(self, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
        loop.call_soon_threadsafe(self._arrived)
        self.release.wait(60)
        return {"released": True}

    def _arrived(self) -> None:
        self.entered += 1
        if self.entered >= self.expected:
            self.all_in.set()

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        return ToolOutcome(await ctx.pool.run(self._block, asyncio.get_running_loop()))


@pytest.mark.anyio
async def test_tools_filling_their_threads_do_not_starve_replay_or_other_runs(
    store: SqliteLedgerStore, workspace: Path
) -> None:
    """Every tool thread is held by a blocking tool call; meanwhile another run's replay and a
    run of in-process tools complete: tools wait only for tools."""
    blocker = Blocker()
    blocker.expected = TOOL_THREADS
    registry = builtin_tools()
    registry.register(blocker)
    runtime = Runtime(store=store, tools=registry, config=RuntimeConfig(workspace=workspace))
    done, _ = await runtime.start_run(
        StartRun(
            task="kv",
            tool_scopes=["kv_*"],
            script=[{"tool": "kv_set", "args": {"key": "a", "value": 1}}],
        ),
        tenant="t",
    )
    await finish(runtime, done.run_id)
    for _ in range(TOOL_THREADS):
        await runtime.start_run(
            StartRun(
                task="block", tool_scopes=["blocker"], script=[{"tool": "blocker", "args": {}}]
            ),
            tenant="t",
        )
    await blocker.all_in.wait()
    try:
        report = await runtime.replay(done.run_id, None, require_compiler=None, require_policy=None)
        assert report["verified"], report["failures"]
        other, _ = await runtime.start_run(
            StartRun(
                task="kv",
                tool_scopes=["kv_*"],
                script=[{"tool": "kv_set", "args": {"key": "b", "value": 2}}],
            ),
            tenant="t",
        )
        view = await finish(runtime, other.run_id)
        assert view["summary"]["commits"] == 1
    finally:
        blocker.release.set()
    await runtime.shutdown(10.0)


class Pondering:
    """A model that never answers: its turn waits until it is cancelled (and says so)."""

    live = False

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")


@pytest.mark.anyio
async def test_a_stop_ends_a_model_turn_in_flight(
    store: SqliteLedgerStore, workspace: Path
) -> None:
    """A shutdown during a model call cancels the call at once and records why (had it waited
    for the turn, the grace period would have run out and the end would say the server stopped
    during a step)."""
    model = Pondering()
    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=workspace),
        provider_factory=lambda spec: model,
    )
    record, _ = await runtime.start_run(StartRun(task="think"), tenant="t")
    await model.started.wait()
    await runtime.shutdown(600.0)
    assert model.cancelled
    ended = (await _kinds(store, record.run_id))[-1]["body"]
    assert (ended["terminated_by"], ended["error"]) == (
        "interrupted",
        "the server is shutting down",
    )


@pytest.mark.anyio
async def test_the_wall_clock_budget_ends_a_model_turn_in_flight(
    store: SqliteLedgerStore, workspace: Path
) -> None:
    clock = StepClock()
    model = Pondering()
    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=workspace),
        clock=clock,
        provider_factory=lambda spec: model,
    )
    record, _ = await runtime.start_run(
        StartRun(task="think", budget=Budget(wall_clock_ms=60_000)), tenant="t"
    )
    clock.ms = 59_950  # before the turn starts: 50 ms of budget are left for it
    view = await finish(runtime, record.run_id)
    assert model.cancelled
    assert view["summary"]["terminated_by"] == "budget_exhausted"
    await runtime.shutdown(5.0)
