"""The runtime end to end on a real SQLite ledger: governance decisions are recorded and fed back
to cognition, and every way a run can end is recorded with its reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

import thymos.runtime._base
from thymos.cognition import (
    CognitionContext,
    Emit,
    Observation,
    Turn,
)
from thymos.core import (
    Budget,
    EntryKind,
    Intent,
    RunSpec,
    RunStatus,
    RunSummary,
    rfc3339_from_us,
    seal,
    verify_rows,
)
from thymos.runtime import Runtime, StartRun
from thymos.storage import RunRecord, RunUpdate, SqliteLedgerStore

from ._runs import all_entries, all_rows, finish


class RecordingCognition:
    """A scripted cognition that keeps every context it is given."""

    live = False

    def __init__(self, turns: Sequence[Turn]) -> None:
        self.turns = list(turns)
        self.contexts: list[CognitionContext] = []

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn:
        self.contexts.append(context)
        return self.turns[context.turns_taken]


def inject(monkeypatch: pytest.MonkeyPatch, cognition: RecordingCognition) -> None:
    def create_provider(
        provider: str,
        *,
        model: str | None,
        script: Sequence[Mapping[str, Any]] | None,
        **_: Any,
    ) -> RecordingCognition:
        return cognition

    monkeypatch.setattr(thymos.runtime._base, "create_provider", create_provider)


async def start(runtime: Runtime, **request: Any) -> str:
    record, created = await runtime.start_run(StartRun(**request), tenant="default")
    assert created
    return record.run_id


@pytest.mark.anyio
async def test_a_rejection_is_recorded_and_shown_to_cognition_next_turn(
    runtime: Runtime, store: SqliteLedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An out-of-scope intent is rejected without running the tool: the ledger records the
    rejection (reason, intent id, compiler) and cognition's next context holds it as a rejected
    observation with the same call id and reason."""
    cognition = RecordingCognition(
        [
            Turn(
                text="try to write",
                intents=(Intent("kv_set", {"key": "k", "value": 1}, "call-1"),),
            ),
            Turn(final="could not write"),
        ]
    )
    inject(monkeypatch, cognition)
    run_id = await start(runtime, task="write k", max_steps=4, tool_scopes=["kv_get"])
    view = await finish(runtime, run_id)
    assert view["summary"]["rejections"] == 1
    assert view["summary"]["commits"] == 0
    assert view["summary"]["terminated_by"] == "final_answer"

    entries = await all_entries(store, run_id)
    intent = next(e for e in entries if e.kind == EntryKind.INTENT)
    rejection = next(e for e in entries if e.kind == EntryKind.REJECTION)
    assert rejection.seq > intent.seq
    assert rejection.body["intent"] == intent.id
    assert rejection.body["reason"] == "out_of_scope"
    assert rejection.body["tool"] == "kv_set"
    assert rejection.body["compiler"].startswith("thymos-compiler/")
    assert not any(e.kind == EntryKind.COMMIT for e in entries)

    assert len(cognition.contexts) == 2
    first, second = cognition.contexts
    assert first.history == ()
    assert [t.name for t in first.tools] == ["kv_get"]
    observations = [h for h in second.history if isinstance(h, Observation)]
    assert len(observations) == 1
    assert observations[0].call_id == "call-1"
    assert observations[0].outcome == "rejected"
    assert observations[0].content["reason"] == "out_of_scope"
    assert second.turns_taken == 1
    assert (await runtime.world(run_id, None, None))["resources"] == []


@pytest.mark.anyio
async def test_max_steps_ends_the_run_with_terminated_by_max_steps(
    runtime: Runtime, store: SqliteLedgerStore
) -> None:
    """A run whose cognition never answers stops after max_steps turns, failed with
    terminated_by max_steps, and its ledger verifies."""
    script = [{"text": f"thinking {i}"} for i in range(10)]
    run_id = await start(runtime, task="think", max_steps=3, script=script)
    view = await finish(runtime, run_id)
    assert view["status"] == "failed"
    assert view["summary"]["terminated_by"] == "max_steps"
    assert view["summary"]["steps_executed"] == 3
    assert verify_rows(run_id, await all_rows(store, run_id)) == []


@pytest.mark.anyio
async def test_tool_call_budget_rejects_intents_past_the_limit(
    runtime: Runtime, store: SqliteLedgerStore
) -> None:
    """With a tool_calls budget of 2, the first two intents commit and later ones are rejected
    with reason budget_exhausted; the world holds only what was committed."""
    intents = [{"tool": "kv_set", "args": {"key": f"k{i}", "value": i}} for i in range(4)]
    run_id = await start(
        runtime,
        task="set four keys",
        max_steps=3,
        tool_scopes=["kv_set"],
        script=[{"intents": intents}, {"final": "done"}],
        budget=Budget(tool_calls=2),
    )
    view = await finish(runtime, run_id)
    assert view["summary"]["commits"] == 2
    assert view["summary"]["rejections"] == 2
    reasons = [
        e.body["reason"] for e in await all_entries(store, run_id) if e.kind == EntryKind.REJECTION
    ]
    assert reasons == ["budget_exhausted", "budget_exhausted"]
    world = await runtime.world(run_id, None, None)
    assert [r["id"] for r in world["resources"]] == ["k0", "k1"]


@pytest.mark.anyio
async def test_token_budget_ends_the_run_with_budget_exhausted(runtime: Runtime) -> None:
    """When recorded token usage reaches the token budget, the run ends failed with
    terminated_by budget_exhausted, without taking another turn."""
    usage = {"input_tokens": 40, "output_tokens": 20}
    script = [{"text": "a", "usage": usage}, {"text": "b", "usage": usage}, {"final": "never"}]
    run_id = await start(
        runtime, task="spend", max_steps=5, script=script, budget=Budget(tokens=100)
    )
    view = await finish(runtime, run_id)
    assert view["status"] == "failed"
    assert view["summary"]["terminated_by"] == "budget_exhausted"
    assert view["summary"]["steps_executed"] == 2
    assert view["usage"]["input_tokens"] + view["usage"]["output_tokens"] == 120
    assert view["summary"]["final_answer"] is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([{"text": "hi"}, {"error": "the model is down"}], "the model is down"),
        ([{"text": "hi"}], "the mock script ran out after 1 turns without a final answer"),
    ],
    ids=["scripted-error", "script-exhausted"],
)
async def test_a_cognition_failure_ends_the_run_with_terminated_by_error(
    runtime: Runtime, script: list[dict[str, Any]], message: str
) -> None:
    """A provider failure (a scripted error, or a script that runs out without a final answer)
    ends the run failed with terminated_by error and the failure's message."""
    run_id = await start(runtime, task="fail", max_steps=5, script=script)
    view = await finish(runtime, run_id)
    assert view["status"] == "failed"
    assert view["summary"]["terminated_by"] == "error"
    assert view["summary"]["error"] == message


@pytest.mark.anyio
async def test_a_completed_run_replays_to_its_live_world(
    runtime: Runtime, store: SqliteLedgerStore
) -> None:
    """Replay of a finished run verifies every entry and folds its commits to the same world
    hash the runtime serves."""
    script = [
        {"tool": "kv_set", "args": {"key": "a", "value": [1, 2.5, "x"]}},
        {"tool": "kv_set", "args": {"key": "a", "value": {"b": None}}},
        {"tool": "kv_get", "args": {"key": "a"}},
        {"final": "ok"},
    ]
    run_id = await start(runtime, task="kv", max_steps=5, tool_scopes=["kv_*"], script=script)
    view = await finish(runtime, run_id)
    assert view["status"] == "completed"
    assert view["summary"]["final_answer"] == "ok"
    report = await runtime.replay(run_id, None, require_compiler=None, require_policy=None)
    assert report["verified"], report["failures"]
    assert report["world_matches"]
    assert report["entries"] == view["summary"]["head_seq"] + 1
    world = await runtime.world(run_id, None, None)
    assert world["resources"] == [{"kind": "kv", "id": "a", "version": 2, "value": {"b": None}}]


@pytest.mark.anyio
async def test_recover_records_runs_left_running_as_interrupted(
    runtime: Runtime, store: SqliteLedgerStore
) -> None:
    """Runs a previous process left `running` (with an undecided intent) are ended by recover():
    a run_ended entry continues their verified chain with terminated_by interrupted; finished
    runs are left alone (with auto-resume off, as `THYMOS_AUTO_RESUME=false` sets it)."""
    runtime.config.auto_resume = False
    spec = RunSpec(
        task="left behind",
        max_steps=5,
        tool_scopes=("kv_set",),
        tools=("kv_set",),
        provider="mock",
        model=None,
        script=None,
        budget=Budget(),
        tenant="default",
    )
    now = rfc3339_from_us(1_767_225_600_000_000)
    run_id = "019b76da-a801-7000-8203-040506070809"
    first = seal(
        run_id=run_id, seq=0, parent=None, kind=EntryKind.RUN_STARTED, time=now, body=spec.as_body()
    )
    turn = seal(
        run_id=run_id,
        seq=1,
        parent=first.id,
        kind=EntryKind.TURN,
        time=now,
        body={
            "step": 1,
            "text": "",
            "usage": {"input_tokens": 3, "output_tokens": 4},
            "intents": 1,
        },
    )
    intent = seal(
        run_id=run_id,
        seq=2,
        parent=turn.id,
        kind=EntryKind.INTENT,
        time=now,
        body={"step": 1, "index": 0, "call_id": "c", "tool": "kv_set", "args": {"key": "k"}},
    )
    summary = RunSummary()
    for entry in (first, turn, intent):
        summary.fold(entry)
    record = RunRecord(
        run_id, "default", "running", now, now, spec.as_body(), RunSummary().as_dict()
    )
    await store.create_run(record, first)
    await store.append(run_id, [turn, intent], RunUpdate("running", now, summary.as_dict()))

    finished = await start(runtime, task="done", max_steps=2, script=[{"final": "ok"}])
    await finish(runtime, finished)

    assert await runtime.recover() == 1
    view = await runtime.get_run(run_id, None)
    assert view["status"] == RunStatus.FAILED.value
    assert view["summary"]["terminated_by"] == "interrupted"
    assert view["summary"]["head_seq"] == 3
    entries = await all_entries(store, run_id)
    assert [e.kind for e in entries] == ["run_started", "turn", "intent", "run_ended"]
    assert verify_rows(run_id, await all_rows(store, run_id)) == []
    assert (await runtime.get_run(finished, None))["status"] == "completed"
    assert await runtime.recover() == 0


@pytest.mark.anyio
async def test_default_mock_makes_a_governed_read_then_answers(
    runtime: Runtime, store: SqliteLedgerStore
) -> None:
    """Without a script the mock provider makes one read-only tool call through governance and
    then completes with an answer that mentions it."""
    run_id = await start(runtime, task="look around the workspace", max_steps=4)
    view = await finish(runtime, run_id)
    assert view["status"] == "completed"
    assert view["summary"]["commits"] == 1
    assert "repo_map committed" in view["summary"]["final_answer"]
    kinds = [e.kind for e in await all_entries(store, run_id)]
    assert kinds == ["run_started", "turn", "intent", "commit", "turn", "run_ended"]


@pytest.mark.anyio
async def test_a_float_written_as_an_unsafe_integer_never_reaches_the_ledger(
    runtime: Runtime, store: SqliteLedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a proposed value of 1e16 (which JCS writes as integer digits beyond 2**53) used
    to be committed, after which the run's own ledger failed replay and `world/at` called it
    damaged. Now such arguments are recorded as having no canonical form and refused, and the
    run's ledger replays and folds at every seq."""
    cognition = RecordingCognition(
        [
            Turn(intents=(Intent("kv_set", {"key": "big", "value": 1e16}, "c1"),)),
            Turn(intents=(Intent("kv_set", {"key": "ok", "value": 1e21}, "c2"),)),
            Turn(final="done"),
        ]
    )
    inject(monkeypatch, cognition)
    run_id = await start(runtime, task="big numbers", max_steps=4, tool_scopes=["kv_set"])
    view = await finish(runtime, run_id)
    assert view["status"] == "completed"
    assert (view["summary"]["commits"], view["summary"]["rejections"]) == (1, 1)
    intent = next(e for e in await all_entries(store, run_id) if e.kind == EntryKind.INTENT)
    assert intent.body["args"] == {}
    assert "args_error" in intent.body
    report = await runtime.replay(run_id, None, require_compiler=None, require_policy=None)
    assert report["verified"], report["failures"]
    assert report["world_matches"]
    for seq in range(view["summary"]["head_seq"] + 1):
        await runtime.world(run_id, None, seq)
    world = await runtime.world(run_id, None, None)
    assert world["resources"] == [{"kind": "kv", "id": "ok", "version": 1, "value": 1e21}]


@pytest.mark.anyio
async def test_health_names_the_ledger_only_while_it_answers(
    runtime: Runtime, store: SqliteLedgerStore
) -> None:
    """`/health`'s `ledger` is the backend while the store answers and `unavailable` once it
    does not; `node` is None on storage no other process shares."""
    health = await runtime.health()
    assert (health["ledger"], health["node"]) == ("sqlite", None)
    await store.close()
    assert (await runtime.health())["ledger"] == "unavailable"
