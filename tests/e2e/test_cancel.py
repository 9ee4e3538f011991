"""Cancel (`POST /runs/:id/cancel`) on the real server: prompt during a model call, during a
30-second `shell` command (its processes gone) and while waiting for approval (the proposal
void); recorded with who asked; commits already made stay; the ledger still verifies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e._authority import KEYS_ENV, as_key, entries, of_kind, policy_dir, wait_pending
from tests.e2e._harness import (
    ServerProcess,
    alive_with,
    assert_error,
    create_run,
    wait_for,
    wait_terminal,
)
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

POLICY = (
    '@id("permit-all")\npermit(principal, action, resource);\n'
    '@id("kv-needs-ops") @approval("ops")\n'
    'permit(principal, action, resource == Thymos::Tool::"kv_set")\n'
    'when { context.arguments like "*needs-approval*" };\n'
)


@pytest.fixture(scope="module")
def governed(
    module_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    folder = policy_dir(tmp_path_factory.mktemp("policy"), rules=POLICY)
    return module_server_factory({"THYMOS_POLICY_DIR": str(folder)})


def _cancelled(client: Any, run_id: str, reason: str | None = None) -> list[dict[str, Any]]:
    """Cancel the run, wait for its end; its entries (the end checked, the replay verified)."""
    response = client.post(
        f"/runs/{run_id}/cancel", json={"reason": reason} if reason is not None else None
    )
    assert response.status_code == 202, response.text
    assert response.json()["run_id"] == run_id
    record = wait_terminal(client, run_id, timeout_s=10)
    assert (record["status"], record["summary"]["terminated_by"]) == ("cancelled", "cancelled")
    items = entries(client, run_id)
    cancellation, ended = items[-2:]
    assert cancellation["kind"] == "cancellation" and ended["kind"] == "run_ended"
    assert cancellation["payload"]["requested_by"] == "anonymous"
    assert cancellation["payload"]["reason"] == reason
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report["failures"]
    assert_error(client.post(f"/runs/{run_id}/cancel"), 409, "run_not_active")
    return items


def test_cancel_during_a_model_call_keeps_the_commits_made(governed: ServerProcess) -> None:
    client = governed.client()
    run_id = create_run(
        client,
        {
            "task": "set then think long",
            "tool_scopes": ["kv_*"],
            "cognition": {
                "script": [
                    {"tool": "kv_set", "args": {"key": "a", "value": 1}},
                    {"sleep_ms": 600_000, "final": "never"},
                ]
            },
        },
    )
    wait_for(
        lambda: client.get(f"/runs/{run_id}").json()["summary"]["commits"] == 1 or None,
        timeout_s=10,
        what="the first commit",
    )
    items = _cancelled(client, run_id, reason="taking too long")
    assert len(of_kind(items, "turn")) == 1, "the turn in flight is not recorded"
    world = client.get(f"/runs/{run_id}/world").json()
    assert {r["id"]: r["value"] for r in world["resources"]} == {"a": 1}


def test_cancel_during_a_thirty_second_command_kills_it(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    folder = policy_dir(
        tmp_path, permit='@id("permit-all")\npermit(principal, action, resource);\n'
    )
    server = server_factory({"THYMOS_POLICY_DIR": str(folder)})
    client = server.client()
    marker = "30.4711"
    run_id = create_run(
        client,
        {
            "task": "wait",
            "tool_scopes": ["shell"],
            "cognition": {
                "script": [
                    {"tool": "shell", "args": {"command": f"sleep {marker}", "timeout_secs": 60}},
                    {"final": "done"},
                ]
            },
        },
    )
    wait_for(lambda: alive_with(f"sleep\0{marker}") or None, timeout_s=15, what="the command")
    items = _cancelled(client, run_id)
    failure = of_kind(items, "tool_failure")[0]["payload"]
    assert failure["tool"] == "shell" and failure["error"]["code"] == "stopped"
    wait_for(lambda: not alive_with(f"sleep\0{marker}") or None, timeout_s=10, what="its end")


def test_cancel_while_waiting_for_approval_voids_the_proposal_and_resume_asks_again(
    governed: ServerProcess,
) -> None:
    client = governed.client()
    run_id = create_run(
        client,
        {
            "task": "ask first",
            "tool_scopes": ["kv_*"],
            "cognition": {
                "script": [
                    {"tool": "kv_set", "args": {"key": "needs-approval", "value": 1}},
                    {"final": "done"},
                ]
            },
        },
    )
    wait_pending(client, run_id)
    items = _cancelled(client, run_id)
    assert of_kind(items, "suspension") and not of_kind(items, "commit")
    session = client.get(f"/runs/{run_id}/execution").json()
    assert session["pending_approvals"] == []
    late = client.post(f"/runs/{run_id}/approvals/ops", json={"approve": True})
    assert late.status_code in (404, 409), late.text

    # Resumed, the undecided call is decided again: it waits on a fresh suspension, and a vote
    # now counts for it alone; the run completes and its whole ledger replays.
    assert client.post(f"/runs/{run_id}/resume").status_code == 202
    wait_pending(client, run_id)
    voted = client.post(f"/runs/{run_id}/approvals/ops", json={"approve": True})
    assert voted.status_code == 200, voted.text
    record = wait_terminal(client, run_id)
    assert record["status"] == "completed", record
    items = entries(client, run_id)
    assert len(of_kind(items, "suspension")) == 2 and len(of_kind(items, "commit")) == 1
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report["failures"]


def test_cancel_needs_an_operator_of_the_runs_tenant(server_factory: ServerFactory) -> None:
    server = server_factory({"THYMOS_API_KEYS": KEYS_ENV})
    operator, viewer, other = as_key(server, "a1"), as_key(server, "a-viewer"), as_key(server, "b1")
    run_id = create_run(
        operator, {"task": "t", "cognition": {"script": [{"sleep_ms": 600_000, "final": "x"}]}}
    )
    assert_error(viewer.post(f"/runs/{run_id}/cancel"), 403, "forbidden")
    assert_error(other.post(f"/runs/{run_id}/cancel"), 404, "run_not_found")
    assert_error(
        operator.post(f"/runs/{run_id}/cancel", json={"reason": 3}), 422, "invalid_request"
    )
    assert operator.post(f"/runs/{run_id}/cancel").status_code == 202
    assert wait_terminal(operator, run_id)["status"] == "cancelled"
    cancellation = of_kind(entries(operator, run_id), "cancellation")[0]["payload"]
    assert cancellation["requested_by"] == "a1" and cancellation["key_id"]
