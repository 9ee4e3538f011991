"""Pending approvals and revocations survive the server: SIGKILL or a clean stop, then a new
process on the same data dir (same root key, same ledger) carries on where the old one left off.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e._authority import (
    KEYS_ENV,
    QUORUM_POLICY,
    as_key,
    entries,
    of_kind,
    policy_dir,
    wait_pending,
    writ_id_of,
)
from tests.e2e._harness import ServerProcess, assert_error, create_run, wait_for, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

SCRIPT = [{"tool": "kv_set", "args": {"key": "k", "value": 1}}, {"final": "done"}]


def _server(server_factory: ServerFactory, tmp_path: Path) -> ServerProcess:
    folder = policy_dir(tmp_path / "policy", quorum=QUORUM_POLICY)
    return server_factory({"THYMOS_API_KEYS": KEYS_ENV, "THYMOS_POLICY_DIR": str(folder)})


def _start(server: ServerProcess) -> tuple[httpx.Client, str]:
    a1 = as_key(server, "a1")
    run_id = create_run(
        a1, {"task": "set k", "tool_scopes": ["kv_*"], "cognition": {"script": SCRIPT}}
    )
    return a1, run_id


def _vote(client: httpx.Client, run_id: str) -> httpx.Response:
    """Approve on `ops`, retrying while the restarted server is still loading the run (503)."""

    def probe() -> httpx.Response | None:
        response = client.post(f"/runs/{run_id}/approvals/ops", json={"approve": True})
        return None if response.status_code == 503 else response

    return wait_for(probe, timeout_s=10.0, what="the run to be loaded", interval_s=0.1)


def test_pending_approval_survives_sigkill_and_the_approved_run_completes_and_replays(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A run waiting for approval (one of two votes in) is still waiting after SIGKILL and a
    restart on the same data dir, with its proposal and vote count; the second approval then
    succeeds, the run completes, and replay verifies under the same root key."""
    server = _server(server_factory, tmp_path)
    a1, run_id = _start(server)
    (before,) = wait_pending(a1, run_id)
    assert _vote(a1, run_id).json()["approvals"] == 1
    root_key = a1.get("/writs/root-key").json()["public_key"]

    server.kill()
    server.start()

    a1 = as_key(server, "a1")
    assert a1.get("/writs/root-key").json()["public_key"] == root_key
    (after,) = wait_pending(a1, run_id)
    assert after["proposal_id"] == before["proposal_id"]
    assert (after["channel"], after["tool"]) == ("ops", "kv_set")
    assert (after["approvals"], after["required"]) == (1, 2)
    second = _vote(as_key(server, "a2"), run_id)
    assert second.status_code == 200, second.text
    assert second.json()["decided"] is True
    record = wait_terminal(a1, run_id)
    assert record["status"] == "completed", record
    assert record["summary"]["commits"] == 1
    report = a1.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report
    assert report["world_matches"] is True
    approvers = [a["payload"]["approver"] for a in of_kind(entries(a1, run_id), "approval")]
    assert approvers == ["a1", "a2"]


def test_revocation_persists_across_a_restart_and_spares_new_runs(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A writ revoked before a restart stays revoked after it: the restarted server re-decides
    the revoked run's pending proposal and rejects it `revoked` without waiting for votes (a vote
    then finds nothing pending, 404); revoking it again says already_revoked; a new run's writ
    is unaffected and its approved call commits."""
    server = _server(server_factory, tmp_path)
    a1, run_id = _start(server)
    wait_pending(a1, run_id)
    writ_id = writ_id_of(a1, run_id)
    revoked = as_key(server, "a-admin").post(f"/writs/{writ_id}/revoke")
    assert revoked.status_code == 200, revoked.text

    server.kill()
    server.start()

    a1, a2 = as_key(server, "a1"), as_key(server, "a2")
    record = wait_terminal(a1, run_id)
    assert record["status"] == "completed", record
    (rejection,) = of_kind(entries(a1, run_id), "rejection")
    assert rejection["payload"]["reason"] == "revoked"
    assert rejection["payload"]["details"] == {"writ_id": writ_id}
    assert of_kind(entries(a1, run_id), "commit") == []
    assert_error(_vote(a1, run_id), 404, "approval_not_found")
    again = as_key(server, "a-admin").post(f"/writs/{writ_id}/revoke")
    assert again.status_code == 200, again.text
    assert again.json()["already_revoked"] is True

    _, fresh = _start(server)
    wait_pending(a1, fresh)
    assert writ_id_of(a1, fresh) != writ_id
    assert _vote(a1, fresh).status_code == 200
    assert _vote(a2, fresh).status_code == 200
    record = wait_terminal(a1, fresh)
    assert record["summary"]["commits"] == 1, record
    assert of_kind(entries(a1, fresh), "rejection") == []
