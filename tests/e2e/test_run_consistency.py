"""One run, every view of it: record, execution, world, world/at, events, ledger, replay agree."""

from __future__ import annotations

import json
from typing import Any

import blake3
import pytest

from tests.e2e._harness import (
    ServerProcess,
    create_run,
    ledger_lines,
    read_events,
    wait_terminal,
)
from tests.e2e.conftest import NOTES, ServerFactory

pytestmark = pytest.mark.blackbox

SCRIPTED: dict[str, Any] = {
    "task": "store a value, read the notes, answer",
    "max_steps": 10,
    "tool_scopes": ["kv_*", "fs_read"],
    "cognition": {
        "provider": "mock",
        "script": [
            {"tool": "kv_set", "args": {"key": "colour", "value": {"name": "teal", "n": 7}}},
            {"tool": "fs_read", "args": {"path": "docs/notes.txt"}},
            {"final": "teal, and the notes say alpha"},
        ],
    },
}


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    """One server for this module: each test reads only its own run."""
    return module_server_factory()


def test_scripted_run_every_view_agrees_on_counts_head_and_world(server: ServerProcess) -> None:
    """A scripted kv_set/fs_read/final run completes, and its record, execution session,
    world, world/at at every seq, full event stream, ledger export and replay report all agree:
    same entry count, head seq and id, world hash; the kv resource appears exactly at the
    kv_set commit; every ledger line hashes (BLAKE3) to its id and links to its parent."""
    client = server.client()
    run_id = create_run(client, SCRIPTED)
    record = wait_terminal(client, run_id)

    assert record["run_id"] == run_id
    assert record["status"] == "completed"
    assert record["task"] == SCRIPTED["task"]
    assert record["cognition"]["provider"] == "mock"
    summary = record["summary"]
    assert summary["terminated_by"] == "final_answer"
    assert summary["final_answer"] == "teal, and the notes say alpha"
    assert summary["intents_submitted"] == 2
    assert summary["commits"] == 2
    assert summary["rejections"] == 0
    assert summary["failures"] == 0
    assert summary["steps_executed"] == 3
    head = summary["head_seq"]
    head_id = summary["head_id"]

    # The execution session of the finished run.
    execution = client.get(f"/runs/{run_id}/execution").json()
    assert execution["status"] == "completed"
    assert execution["final_answer"] == summary["final_answer"]
    assert execution["max_steps"] == 10
    assert execution["active_tool"] is None
    assert execution["pending_approvals"] == []
    for key in ("steps_executed", "intents_submitted", "commits", "rejections", "failures"):
        assert execution["counters"][key] == summary[key], key
    assert execution["head_seq"] == head
    assert [item["seq"] for item in execution["log"]] == list(range(head + 1))

    # The event stream, read until it ends by itself.
    events = read_events(client, f"/runs/{run_id}/events")
    assert [e.id for e in events] == [str(s) for s in range(head + 1)]
    entries = [e.json() for e in events]
    for event, entry in zip(events, entries, strict=True):
        assert event.event == entry["kind"]
        assert entry["seq"] == int(event.id or "-1")
        assert set(entry) >= {"seq", "id", "kind", "created_at", "payload"}
    assert entries[0]["kind"] == "run_started"
    assert entries[-1]["kind"] == "run_ended"
    assert entries[-1]["id"] == head_id
    assert entries[-1]["payload"]["terminated_by"] == "final_answer"
    kinds = [e["kind"] for e in entries]
    assert kinds.count("commit") == 2
    assert kinds.count("intent") == 2
    assert [e["kind"] for e in execution["log"]] == kinds

    # The ledger export: one canonical envelope per entry, hash-chained.
    lines = ledger_lines(client, run_id)
    assert len(lines) == len(entries) == head + 1
    previous: str | None = None
    for seq, (line, entry) in enumerate(zip(lines, entries, strict=True)):
        digest = blake3.blake3(line).hexdigest()
        assert digest == entry["id"], f"line {seq} does not hash to its entry id"
        envelope = json.loads(line)
        assert envelope["run"] == run_id
        assert envelope["seq"] == seq
        assert envelope["parent"] == previous
        assert envelope["kind"] == entry["kind"]
        assert envelope["body"] == entry["payload"]
        # Canonical (RFC 8785) bytes: sorted keys, no insignificant whitespace.
        assert line == json.dumps(
            envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        previous = digest
    assert previous == head_id
    assert ledger_lines(client, run_id, after_seq=head - 2) == lines[-2:]
    assert ledger_lines(client, run_id, after_seq=head) == []

    # The fs_read commit carries the workspace file's content.
    fs_commit = next(
        e for e in entries if e["kind"] == "commit" and e["payload"]["tool"] == "fs_read"
    )
    assert fs_commit["payload"]["output"]["content"] == NOTES

    # The world, now and at every seq.
    world = client.get(f"/runs/{run_id}/world").json()
    assert world["run_id"] == run_id
    assert world["seq"] == head
    assert world["resources"] == [
        {"kind": "kv", "id": "colour", "version": 1, "value": {"name": "teal", "n": 7}}
    ]
    kv_commit_seq = next(
        e["seq"] for e in entries if e["kind"] == "commit" and e["payload"]["tool"] == "kv_set"
    )
    hashes = set()
    for seq in range(head + 1):
        response = client.get(f"/runs/{run_id}/world/at", params={"seq": seq})
        assert response.status_code == 200, response.text
        at = response.json()
        assert at["seq"] == seq
        assert at["run_id"] == run_id
        if seq < kv_commit_seq:
            assert at["resources"] == [], seq
        else:
            assert at["resources"] == world["resources"], seq
        hashes.add((seq >= kv_commit_seq, at["world_hash"]))
        if seq == head:
            assert at == world
    # One hash before the commit, one after, and they differ.
    assert len(hashes) == 2
    assert len({h for _, h in hashes}) == 2

    # Replay verifies from the ledger alone and lands on the same world.
    replay = client.get(f"/runs/{run_id}/replay").json()
    assert replay["verified"] is True
    assert replay["failures"] == []
    assert replay["run_id"] == run_id
    assert replay["entries"] == head + 1
    assert replay["head_seq"] == head
    assert replay["head_id"] == head_id
    assert replay["world_hash"] == world["world_hash"]
    assert replay["world_matches"] is True
    assert sum(replay["kinds"].values()) == head + 1
    assert replay["kinds"] == {k: kinds.count(k) for k in set(kinds)}


def test_default_mock_makes_a_governed_tool_call_then_answers(server: ServerProcess) -> None:
    """Without a script and with the default (read-only) scopes, the mock makes at least one
    governed tool call that commits, then completes with a non-empty final answer; the run
    gets exactly the read-only built-in tools and its ledger replays."""
    client = server.client()
    run_id = create_run(client, {"task": "Inspect the repo and explain what it holds"})
    record = wait_terminal(client, run_id)
    assert record["status"] == "completed", record
    summary = record["summary"]
    assert summary["terminated_by"] == "final_answer"
    assert summary["commits"] >= 1
    assert summary["intents_submitted"] >= 1
    assert isinstance(summary["final_answer"], str)
    assert summary["final_answer"].strip()
    assert "kv_set" not in record["tools"]
    assert set(record["tools"]) == {"repo_map", "fs_read", "grep", "kv_get"}
    events = read_events(client, f"/runs/{run_id}/events")
    commits = [e.json() for e in events if e.event == "commit"]
    assert commits
    assert all(c["payload"]["tool"] in record["tools"] for c in commits)
    replay = client.get(f"/runs/{run_id}/replay").json()
    assert replay["verified"] is True
    assert replay["world_matches"] is True


def _fold(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The world after these entries, folded independently from their commit deltas."""
    world: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        if entry["kind"] != "commit":
            continue
        for delta in entry["body"]["deltas"]:
            key = (delta["kind"], delta["id"])
            if delta["op"] == "create":
                assert key not in world
                world[key] = {"kind": key[0], "id": key[1], "version": 1, "value": delta["value"]}
            elif delta["op"] == "replace":
                assert world[key]["version"] == delta["expected_version"]
                world[key] = {**world[key], "version": delta["expected_version"] + 1}
                world[key]["value"] = delta["value"]
            else:
                assert world[key]["version"] == delta["expected_version"]
                del world[key]
    return [world[key] for key in sorted(world)]


def test_long_run_world_at_matches_an_independent_fold_across_checkpoints(
    server: ServerProcess,
) -> None:
    """A run of ~1800 entries (three turns of 300 kv_set intents over 40 keys, so the server
    takes world checkpoints) has world/at equal, at sampled seqs on both sides of any
    checkpoint and at the head, to a fold of the exported ledger's deltas done here; equal
    worlds have equal hashes and different worlds different ones; replay agrees at the head."""
    client = server.client()
    turns = [
        {
            "intents": [
                {"tool": "kv_set", "args": {"key": f"k{i % 40}", "value": turn * 1000 + i}}
                for i in range(300)
            ]
        }
        for turn in range(3)
    ]
    run_id = create_run(
        client,
        {
            "task": "many writes",
            "tool_scopes": ["kv_set"],
            "cognition": {"provider": "mock", "script": [*turns, {"final": "written"}]},
        },
    )
    record = wait_terminal(client, run_id, timeout_s=60)
    assert record["status"] == "completed", record
    head = record["summary"]["head_seq"]
    assert record["summary"]["commits"] == 900
    assert head == 3 * 601 + 2
    envelopes = [json.loads(line) for line in ledger_lines(client, run_id)]
    assert len(envelopes) == head + 1

    seqs = sorted({*range(0, head + 1, 37), *range(1000, 1100, 3), head - 1, head})
    by_state: dict[str, str] = {}
    for seq in seqs:
        response = client.get(f"/runs/{run_id}/world/at", params={"seq": seq})
        assert response.status_code == 200, response.text
        at = response.json()
        expected = _fold(envelopes[: seq + 1])
        got = sorted(at["resources"], key=lambda r: (r["kind"], r["id"]))
        assert got == expected, seq
        state = json.dumps(expected, sort_keys=True)
        assert by_state.setdefault(state, at["world_hash"]) == at["world_hash"], seq
    assert len(set(by_state.values())) == len(by_state)

    world = client.get(f"/runs/{run_id}/world").json()
    assert sorted(world["resources"], key=lambda r: (r["kind"], r["id"])) == _fold(envelopes)
    replay = client.get(f"/runs/{run_id}/replay").json()
    assert replay["verified"] is True
    assert replay["world_hash"] == world["world_hash"]
    assert replay["world_matches"] is True
