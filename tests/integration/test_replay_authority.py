"""Replay checks authority from the ledger alone: a forged ledger whose hash chain is intact
(every entry re-sealed) is still caught when a commit was not allowed by the run's writ, or when
the facts recorded with it disagree with the ledger."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from thymos.core import EntryKind, RunSpec, RunSummary, seal
from thymos.runtime import Runtime, RuntimeConfig, StartRun
from thymos.runtime._replay import replay_report
from thymos.storage import RunRecord, SqliteLedgerStore
from thymos.tools import builtin_tools

from ._runs import all_entries, finish

SCRIPT: list[dict[str, Any]] = [
    {"tool": "kv_set", "args": {"key": "a", "value": 1}},
    {"tool": "kv_set", "args": {"key": "b", "value": 2}},
    {"final": "done"},
]


async def _forge(
    runtime: Runtime,
    store: SqliteLedgerStore,
    tmp_path: Path,
    change: Callable[[str, dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """Run the script, rewrite entry bodies with `change(kind, body)`, re-seal the whole chain
    into a fresh store (so every hash and link is valid), and replay the forgery."""
    record, _ = await runtime.start_run(
        StartRun(task="forge", tool_scopes=["kv_*"], script=SCRIPT), tenant="acme"
    )
    await finish(runtime, record.run_id)
    entries = await all_entries(store, record.run_id)
    forged_store = SqliteLedgerStore(tmp_path / "forged.sqlite3")
    await forged_store.open()
    try:
        parent: str | None = None
        resealed = []
        summary = RunSummary()
        for entry in entries:
            body = change(entry.kind, dict(entry.body))
            sealed = seal(
                run_id=entry.run_id,
                seq=entry.seq,
                parent=parent,
                kind=EntryKind(entry.kind),
                time=entry.time,
                body=body,
            )
            resealed.append(sealed)
            summary.fold(sealed)
            parent = sealed.id
        stored = await store.get_run(record.run_id)
        assert stored is not None
        forged_record = RunRecord(
            stored.run_id,
            stored.tenant,
            "completed",
            stored.created_at,
            stored.updated_at,
            stored.spec,
            summary.as_dict(),
        )
        await forged_store.create_run(forged_record, resealed[0])
        await forged_store.append(record.run_id, resealed[1:], None)
        return await replay_report(
            forged_store,
            forged_record,
            root=runtime.root.public_key,
            require_compiler=None,
            require_policy=None,
        )
    finally:
        await forged_store.close()


@pytest.fixture
async def fresh_runtime(store: SqliteLedgerStore, workspace: Path) -> Runtime:
    return Runtime(store=store, tools=builtin_tools(), config=RuntimeConfig(workspace=workspace))


@pytest.mark.anyio
async def test_an_unforged_reseal_verifies(
    fresh_runtime: Runtime, store: SqliteLedgerStore, tmp_path: Path
) -> None:
    """Re-sealing the ledger unchanged gives a ledger that verifies: the forgery tests below fail
    for their change, not for the re-sealing."""
    report = await _forge(fresh_runtime, store, tmp_path, lambda kind, body: body)
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
        (_tool_outside_the_writ, "unauthorised_commit"),
        (_understated_usage, "authority_mismatch"),
        (_effect_above_the_ceiling, "unauthorised_commit"),
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
    """A re-sealed commit claiming a tool the writ does not cover, or an effect above its
    ceiling, does not re-authorize (`unauthorised_commit`); one recording less usage than the
    ledger shows, to slip under a budget, is `authority_mismatch`."""
    report = await _forge(fresh_runtime, store, tmp_path, change)
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

    report = await _forge(fresh_runtime, store, tmp_path, change)
    assert report["verified"] is False
    assert report["failures"][0]["code"] == "writ_invalid"
    await fresh_runtime.shutdown(5.0)
