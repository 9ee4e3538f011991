"""Replay checks authority from the ledger alone: a forged export whose hash chain is intact
(every entry re-sealed) is still caught when a commit is not what the run's writ and policy
decide, or when the facts recorded with it disagree with the ledger."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.forgery import Export, reseal
from thymos.core import EntryKind, RunSpec
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.runtime._replay import read_bundle, replay_bundle
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools

from ._runs import finish

SCRIPT: list[dict[str, Any]] = [
    {"tool": "kv_set", "args": {"key": "a", "value": 1}},
    {"tool": "kv_set", "args": {"key": "b", "value": 2}},
    {"final": "done"},
]


async def _forge(
    runtime: Runtime,
    change: Callable[[str, dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """Run the script, export it with its proof, rewrite entry bodies with `change(kind, body)`,
    re-seal the whole chain (so every hash and link is valid) and replay the forgery."""
    record, _ = await runtime.start_run(
        StartRun(task="forge", tool_scopes=["kv_*"], script=SCRIPT), tenant="acme"
    )
    await finish(runtime, record.run_id)
    chunks = await runtime.export(record.run_id, None, -1, proof=True)
    export = Export.parse(b"".join([chunk async for chunk in chunks]))
    envelopes = [{**e, "body": change(e["kind"], dict(e["body"]))} for e in export.envelopes]
    data = export.assemble(reseal(envelopes))
    return replay_bundle(read_bundle(data.splitlines()), root=runtime.root.public_key)


@pytest.fixture
async def fresh_runtime(store: SqliteLedgerStore, workspace: Path) -> Runtime:
    return Runtime(store=store, tools=builtin_tools(), config=RuntimeConfig(workspace=workspace))


@pytest.mark.anyio
async def test_an_unforged_reseal_verifies(
    fresh_runtime: Runtime, store: SqliteLedgerStore, tmp_path: Path
) -> None:
    """Re-sealing the ledger unchanged gives a ledger that verifies: the forgery tests below fail
    for their change, not for the re-sealing."""
    report = await _forge(fresh_runtime, lambda kind, body: body)
    assert report["verified"] is True, report["failures"]
    await fresh_runtime.shutdown(5.0)


def _tool_outside_the_writ(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind == EntryKind.COMMIT and body["tool"] == "kv_set":
        return {**body, "tool": "grep", "effect": "read"}
    return body


def _understated_usage(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind == EntryKind.COMMIT:
        return {**body, "authority": {**body["authority"], "tool_calls": 0}}
    return body


def _effect_above_the_ceiling(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind == EntryKind.COMMIT:
        return {**body, "effect": "irreversible"}
    return body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("change", "code"),
    [
        (_tool_outside_the_writ, "decision_mismatch"),
        (_understated_usage, "authority_mismatch"),
        (_effect_above_the_ceiling, "decision_mismatch"),
    ],
    ids=["tool-outside-the-writ", "understated-usage", "effect-above-the-ceiling"],
)
async def test_a_forged_commit_is_caught_although_the_chain_is_intact(
    fresh_runtime: Runtime,
    store: SqliteLedgerStore,
    tmp_path: Path,
    change: Callable[[str, dict[str, Any]], dict[str, Any]],
    code: str,
) -> None:
    """A re-sealed commit claiming another tool than its intent, or another effect than the
    tool's, is not what replay decides (`decision_mismatch`); one recording less usage than the
    ledger shows, to slip under a budget, is `authority_mismatch`."""
    report = await _forge(fresh_runtime, change)
    assert report["verified"] is False
    assert code in {f["code"] for f in report["failures"]}, report["failures"]
    await fresh_runtime.shutdown(5.0)


@pytest.mark.anyio
async def test_a_writ_signed_by_another_key_is_caught(
    fresh_runtime: Runtime, store: SqliteLedgerStore, tmp_path: Path
) -> None:
    """A first entry whose writ does not verify under the server's root key is `writ_invalid`."""
    other = Runtime(store=store, tools=builtin_tools(), config=RuntimeConfig(workspace=tmp_path))
    spec = RunSpec.from_body(
        {
            "task": "x",
            "max_steps": 1,
            "tool_scopes": ["kv_*"],
            "tools": ["kv_get", "kv_set"],
            "cognition": {"provider": "mock"},
            "tenant": "acme",
            "effect_ceiling": "write",
        }
    )
    foreign = other._mint(spec, 1_767_225_600_000_000)  # the same terms, another root key

    def change(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind == EntryKind.RUN_STARTED:
            return {**body, "writ": foreign}
        return body

    report = await _forge(fresh_runtime, change)
    assert report["verified"] is False
    assert report["failures"][0]["code"] == "writ_invalid"
    await fresh_runtime.shutdown(5.0)
