"""Every compiler rejection reason, provoked over real HTTP against `thymos serve`.

Each test finds the reason in the ledger (the `rejection` entry's payload, bound to its intent)
and proves cognition was told: the run goes on to another turn after the rejection, which the
mock takes only after the rejection is in its context (the in-process counterpart,
tests/integration/test_rejections_in_context.py, inspects that context directly).

`expired` cannot be reached by an ordinary intent: the wall-clock budget that bounds the writ's
window ends the run at the safe point before the intent is compiled. It is reached here by an
approval that comes after the writ expired (approval re-compiles every stage). `not_yet_valid`
needs a clock that runs backwards and is covered in-process only.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.e2e._authority import entries, of_kind, policy_dir, wait_pending, writ_id_of
from tests.e2e._harness import ServerProcess, create_run, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

POLICY = """\
@id("permit-all")
permit(principal, action, resource);

@id("forbid-kv-set")
forbid(principal, action, resource == Thymos::Tool::"kv_set");

@id("grep-needs-ops")
@approval("ops")
permit(principal, action, resource == Thymos::Tool::"grep");
"""
GREP = {"tool": "grep", "args": {"pattern": "alpha"}}
FINAL = {"final": "noted the rejection"}


@pytest.fixture(scope="module")
def governed(
    module_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    """An open server whose policy forbids kv_set and makes grep wait on channel `ops`."""
    folder = policy_dir(tmp_path_factory.mktemp("rejection-policy"), main=POLICY)
    return module_server_factory({"THYMOS_POLICY_DIR": str(folder)})


def _run(client: httpx.Client, script: list[dict[str, Any]], **fields: Any) -> str:
    return create_run(
        client, {"task": "provoke a rejection", "cognition": {"script": script}, **fields}
    )


def _assert_rejected_then_next_turn(
    client: httpx.Client, run_id: str, reason: str, tool: str
) -> dict[str, Any]:
    """The run completed; its ledger holds one rejection with `reason` for its `tool` intent and
    a turn after it (cognition was asked again, with the rejection in its history)."""
    record = wait_terminal(client, run_id)
    assert record["status"] == "completed", record
    assert record["summary"]["final_answer"] == FINAL["final"]
    assert record["summary"]["rejections"] >= 1
    items = entries(client, run_id)
    rejections = [r for r in of_kind(items, "rejection") if r["payload"]["reason"] == reason]
    assert len(rejections) == 1, of_kind(items, "rejection")
    rejection = rejections[0]
    intent = next(e for e in items if e["id"] == rejection["payload"]["intent"])
    assert intent["kind"] == "intent"
    assert intent["payload"]["tool"] == tool == rejection["payload"]["tool"]
    assert rejection["payload"]["message"]
    assert rejection["payload"]["compiler"].startswith("thymos-compiler/")
    later_turns = [t for t in of_kind(items, "turn") if t["seq"] > rejection["seq"]]
    assert later_turns, "cognition was not asked again after the rejection"
    assert later_turns[0]["payload"]["final"] == FINAL["final"]
    return rejection


def test_unknown_tool_is_rejected_and_the_run_continues(governed: ServerProcess) -> None:
    """An intent naming no registered tool is rejected `unknown_tool`; the run takes its next
    turn."""
    client = governed.client()
    run_id = _run(client, [{"tool": "nope", "args": {}}, FINAL])
    rejection = _assert_rejected_then_next_turn(client, run_id, "unknown_tool", "nope")
    assert rejection["payload"]["details"] == {"tool": "nope"}


def test_registered_tool_outside_scopes_is_rejected_out_of_scope(governed: ServerProcess) -> None:
    """A registered tool the run's scopes do not cover is rejected `out_of_scope`."""
    client = governed.client()
    run_id = _run(
        client,
        [{"tool": "kv_set", "args": {"key": "a", "value": 1}}, FINAL],
        tool_scopes=["kv_get"],
    )
    _assert_rejected_then_next_turn(client, run_id, "out_of_scope", "kv_set")


def test_effect_above_the_ceiling_is_rejected_effect_above_ceiling(
    governed: ServerProcess,
) -> None:
    """A write tool in scope on a run whose effect ceiling is `read` is rejected
    `effect_above_ceiling`."""
    client = governed.client()
    run_id = _run(
        client,
        [{"tool": "kv_set", "args": {"key": "a", "value": 1}}, FINAL],
        tool_scopes=["kv_*"],
        effect_ceiling="read",
    )
    _assert_rejected_then_next_turn(client, run_id, "effect_above_ceiling", "kv_set")


def test_intent_past_the_tool_call_budget_is_rejected_budget_exhausted(
    governed: ServerProcess,
) -> None:
    """With budget.tool_calls 1 the first of two reads commits and the second is rejected
    `budget_exhausted`."""
    client = governed.client()
    read = {"tool": "fs_read", "args": {"path": "README.md"}}
    run_id = _run(client, [{"intents": [read, read]}, FINAL], budget={"tool_calls": 1})
    _assert_rejected_then_next_turn(client, run_id, "budget_exhausted", "fs_read")
    assert len(of_kind(entries(client, run_id), "commit")) == 1


def test_arguments_against_the_schema_are_rejected_invalid_arguments(
    governed: ServerProcess,
) -> None:
    """Arguments that do not match the tool's JSON Schema are rejected `invalid_arguments`,
    with the schema errors in the details."""
    client = governed.client()
    run_id = _run(client, [{"tool": "fs_read", "args": {"path": 7, "extra": True}}, FINAL])
    rejection = _assert_rejected_then_next_turn(client, run_id, "invalid_arguments", "fs_read")
    assert rejection["payload"]["details"]["errors"]


def test_forbid_policy_rejects_policy_denied_naming_the_policy(governed: ServerProcess) -> None:
    """A call a `forbid` policy matches is rejected `policy_denied`; the rejection names the
    determining policy and the active policy-set hash."""
    client = governed.client()
    run_id = _run(
        client, [{"tool": "kv_set", "args": {"key": "a", "value": 1}}, FINAL], tool_scopes=["kv_*"]
    )
    rejection = _assert_rejected_then_next_turn(client, run_id, "policy_denied", "kv_set")
    assert "forbid-kv-set" in rejection["payload"]["policies"]
    assert rejection["payload"]["policy_hash"] == client.get("/policy").json()["policy_hash"]


def test_a_denial_vote_rejects_approval_denied(governed: ServerProcess) -> None:
    """A proposal waiting for approval that an approver denies is rejected `approval_denied`
    (naming the approver); the run continues to its final answer."""
    client = governed.client()
    run_id = _run(client, [GREP, FINAL])
    wait_pending(client, run_id)
    vote = client.post(f"/runs/{run_id}/approvals/ops", json={"approve": False, "reason": "no"})
    assert vote.status_code == 200, vote.text
    assert vote.json()["decided"] is True
    rejection = _assert_rejected_then_next_turn(client, run_id, "approval_denied", "grep")
    assert rejection["payload"]["details"]["approver"] == "anonymous"


def test_revoking_the_writ_of_a_waiting_run_rejects_its_proposal_revoked(
    governed: ServerProcess,
) -> None:
    """Revoking the writ of a run that waits for approval makes it decide again at once (every
    stage is compiled again): the proposal is rejected `revoked`, a vote then finds nothing
    pending, and the tool never runs."""
    client = governed.client()
    run_id = _run(client, [GREP, FINAL])
    wait_pending(client, run_id)
    writ_id = writ_id_of(client, run_id)
    revoked = client.post(f"/writs/{writ_id}/revoke", json={"reason": "test"})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["run_id"] == run_id
    rejection = _assert_rejected_then_next_turn(client, run_id, "revoked", "grep")
    vote = client.post(f"/runs/{run_id}/approvals/ops", json={"approve": True})
    assert vote.status_code == 404, vote.text
    assert rejection["payload"]["details"] == {"writ_id": writ_id}
    assert of_kind(entries(client, run_id), "commit") == []


def test_wall_clock_budget_ends_the_run_during_a_turn_that_outlasts_it(
    governed: ServerProcess,
) -> None:
    """A model turn that outlasts budget.wall_clock_ms is cut short when the budget runs out:
    the run ends failed, terminated_by budget_exhausted, and the intent the turn would have
    proposed is never recorded (no `expired` rejection is needed, because no call is made)."""
    client = governed.client()
    slow = {"tool": "fs_read", "args": {"path": "README.md"}, "sleep_ms": 2500}
    run_id = _run(client, [slow, FINAL], budget={"wall_clock_ms": 1500})
    record = wait_terminal(client, run_id)
    assert record["status"] == "failed", record
    assert record["summary"]["terminated_by"] == "budget_exhausted"
    items = entries(client, run_id)
    assert of_kind(items, "turn") == of_kind(items, "intent") == []
    assert of_kind(items, "rejection") == of_kind(items, "commit") == []
    assert of_kind(items, "run_ended")[0]["payload"]["terminated_by"] == "budget_exhausted"


def test_a_proposal_still_waiting_when_the_writ_expires_is_rejected_expired(
    governed: ServerProcess,
) -> None:
    """A proposal still waiting for approval when its writ's validity window (start +
    wall_clock_ms) closes is compiled again at that moment and rejected `expired`, without
    waiting for a vote; a late vote finds nothing pending; the run ends budget_exhausted."""
    client = governed.client()
    started = time.monotonic()
    run_id = _run(client, [GREP, FINAL], budget={"wall_clock_ms": 1000})
    wait_pending(client, run_id)
    record = wait_terminal(client, run_id)
    # The writ's window is start (whole seconds) + 1 s + 1 s grace: it ends within ~2-3 s.
    assert time.monotonic() - started < 10
    assert record["status"] == "failed", record
    assert record["summary"]["terminated_by"] == "budget_exhausted"
    items = entries(client, run_id)
    (rejection,) = of_kind(items, "rejection")
    assert rejection["payload"]["reason"] == "expired"
    assert rejection["payload"]["tool"] == "grep"
    assert of_kind(items, "commit") == []
    assert of_kind(items, "approval") == []
    late = client.post(f"/runs/{run_id}/approvals/ops", json={"approve": True})
    assert late.status_code == 404, late.text


def test_every_rejection_run_replays_verified(governed: ServerProcess) -> None:
    """Runs holding rejections verify under replay (each decision re-checked from the ledger)."""
    client = governed.client()
    run_id = _run(
        client,
        [{"tool": "nope", "args": {}}, {"tool": "kv_set", "args": {"key": "k", "value": 2}}, FINAL],
        tool_scopes=["kv_*"],
    )
    wait_terminal(client, run_id)
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report
    assert report["failures"] == []
