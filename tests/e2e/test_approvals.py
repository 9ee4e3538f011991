"""Approvals with quorum, roles and tenants, and writ revocation, over real HTTP.

One server per module holds API keys of two tenants (tests/e2e/_authority.py: operators a1 and
a2, a viewer and an admin of A; an operator and an admin of B) and a single policy that makes
every tool call wait for two distinct approvers on channel `ops`. Every test starts its own
runs, so the tests hold in any order and across workers.
"""

from __future__ import annotations

from typing import Any

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

SET = {"tool": "kv_set", "args": {"key": "colour", "value": "green"}}
FINAL = {"final": "done"}


@pytest.fixture(scope="module")
def quorum_server(
    module_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    """A keyed server whose only policy needs two approvals on `ops` for every call."""
    folder = policy_dir(tmp_path_factory.mktemp("quorum-policy"), quorum=QUORUM_POLICY)
    return module_server_factory({"THYMOS_API_KEYS": KEYS_ENV, "THYMOS_POLICY_DIR": str(folder)})


def _waiting_run(server: ServerProcess) -> tuple[httpx.Client, str, dict[str, Any]]:
    """A run of tenant A (created by a1) whose kv_set waits on `ops`; its one pending approval."""
    a1 = as_key(server, "a1")
    run_id = create_run(
        a1, {"task": "set a colour", "tool_scopes": ["kv_*"], "cognition": {"script": [SET, FINAL]}}
    )
    (pending,) = wait_pending(a1, run_id)
    return a1, run_id, pending


def _parked(client: httpx.Client, run_id: str) -> None:
    """Wait until the waiting run holds no actor (it is woken by the next vote)."""
    wait_for(
        lambda: client.get(f"/runs/{run_id}/execution").json()["phase"] == "parked" or None,
        timeout_s=15,
        what="the waiting run to be parked",
    )


def _vote(client: httpx.Client, run_id: str, approve: bool, **extra: Any) -> httpx.Response:
    return client.post(f"/runs/{run_id}/approvals/ops", json={"approve": approve, **extra})


def test_quorum_of_two_distinct_operators_is_needed_and_each_vote_is_recorded(
    quorum_server: ServerProcess,
) -> None:
    """A call waits with its proposal shown in the execution session; a viewer may not vote
    (403), another tenant cannot see the run (404), one approval leaves it waiting, the same
    approver twice is 409, the second distinct approver completes the run, and the ledger holds
    both approvals naming their key and bound to the intent's id."""
    a1, run_id, pending = _waiting_run(quorum_server)
    assert pending["channel"] == "ops"
    assert pending["tool"] == "kv_set"
    assert pending["arguments_preview"] == '{"key":"colour","value":"green"}'
    assert (pending["approvals"], pending["required"]) == (0, 2)
    proposal_id = pending["proposal_id"]
    assert a1.get(f"/runs/{run_id}").json()["status"] == "waiting_approval"

    assert_error(_vote(as_key(quorum_server, "a-viewer"), run_id, True), 403)
    assert_error(_vote(as_key(quorum_server, "b1"), run_id, True), 404, "run_not_found")

    first = _vote(a1, run_id, True, proposal_id=proposal_id, reason="looks fine")
    assert first.status_code == 200, first.text
    assert (first.json()["approvals"], first.json()["required"]) == (1, 2)
    assert first.json()["decided"] is False
    session = a1.get(f"/runs/{run_id}/execution").json()
    assert session["status"] == "waiting_approval"
    assert session["pending_approvals"][0]["approvals"] == 1
    # Between votes the run holds no actor; the inbox and its session still show the vote.
    _parked(a1, run_id)
    session = a1.get(f"/runs/{run_id}/execution").json()
    assert session["pending_approvals"][0]["approvals"] == 1
    (inbox,) = [p for p in a1.get("/approvals").json()["approvals"] if p["run_id"] == run_id]
    assert inbox["approvals"] == 1

    assert_error(_vote(a1, run_id, True), 409, "duplicate_approval")

    second = _vote(as_key(quorum_server, "a2"), run_id, True)
    assert second.status_code == 200, second.text
    assert second.json()["decided"] is True
    record = wait_terminal(a1, run_id)
    assert record["status"] == "completed", record
    assert record["summary"]["commits"] == 1

    items = entries(a1, run_id)
    (intent,) = of_kind(items, "intent")
    assert intent["id"] == proposal_id
    approvals = of_kind(items, "approval")
    assert [a["payload"]["approver"] for a in approvals] == ["a1", "a2"]
    assert all(a["payload"]["proposal_id"] == proposal_id for a in approvals)
    assert all(a["payload"]["approve"] is True for a in approvals)
    assert approvals[0]["payload"]["reason"] == "looks fine"
    (commit,) = of_kind(items, "commit")
    assert commit["payload"]["approved_by"] == ["a1", "a2"]
    assert commit["payload"]["intent"] == proposal_id


def test_one_denial_vetoes_the_proposal_and_the_run_continues(
    quorum_server: ServerProcess,
) -> None:
    """A single denial rejects the proposal `approval_denied` although the quorum is two; the
    tool never runs and the run goes on to its final answer."""
    a1, run_id, pending = _waiting_run(quorum_server)
    denied = _vote(a1, run_id, False, reason="not today")
    assert denied.status_code == 200, denied.text
    assert denied.json()["decided"] is True
    record = wait_terminal(a1, run_id)
    assert record["status"] == "completed", record
    assert record["summary"]["final_answer"] == "done"
    items = entries(a1, run_id)
    (rejection,) = of_kind(items, "rejection")
    assert rejection["payload"]["reason"] == "approval_denied"
    assert rejection["payload"]["intent"] == pending["proposal_id"]
    assert rejection["payload"]["details"]["approver"] == "a1"
    assert of_kind(items, "commit") == []
    assert any(t["seq"] > rejection["seq"] for t in of_kind(items, "turn"))


def test_a_vote_with_nothing_pending_on_the_channel_is_404_approval_not_found(
    quorum_server: ServerProcess,
) -> None:
    """Voting on a channel nothing waits on, or naming another proposal id, or on a finished
    run, is 404 approval_not_found."""
    a1, run_id, _ = _waiting_run(quorum_server)
    other = a1.post(f"/runs/{run_id}/approvals/other", json={"approve": True})
    assert_error(other, 404, "approval_not_found")
    assert_error(_vote(a1, run_id, True, proposal_id="0" * 64), 404, "approval_not_found")
    assert _vote(a1, run_id, False).status_code == 200
    wait_terminal(a1, run_id)
    assert_error(_vote(as_key(quorum_server, "a2"), run_id, True), 404, "approval_not_found")


def test_replay_verifies_and_lists_the_policy_hash_and_a_required_other_hash_fails(
    quorum_server: ServerProcess,
) -> None:
    """Replay of an approved run is verified and lists the active policy-set hash; requiring
    another hash makes it verified false with policy_mismatch failures (still a 200)."""
    a1, run_id, _ = _waiting_run(quorum_server)
    assert _vote(a1, run_id, True).status_code == 200
    assert _vote(as_key(quorum_server, "a2"), run_id, True).status_code == 200
    wait_terminal(a1, run_id)
    policy_hash = a1.get("/policy").json()["policy_hash"]
    report = a1.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report
    assert report["policy_hashes"] == [policy_hash]
    assert report["world_matches"] is True
    mismatch = a1.get(f"/runs/{run_id}/replay", params={"require_policy": "f" * 64})
    assert mismatch.status_code == 200
    assert mismatch.json()["verified"] is False
    codes = {f["code"] for f in mismatch.json()["failures"]}
    assert codes == {"policy_mismatch"}, mismatch.json()["failures"]


def test_revoke_needs_an_admin_of_the_writs_tenant_and_a_known_writ(
    quorum_server: ServerProcess,
) -> None:
    """POST /writs/:id/revoke by an operator is 403, by an admin of another tenant 404 (the writ
    is invisible), for an unknown id 404, and by an admin of the tenant 200; a second
    revocation is 200 with already_revoked true."""
    a1, run_id, _ = _waiting_run(quorum_server)
    writ_id = writ_id_of(a1, run_id)
    path = f"/writs/{writ_id}/revoke"
    assert_error(a1.post(path), 403)
    assert_error(as_key(quorum_server, "a-viewer").post(path), 403)
    assert_error(as_key(quorum_server, "b-admin").post(path), 404, "writ_not_found")
    admin = as_key(quorum_server, "a-admin")
    assert_error(admin.post(f"/writs/{'0' * 64}/revoke"), 404, "writ_not_found")
    assert_error(admin.post("/writs/not-a-writ/revoke"), 404, "writ_not_found")
    first = admin.post(path, json={"reason": "compromised"})
    assert first.status_code == 200, first.text
    assert first.json() == {
        "writ_id": writ_id,
        "run_id": run_id,
        "revoked": True,
        "already_revoked": False,
    }
    again = admin.post(path)
    assert again.status_code == 200, again.text
    assert again.json()["already_revoked"] is True
    # The waiting run decided again at the revocation: its proposal was refused `revoked`.
    assert wait_terminal(a1, run_id)["status"] == "completed"
    assert_error(_vote(a1, run_id, False), 404, "approval_not_found")


def test_a_revoked_writs_pending_proposal_is_rejected_revoked_when_approved(
    quorum_server: ServerProcess,
) -> None:
    """Revoking the writ of a run whose proposal waits (parked, with no actor) wakes it: every
    stage is compiled again and the proposal is rejected `revoked` at once, not when votes
    come; a vote then finds nothing pending; the tool never runs."""
    a1, run_id, pending = _waiting_run(quorum_server)
    _parked(a1, run_id)
    revoked = as_key(quorum_server, "a-admin").post(f"/writs/{writ_id_of(a1, run_id)}/revoke")
    assert revoked.status_code == 200, revoked.text
    record = wait_terminal(a1, run_id)
    assert record["status"] == "completed", record
    assert_error(_vote(a1, run_id, True), 404, "approval_not_found")
    items = entries(a1, run_id)
    assert of_kind(items, "approval") == []
    (rejection,) = of_kind(items, "rejection")
    assert rejection["payload"]["reason"] == "revoked"
    assert rejection["payload"]["intent"] == pending["proposal_id"]
    assert of_kind(items, "commit") == []
    assert a1.get(f"/runs/{run_id}/world").json()["resources"] == []


def test_root_key_policy_and_schema_are_published(quorum_server: ServerProcess) -> None:
    """GET /writs/root-key gives the Ed25519 key every run's writ names; GET /policy the files
    and hash; GET /policy/schema the Cedar schema text."""
    a1, run_id, _ = _waiting_run(quorum_server)
    root = a1.get("/writs/root-key").json()
    assert root["algorithm"] == "ed25519"
    first = entries(a1, run_id)[0]
    assert first["payload"]["writ"]["root_public_key"] == root["public_key"]
    assert a1.get("/policy").json()["files"] == ["quorum.cedar"]
    schema = a1.get("/policy/schema")
    assert schema.status_code == 200
    assert "namespace Thymos" in schema.text
    assert _vote(a1, run_id, False).status_code == 200
    wait_terminal(a1, run_id)
