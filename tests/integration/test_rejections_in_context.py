"""Every rejection reason reaches cognition: the Observation in its next context's history.

Runs go through the real Runtime on a SQLite ledger with a recording cognition (it keeps every
CognitionContext it is given), an injectable clock (to move time past or before the writ's
window) and a policy set that forbids kv_set and makes grep wait for approval on `ops`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from thymos.cognition import CognitionContext, Emit, Observation, Turn
from thymos.core import Budget, EntryKind, Intent, RunSpec
from thymos.governance import PolicyFile, PolicySet
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

from ._runs import all_entries, finish

POLICY = """\
@id("permit-all") permit(principal, action, resource);
@id("forbid-kv-set") forbid(principal, action, resource == Thymos::Tool::"kv_set");
@id("grep-needs-ops") @approval("ops")
permit(principal, action, resource == Thymos::Tool::"grep");
"""
DAY_US = int(timedelta(days=1).total_seconds() * 1_000_000)
Hook = Callable[[CognitionContext], Awaitable[None]]


class MovableClock:
    """A wall clock tests can shift; the monotonic clock stays real (budgets are unaffected)."""

    def __init__(self) -> None:
        self.offset_us = 0

    def now_us(self) -> int:
        return time.time_ns() // 1000 + self.offset_us

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


class RecordingCognition:
    """Plays one intent, then a final answer; keeps every context. `before` runs at turn one."""

    live = False

    def __init__(self, intents: Sequence[Intent], before: Hook | None = None) -> None:
        self.turns = [Turn(text="try", intents=tuple(intents)), Turn(final="done")]
        self.before = before
        self.contexts: list[CognitionContext] = []

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        self.contexts.append(context)
        if context.turns_taken == 0 and self.before is not None:
            await self.before(context)
        return self.turns[context.turns_taken]


class Harness:
    def __init__(self, runtime: Runtime, store: SqliteLedgerStore, clock: MovableClock) -> None:
        self.runtime, self.store, self.clock = runtime, store, clock
        self.cognition: RecordingCognition | None = None

    def provider(self, spec: RunSpec) -> RecordingCognition:
        assert self.cognition is not None
        return self.cognition

    async def run(
        self,
        intents: Sequence[Intent],
        *,
        before: Hook | None = None,
        vote: bool | None = None,
        **request: Any,
    ) -> tuple[str, RecordingCognition]:
        self.cognition = RecordingCognition(intents, before)
        record, _ = await self.runtime.start_run(
            StartRun(task="provoke", max_steps=4, **request), tenant="default"
        )
        if vote is not None:
            await self._vote(record.run_id, vote)
        await finish(self.runtime, record.run_id)
        return record.run_id, self.cognition

    async def _vote(self, run_id: str, approve: bool) -> None:
        for _ in range(500):
            # Waiting for votes: the actor waits, or has parked (the vote wakes it).
            active = self.runtime.active(run_id)
            if active is not None and active.actor.waiting:
                break
            record = await self.runtime.store.get_run(run_id)
            if active is None and record is not None and record.status == "waiting_approval":
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the run never waited for approval")
        await self.runtime.approve(
            run_id,
            None,
            channel="ops",
            approve=approve,
            proposal_id=None,
            reason="test",
            approver="tester",
            key_id=None,
        )


@pytest.fixture
async def harness(
    store: SqliteLedgerStore, workspace: Path, anyio_backend: str
) -> AsyncIterator[Harness]:
    clock = MovableClock()
    holder: list[Harness] = []
    runtime = Runtime(
        store=store,
        tools=builtin_tools(),
        config=RuntimeConfig(workspace=workspace),
        clock=clock,
        policy=PolicySet([PolicyFile("main.cedar", POLICY)]),
        provider_factory=lambda spec: holder[0].provider(spec),
    )
    holder.append(Harness(runtime, store, clock))
    try:
        yield holder[0]
    finally:
        if not runtime.closed.is_set():
            await runtime.shutdown(5.0)


async def _assert_reason_in_next_context(
    harness: Harness, run_id: str, cognition: RecordingCognition, reason: str, tool: str
) -> None:
    """The ledger's rejection for `tool` has `reason`, and the second context's history holds a
    rejected Observation of that call carrying the same reason."""
    view = await finish(harness.runtime, run_id)
    rejections = [
        e for e in await all_entries(harness.store, run_id) if e.kind == EntryKind.REJECTION
    ]
    assert [r.body["reason"] for r in rejections if r.body["tool"] == tool] == [reason], view
    assert len(cognition.contexts) == 2, view
    observations = [h for h in cognition.contexts[1].history if isinstance(h, Observation)]
    rejected = [o for o in observations if o.outcome == "rejected" and o.tool == tool]
    assert [o.content["reason"] for o in rejected] == [reason], observations
    assert view["summary"]["final_answer"] == "done"


@pytest.mark.anyio
async def test_unknown_tool_reason_reaches_the_next_context(harness: Harness) -> None:
    """`unknown_tool` is recorded and shown to cognition in its next context."""
    run_id, cog = await harness.run([Intent("nope", {}, "c1")])
    await _assert_reason_in_next_context(harness, run_id, cog, "unknown_tool", "nope")


@pytest.mark.anyio
async def test_out_of_scope_reason_reaches_the_next_context(harness: Harness) -> None:
    """`out_of_scope` is recorded and shown to cognition in its next context."""
    run_id, cog = await harness.run(
        [Intent("kv_set", {"key": "k", "value": 1}, "c1")], tool_scopes=["kv_get"]
    )
    await _assert_reason_in_next_context(harness, run_id, cog, "out_of_scope", "kv_set")


@pytest.mark.anyio
async def test_effect_above_ceiling_reason_reaches_the_next_context(harness: Harness) -> None:
    """`effect_above_ceiling` is recorded and shown to cognition in its next context."""
    run_id, cog = await harness.run(
        [Intent("kv_set", {"key": "k", "value": 1}, "c1")],
        tool_scopes=["kv_*"],
        effect_ceiling="read",
    )
    await _assert_reason_in_next_context(harness, run_id, cog, "effect_above_ceiling", "kv_set")


@pytest.mark.anyio
async def test_budget_exhausted_reason_reaches_the_next_context(harness: Harness) -> None:
    """`budget_exhausted` (the second call past tool_calls 1) is shown to cognition next turn."""
    run_id, cog = await harness.run(
        [Intent("kv_get", {"key": "a"}, "c1"), Intent("kv_get", {"key": "b"}, "c2")],
        budget=Budget(tool_calls=1),
    )
    await _assert_reason_in_next_context(harness, run_id, cog, "budget_exhausted", "kv_get")


@pytest.mark.anyio
async def test_invalid_arguments_reason_reaches_the_next_context(harness: Harness) -> None:
    """`invalid_arguments` is recorded and shown to cognition with the schema errors."""
    run_id, cog = await harness.run([Intent("kv_get", {"wrong": 1}, "c1")])
    await _assert_reason_in_next_context(harness, run_id, cog, "invalid_arguments", "kv_get")


@pytest.mark.anyio
async def test_policy_denied_reason_reaches_the_next_context(harness: Harness) -> None:
    """`policy_denied` (a forbid on kv_set) is recorded and shown to cognition next turn."""
    run_id, cog = await harness.run(
        [Intent("kv_set", {"key": "k", "value": 1}, "c1")], tool_scopes=["kv_*"]
    )
    await _assert_reason_in_next_context(harness, run_id, cog, "policy_denied", "kv_set")


@pytest.mark.anyio
async def test_approval_denied_reason_reaches_the_next_context(harness: Harness) -> None:
    """`approval_denied` (a deny vote on a suspended grep) is shown to cognition next turn."""
    run_id, cog = await harness.run([Intent("grep", {"pattern": "Demo"}, "c1")], vote=False)
    await _assert_reason_in_next_context(harness, run_id, cog, "approval_denied", "grep")


@pytest.mark.anyio
async def test_revoked_reason_reaches_the_next_context(harness: Harness) -> None:
    """A writ revoked before its run's intent is compiled rejects it `revoked`, and cognition
    sees that reason next turn."""

    async def revoke(context: CognitionContext) -> None:
        record = await harness.store.get_run(context.run_id)
        assert record is not None and record.writ_id is not None
        await harness.runtime.revoke(record.writ_id, None, by="tester", reason=None)

    run_id, cog = await harness.run([Intent("kv_get", {"key": "a"}, "c1")], before=revoke)
    await _assert_reason_in_next_context(harness, run_id, cog, "revoked", "kv_get")


@pytest.mark.anyio
async def test_expired_reason_reaches_the_next_context(harness: Harness) -> None:
    """With the wall clock moved past the writ's window (default seven days), an intent is
    rejected `expired`, and cognition sees that reason next turn."""

    async def jump(context: CognitionContext) -> None:
        harness.clock.offset_us = 8 * DAY_US

    run_id, cog = await harness.run([Intent("kv_get", {"key": "a"}, "c1")], before=jump)
    await _assert_reason_in_next_context(harness, run_id, cog, "expired", "kv_get")


@pytest.mark.anyio
async def test_not_yet_valid_reason_reaches_the_next_context(harness: Harness) -> None:
    """With the wall clock moved back before the writ's start, an intent is rejected
    `not_yet_valid`, and cognition sees that reason next turn."""

    async def rewind(context: CognitionContext) -> None:
        harness.clock.offset_us = -DAY_US

    run_id, cog = await harness.run([Intent("kv_get", {"key": "a"}, "c1")], before=rewind)
    await _assert_reason_in_next_context(harness, run_id, cog, "not_yet_valid", "kv_get")
