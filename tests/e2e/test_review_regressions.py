"""Regressions found in review: each test states a guarantee a defect once broke."""

from __future__ import annotations

import threading
import time
from typing import Any

import blake3
import httpx
import pytest

from ._authority import entries, of_kind, policy_dir, wait_pending
from ._harness import ServerProcess, assert_error, create_run, ledger_lines, wait_terminal
from .conftest import ServerFactory

pytestmark = pytest.mark.blackbox

APPROVE_ALL = '@approval("ops") permit(principal, action, resource);'


@pytest.fixture(scope="module")
def approving(
    module_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    folder = policy_dir(tmp_path_factory.mktemp("policy"), ops=APPROVE_ALL)
    return module_server_factory({"THYMOS_POLICY_DIR": str(folder)})


def _run(client: httpx.Client, script: list[dict[str, Any]], **fields: Any) -> str:
    return create_run(
        client,
        {
            "task": "review",
            "tool_scopes": ["kv_*"],
            "cognition": {"provider": "mock", "script": script},
            **fields,
        },
    )


@pytest.mark.parametrize(
    "body",
    [
        {"task": "x", "budget": {"wall_clock_ms": 10**15}},
        {"task": "x", "budget": {"tokens": 2**60}},
        {
            "task": "x",
            "cognition": {"script": [{"final": "y", "usage": {"input_tokens": 2**53 - 1}}]},
        },
    ],
    ids=["wall-clock-beyond-a-year", "budget-beyond-json-integers", "turn-usage-beyond-the-cap"],
)
def test_out_of_range_budgets_and_usage_are_refused_not_500(
    approving: ServerProcess, body: dict[str, Any]
) -> None:
    """Budgets and scripted usage outside their documented ranges are a 422, never a 500 (a huge
    wall-clock budget once overflowed the writ's date arithmetic)."""
    response = approving.client().post("/runs", json=body)
    assert response.status_code == 422, response.text
    assert_error(response, 422)


def test_a_denial_and_its_rejection_are_one_atomic_append(approving: ServerProcess) -> None:
    """A veto is recorded together with the rejection it causes (consecutive seqs, one append),
    so no crash can leave a denied proposal waiting to be approved again."""
    client = approving.client()
    run_id = _run(client, [{"tool": "kv_set", "args": {"key": "a", "value": 1}}, {"final": "done"}])
    wait_pending(client, run_id)
    vote = client.post(f"/runs/{run_id}/approvals/ops", json={"approve": False})
    assert vote.status_code == 200, vote.text
    wait_terminal(client, run_id)
    items = entries(client, run_id)
    (denial,) = of_kind(items, "approval")
    (rejection,) = of_kind(items, "rejection")
    assert rejection["seq"] == denial["seq"] + 1
    assert rejection["payload"]["reason"] == "approval_denied"
    assert of_kind(items, "commit") == []


def test_a_vote_on_a_proposal_already_decided_is_answered_at_once(approving: ServerProcess) -> None:
    """Two votes racing on a quorum-1 proposal: one decides it, the other is answered promptly
    (409 proposal_decided, or 404 once nothing is pending), not held until the run ends."""
    client = approving.client()
    script: list[dict[str, Any]] = [
        {"tool": "kv_set", "args": {"key": "a", "value": 1}},
        {"sleep_ms": 6000},
        {"final": "done"},
    ]
    run_id = _run(client, script)
    wait_pending(client, run_id)
    answers: list[tuple[int, float]] = []
    started = time.monotonic()

    def vote() -> None:
        with httpx.Client(base_url=approving.base_url, timeout=30.0) as voter:
            response = voter.post(f"/runs/{run_id}/approvals/ops", json={"approve": True})
            answers.append((response.status_code, time.monotonic() - started))

    threads = [threading.Thread(target=vote) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    statuses = sorted(status for status, _ in answers)
    assert statuses in ([200, 404], [200, 409]), answers
    assert max(seconds for _, seconds in answers) < 4.0, answers


def test_an_active_run_is_reported_consistently_with_its_stored_ledger(
    server: ServerProcess,
) -> None:
    """While a run writes: replay always verifies and its world matches the projection at the
    same seq, and the record's head id is the id of the stored entry at its head seq (they once
    described entries still being written)."""
    client = server.client()
    intents = [{"tool": "kv_set", "args": {"key": f"k{i % 7}", "value": i}} for i in range(50)]
    script: list[dict[str, Any]] = [{"intents": intents}] * 40 + [{"final": "done"}]
    run_id = create_run(
        client,
        {
            "task": "busy",
            "tool_scopes": ["kv_*"],
            "cognition": {"provider": "mock", "script": script},
        },
    )
    replays: list[dict[str, Any]] = []
    heads_checked = 0
    while True:
        record = client.get(f"/runs/{run_id}").json()
        head_seq, head_id = record["summary"]["head_seq"], record["summary"]["head_id"]
        lines = ledger_lines(client, run_id)
        assert len(lines) > head_seq
        assert blake3.blake3(lines[head_seq]).hexdigest() == head_id
        heads_checked += 1
        replays.append(client.get(f"/runs/{run_id}/replay").json())
        if record["status"] != "running":
            break
    assert heads_checked > 1, "the run ended before it could be observed running"
    assert all(r["verified"] for r in replays), [
        r["failures"] for r in replays if not r["verified"]
    ]
    assert all(r["world_matches"] for r in replays)
