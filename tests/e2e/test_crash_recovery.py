"""Crash recovery: a server killed with SIGKILL mid-run loses nothing, and an external call whose
outcome the crash left unknown runs again only if its tool is idempotent or an operator says so.

The external tools are manifest shell tools that append a line to a file in the workspace, then
hold while a `hold` file exists: the test kills the server while the tool holds, that is between
its durable `execution_started` entry and its commit, the one window where the outcome is
unknown. The file's lines count how often the effect happened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._harness import (
    ServerProcess,
    Sse,
    alive_with,
    assert_error,
    create_run,
    read_events,
    wait_for,
    wait_terminal,
)
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

HOLD = "while [ -e hold ]; do sleep 0.02; done"


def _manifest(name: str, effects: str, *, idempotent: bool) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1.0.0",
        "description": f"appends a line to {effects}",
        "effect_class": "external",
        "risk_class": "medium",
        "idempotent": idempotent,
        "input_schema": {
            "type": "object",
            "properties": {"line": {"type": "string"}},
            "required": ["line"],
            "additionalProperties": False,
        },
        "executor": {
            "kind": "shell",
            "command_template": f"echo {{line}} >> {effects}; {HOLD}",
            "timeout_secs": 120,
        },
    }


def _server(server_factory: ServerFactory, tmp_path: Path, **env: str) -> ServerProcess:
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    for name, effects, idempotent in (
        ("append_once", "effects.txt", False),
        ("append_idempotent", "idempotent.txt", True),
    ):
        manifest = _manifest(name, effects, idempotent=idempotent)
        (folder / f"{name}.json").write_text(json.dumps(manifest))
    return server_factory({"THYMOS_TOOL_MANIFEST_DIRS": str(folder), **env})


def _run(client: httpx.Client, tool: str) -> str:
    script = [
        {"tool": "kv_set", "args": {"key": "before", "value": 1}},
        {"tool": tool, "args": {"line": "effect"}},
        {"tool": "kv_set", "args": {"key": "after", "value": 2}},
        {"final": "done"},
    ]
    body = {
        "task": "crash recovery",
        "tool_scopes": ["kv_set", tool],
        "cognition": {"provider": "mock", "script": script},
    }
    return create_run(client, body)


def _lines(server: ServerProcess, name: str) -> list[str]:
    path = server.workspace / name
    return path.read_text().splitlines() if path.exists() else []


def _kill_while_held(server: ServerProcess, run_id: str, effects: str) -> None:
    """Wait until the tool has appended its line and holds, then SIGKILL the server: its
    `execution_started` is durable (it is written before the tool starts), its commit is not."""
    client = server.client()
    wait_for(
        lambda: True if _lines(server, effects) else None,
        timeout_s=30,
        what="the external tool to take effect",
    )
    started = [e.event for e in read_events(client, f"/runs/{run_id}/events", limit=7)]
    assert started[-1] == "execution_started", started
    server.kill()
    # The tool's command died with the server (it is killed when its parent dies): nothing
    # runs that no ledger will record.
    wait_for(
        lambda: True if not alive_with(f">> {effects}") else None,
        timeout_s=10,
        what="the tool's process to die with the server",
    )


def _events(client: httpx.Client, run_id: str) -> list[Sse]:
    """The run's entries so far (the stream of a run still waiting does not end by itself)."""
    head = client.get(f"/runs/{run_id}").json()["summary"]["head_seq"]
    return read_events(client, f"/runs/{run_id}/events", limit=head + 1)


def _kinds(client: httpx.Client, run_id: str) -> list[str]:
    return [e.event or "" for e in _events(client, run_id)]


def _payloads(client: httpx.Client, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [e.json()["payload"] for e in _events(client, run_id) if e.event == kind]


def _waiting_on_recovery(client: httpx.Client, run_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        execution = client.get(f"/runs/{run_id}/execution").json()
        if execution["status"] != "waiting_approval":
            return None
        (pending,) = execution["pending_approvals"]
        return dict(pending)

    pending = wait_for(probe, timeout_s=30, what="the operator to be asked")
    assert pending["channel"] == "recovery"
    assert pending["tool"] == "append_once"
    assert "outcome is unknown" in pending["reason"]
    inbox = client.get("/approvals", params={"channel": "recovery"}).json()
    assert [a["run_id"] for a in inbox["approvals"]] == [run_id]
    return pending


def _verified(client: httpx.Client, run_id: str) -> None:
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report["failures"]
    assert report["world_matches"] is True


def test_sigkill_between_execution_start_and_commit_asks_the_operator_who_denies(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """SIGKILL while a non-idempotent external call holds; the server restarts with auto-resume
    off: the run is interrupted, the ledger verifies. Resumed by hand, the run does not run the
    call again but asks on the recovery channel; the operator denies; the call is recorded as
    failed with its outcome unknown, the run goes on and completes, the effect happened once."""
    server = _server(server_factory, tmp_path, THYMOS_AUTO_RESUME="false")
    (server.workspace / "hold").touch()
    client = server.client()
    run_id = _run(client, "append_once")
    _kill_while_held(server, run_id, "effects.txt")
    (server.workspace / "hold").unlink()

    server.start()
    client = server.client()
    record = client.get(f"/runs/{run_id}").json()
    assert (record["status"], record["summary"]["terminated_by"]) == ("failed", "interrupted")
    _verified(client, run_id)

    assert client.post(f"/runs/{run_id}/resume").status_code == 202
    pending = _waiting_on_recovery(client, run_id)
    assert _lines(server, "effects.txt") == ["effect"]
    # The proposal is the execution whose outcome is unknown.
    (started,) = [e for e in _events(client, run_id) if e.event == "execution_started"]
    assert pending["proposal_id"] == started.json()["id"]

    denied = client.post(
        f"/runs/{run_id}/approvals/recovery", json={"approve": False, "reason": "it went out"}
    )
    assert denied.status_code == 200, denied.text
    final = wait_terminal(client, run_id, timeout_s=30)
    assert final["status"] == "completed", final
    assert final["summary"]["final_answer"] == "done"
    assert _lines(server, "effects.txt") == ["effect"]
    (failure,) = _payloads(client, run_id, "tool_failure")
    assert failure["error"]["code"] == "outcome_unknown"
    assert failure["tool"] == "append_once"
    world = client.get(f"/runs/{run_id}/world").json()
    assert sorted(r["id"] for r in world["resources"]) == ["after", "before"]
    _verified(client, run_id)


def test_sigkill_then_auto_resume_asks_and_an_approval_runs_the_call_again(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """With auto-resume (the default) the restarted server resumes the run by itself and asks
    the operator; a second vote is 409-free only for another key, so one approval decides; the
    call runs again (the operator said so: two lines), commits, and the run completes. The
    resumption names the server as the one that asked."""
    server = _server(server_factory, tmp_path)
    (server.workspace / "hold").touch()
    run_id = _run(server.client(), "append_once")
    _kill_while_held(server, run_id, "effects.txt")
    (server.workspace / "hold").unlink()

    server.start()
    client = server.client()
    _waiting_on_recovery(client, run_id)
    assert _lines(server, "effects.txt") == ["effect"]
    (resumption,) = _payloads(client, run_id, "resumption")
    assert resumption["requested_by"] == "server (crash recovery)"
    assert resumption["previous_terminated_by"] == "interrupted"

    # The question survives another restart (it is in the ledger, not in memory).
    server.restart()
    client = server.client()
    _waiting_on_recovery(client, run_id)
    approved = client.post(f"/runs/{run_id}/approvals/recovery", json={"approve": True})
    assert approved.status_code == 200, approved.text
    assert approved.json()["decided"] is True
    final = wait_terminal(client, run_id, timeout_s=30)
    assert final["status"] == "completed", final
    assert _lines(server, "effects.txt") == ["effect", "effect"]
    kinds = _kinds(client, run_id)
    assert kinds.count("execution_started") == 2
    assert kinds.count("commit") == 3
    (approval,) = _payloads(client, run_id, "approval")
    assert approval["channel"] == "recovery"
    _verified(client, run_id)


def test_sigkill_with_an_idempotent_tool_runs_it_again_under_the_same_key(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """An idempotent external tool whose outcome is unknown runs again at once after the
    restart, under the same idempotency key, without asking anyone."""
    server = _server(server_factory, tmp_path)
    (server.workspace / "hold").touch()
    run_id = _run(server.client(), "append_idempotent")
    _kill_while_held(server, run_id, "idempotent.txt")
    (server.workspace / "hold").unlink()

    server.start()
    client = server.client()
    final = wait_terminal(client, run_id, timeout_s=30)
    assert final["status"] == "completed", final
    assert _lines(server, "idempotent.txt") == ["effect", "effect"]
    started = _payloads(client, run_id, "execution_started")
    assert len(started) == 2
    assert {s["idempotency_key"] for s in started} == {started[0]["intent"]}
    assert all(s["idempotent"] is True for s in started)
    assert "approval" not in _kinds(client, run_id)
    _verified(client, run_id)


def test_sigkill_during_a_model_turn_resumes_and_completes(server_factory: ServerFactory) -> None:
    """SIGKILL elsewhere (during a model turn, after a commit): the restarted server resumes
    the run from its ledger; it completes with both commits and one interruption on record."""
    server = server_factory()
    client = server.client()
    script = [
        {"tool": "kv_set", "args": {"key": "a", "value": 1}},
        {"text": "thinking", "sleep_ms": 5000},  # the window the kill falls in
        {"tool": "kv_set", "args": {"key": "b", "value": 2}},
        {"final": "done"},
    ]
    body = {"task": "crash", "tool_scopes": ["kv_set"], "cognition": {"script": script}}
    run_id = create_run(client, body)
    read_events(client, f"/runs/{run_id}/events", limit=4)  # the first commit is durable
    server.kill()

    server.start()
    client = server.client()
    final = wait_terminal(client, run_id, timeout_s=30)
    assert final["status"] == "completed", final
    assert final["summary"]["commits"] == 2
    ends = _payloads(client, run_id, "run_ended")
    assert [e["terminated_by"] for e in ends] == ["interrupted", "final_answer"]
    _verified(client, run_id)


def test_a_vote_on_the_recovery_channel_of_a_run_that_asks_nothing_is_404(
    server: ServerProcess,
) -> None:
    """The recovery channel is an approval channel like any other: nothing pending there is
    404."""
    client = server.client()
    body = {"task": "t", "tool_scopes": ["kv_set"], "cognition": {"script": [{"final": "x"}]}}
    run_id = create_run(client, body)
    wait_terminal(client, run_id)
    assert_error(
        client.post(f"/runs/{run_id}/approvals/recovery", json={"approve": True}),
        404,
        "approval_not_found",
    )
