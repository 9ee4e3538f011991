"""Replay of delegation against forged ledgers: a parent's `delegation` entry that gives its
child more than the run had, a `delegate` commit with no delegation behind it or understating
what the child spent, and a child whose link names another entry of its parent; each re-sealed
chain still links, and replay names `delegation_invalid` at the forged seq."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import biscuit_auth as biscuit
import pytest

from tests.forgery import entry_id, reseal
from tests.integration._runs import finish
from thymos.core import Budget, StoredRow
from thymos.runtime import Runtime, StartRun
from thymos.runtime._replay import Bundle, Replayer, bundle_replayer, read_bundle
from thymos.runtime._replay_delegation import check_parent

Envelope = dict[str, Any]


async def _delegating_run(runtime: Runtime) -> tuple[str, str]:
    """A parent that delegates once to a child that answers; (parent id, child id)."""
    child_script = [{"tool": "kv_get", "args": {"key": "a"}}, {"final": "child answer"}]
    request = StartRun(
        task="delegate",
        tool_scopes=["kv_*", "delegate"],
        script=[
            {
                "tool": "delegate",
                "args": {
                    "task": "look",
                    "tool_scopes": ["kv_get"],
                    "cognition": {"script": child_script},
                },
            },
            {"final": "parent answer"},
        ],
        budget=Budget(tool_calls=10),
    )
    record, _ = await runtime.start_run(request, tenant="default")
    view = await finish(runtime, record.run_id)
    assert view["status"] == "completed", view
    children = await runtime.list_runs(
        tenant=None, status=None, before=None, limit=10, parent_run_id=record.run_id
    )
    [child] = children
    await finish(runtime, child["run_id"])
    return record.run_id, child["run_id"]


async def _bundle(runtime: Runtime, run_id: str) -> Bundle:
    chunks = [chunk async for chunk in await runtime.export(run_id, None, -1, proof=True)]
    return read_bundle(b"".join(chunks).splitlines())


def _forged(
    bundle: Bundle, root: biscuit.PublicKey, edit: Callable[[list[Envelope]], int]
) -> tuple[Replayer, int]:
    """Replay the bundle's envelopes after `edit` (which returns the forged seq), re-sealed and
    without the server's signatures (a forger has no root key: only what replay decides of the
    content is looked at)."""
    envelopes = []
    for row in bundle.rows:
        envelope = json.loads(row.raw)
        envelope["_id"] = row.id
        envelopes.append(envelope)
    seq = edit(envelopes)
    lines = reseal(envelopes)
    forged = Bundle(
        bundle.run_id,
        [StoredRow(i, entry_id(line), line) for i, line in enumerate(lines)],
        bundle.documents,
        {},
    )
    return bundle_replayer(forged, root=root, allow_unsigned_tail=True), seq


def _content_failures(replayer: Replayer) -> list[dict[str, Any]]:
    """The failures about what the entries say (the forgery carries no signed heads)."""
    failures: list[dict[str, Any]] = replayer.report()["failures"]
    return [f for f in failures if f["code"] != "head_unsigned"]


def _codes_at(replayer: Replayer, seq: int) -> set[str]:
    return {f["code"] for f in _content_failures(replayer) if f["seq"] == seq}


def _index(envelopes: list[Envelope], kind: str) -> int:
    return next(i for i, e in enumerate(envelopes) if e["kind"] == kind)


@pytest.mark.anyio
async def test_forged_delegations_are_named_by_replay(runtime: Runtime) -> None:
    """The genuine ledgers verify; a delegation giving the child `shell`, a removed delegation
    and an understated `delegated_usage` each fail `delegation_invalid` at the forged entry; a
    child whose link names another seq of its parent fails at seq 0 against the store."""
    root = runtime.root.public_key
    parent, child = await _delegating_run(runtime)
    for run_id in (parent, child):
        report = await runtime.replay(run_id, None, require_compiler=None, require_policy=None)
        assert report["verified"] is True, report["failures"]
    bundle = await _bundle(runtime, parent)
    clean, _ = _forged(bundle, root, lambda envelopes: 0)
    assert _content_failures(clean) == []

    def more_tools(envelopes: list[Envelope]) -> int:
        at = _index(envelopes, "delegation")
        envelopes[at]["body"]["tools"] = ["kv_get", "shell"]
        return at

    def no_delegation(envelopes: list[Envelope]) -> int:
        at = _index(envelopes, "delegation")
        del envelopes[at]
        return _index(envelopes, "commit")

    def understated(envelopes: list[Envelope]) -> int:
        at = _index(envelopes, "commit")
        envelopes[at]["body"]["delegated_usage"]["tool_calls"] = 0
        return at

    for edit in (more_tools, no_delegation, understated):
        replayer, seq = _forged(bundle, root, edit)
        assert "delegation_invalid" in _codes_at(replayer, seq), (edit.__name__, replayer.report())

    def other_seq(envelopes: list[Envelope]) -> int:
        envelopes[0]["body"]["parent"]["seq"] -= 1
        return 0

    replayer, _ = _forged(await _bundle(runtime, child), root, other_seq)
    assert _content_failures(replayer) == [], "alone, a child's export checks its own writ"
    await check_parent(runtime.store, replayer)
    assert "delegation_invalid" in _codes_at(replayer, 0), replayer.report()
