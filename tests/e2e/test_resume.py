"""Resume (`POST /runs/:id/resume`) on the real server: a run continues on its own ledger with its
writ, spent budget, world and model context rebuilt from the ledger; who asked is recorded; what
may not be resumed is refused with a stable code."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e._authority import KEYS_ENV, as_key, entries, of_kind
from tests.e2e._harness import ServerProcess, assert_error, create_run, wait_terminal
from tests.e2e.conftest import ServerFactory
from tests.e2e.vendor_standins import AnthropicStandIn, OpenAIStandIn

pytestmark = pytest.mark.blackbox

KEY = "sk-test-standin-0123456789abcdefghij"


def _set(key: str, value: int) -> dict[str, Any]:
    return {"tool": "kv_set", "args": {"key": key, "value": value}}


def test_a_run_stopped_at_max_steps_resumes_and_completes_on_its_own_ledger(
    server: ServerProcess,
) -> None:
    client = server.client()
    script = [_set("a", 1), _set("b", 2), _set("c", 3), {"final": "a, b and c are set"}]
    run_id = create_run(
        client,
        {
            "task": "set three keys",
            "max_steps": 2,
            "tool_scopes": ["kv_*"],
            "budget": {"tool_calls": 3},
            "cognition": {"script": script},
        },
    )
    stopped = wait_terminal(client, run_id)
    assert (stopped["status"], stopped["summary"]["terminated_by"]) == ("failed", "max_steps")
    head = stopped["summary"]["head_seq"]

    assert_error(client.post(f"/runs/{run_id}/resume"), 422, "invalid_request")
    assert_error(
        client.post(f"/runs/{run_id}/resume", json={"max_steps": 0}), 422, "invalid_request"
    )
    resumed = client.post(f"/runs/{run_id}/resume", json={"max_steps": 6})
    assert resumed.status_code == 202, resumed.text
    assert resumed.json() == {"run_id": run_id, "task": "set three keys", "status": "running"}
    record = wait_terminal(client, run_id)
    assert record["status"] == "completed", record
    assert record["summary"]["final_answer"] == "a, b and c are set"
    assert record["max_steps"] == 6
    assert record["summary"]["steps_executed"] == 4
    # The writ's tool-call budget (3) spans both parts of the run: all three calls fit in it.
    assert record["summary"]["commits"] == 3 and record["usage"]["tool_calls"] == 3

    items = entries(client, run_id)
    (resumption,) = of_kind(items, "resumption")
    assert resumption["seq"] == head + 1
    assert resumption["payload"] == {
        "max_steps": 6,
        "requested_by": "anonymous",
        "key_id": None,
        "previous_status": "failed",
        "previous_terminated_by": "max_steps",
    }
    assert [e["kind"] for e in items].count("run_started") == 1
    assert len(of_kind(items, "run_ended")) == 2
    world = client.get(f"/runs/{run_id}/world").json()
    values = {r["id"]: r["value"] for r in world["resources"]}
    assert values == {"a": 1, "b": 2, "c": 3}
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report["failures"]

    assert_error(client.post(f"/runs/{run_id}/resume"), 409, "run_not_resumable")


def test_the_spent_budget_still_counts_after_a_resume(server: ServerProcess) -> None:
    client = server.client()
    script = [_set("a", 1), _set("b", 2), _set("c", 3), {"final": "done"}]
    run_id = create_run(
        client,
        {
            "task": "set keys",
            "max_steps": 2,
            "tool_scopes": ["kv_*"],
            "budget": {"tool_calls": 2},
            "cognition": {"script": script},
        },
    )
    wait_terminal(client, run_id)
    assert client.post(f"/runs/{run_id}/resume", json={"max_steps": 10}).status_code == 202
    record = wait_terminal(client, run_id)
    rejections = of_kind(entries(client, run_id), "rejection")
    assert [r["payload"]["reason"] for r in rejections] == ["budget_exhausted"]
    assert record["summary"]["commits"] == 2


def test_what_may_not_be_resumed_is_refused(server_factory: ServerFactory) -> None:
    server = server_factory({"THYMOS_API_KEYS": KEYS_ENV})
    operator, viewer, other = as_key(server, "a1"), as_key(server, "a-viewer"), as_key(server, "b1")
    completed = create_run(operator, {"task": "t", "cognition": {"script": [{"final": "ok"}]}})
    wait_terminal(operator, completed)
    refused = assert_error(operator.post(f"/runs/{completed}/resume"), 409, "run_not_resumable")
    assert refused["details"]["status"] == "completed"
    running = create_run(
        operator, {"task": "t", "cognition": {"script": [{"sleep_ms": 60_000}, {"final": "x"}]}}
    )
    assert_error(operator.post(f"/runs/{running}/resume"), 409, "run_not_resumable")
    assert_error(viewer.post(f"/runs/{completed}/resume"), 403, "forbidden")
    assert_error(other.post(f"/runs/{completed}/resume"), 404, "run_not_found")
    assert_error(operator.post("/runs/not-a-run/resume"), 404, "run_not_found")
    assert_error(
        operator.post(f"/runs/{completed}/resume", json={"max_steps": 5, "extra": 1}),
        422,
        "invalid_request",
    )


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
def test_a_resumed_run_sends_the_model_what_it_would_have_sent_had_it_never_stopped(
    server_factory: ServerFactory, vendor: str
) -> None:
    """Two runs of the same task against the same scripted stand-in: one with room for every
    turn, one stopped at max_steps after two turns and resumed. The model is sent the same
    requests, byte for byte, turn by turn."""
    turns: list[dict[str, Any]] = [
        {"content": "One.", "tool_calls": [("kv_set", json.dumps({"key": "a", "value": 1}))]},
        {"content": "Two.", "tool_calls": [("kv_get", json.dumps({"key": "nope"}))]},
        {"content": "Three.", "tool_calls": [("kv_set", '{"key": ')]},
        {"content": "Done: a is 1."},
    ]
    body = {"task": "set a", "tool_scopes": ["kv_*"], "cognition": {"provider": vendor}}
    standin = {"openai": OpenAIStandIn, "anthropic": AnthropicStandIn}[vendor]
    key, url = f"{vendor.upper()}_API_KEY", f"{vendor.upper()}_BASE_URL"
    with standin(turns) as whole, standin(turns) as parted:
        first = server_factory({key: KEY, url: whole.base_url})
        client = first.client()
        straight = create_run(client, {**body, "max_steps": 6})
        assert wait_terminal(client, straight, timeout_s=60)["status"] == "completed"

        second = server_factory({key: KEY, url: parted.base_url})
        client = second.client()
        stopped = create_run(client, {**body, "max_steps": 2})
        assert wait_terminal(client, stopped, timeout_s=60)["summary"]["terminated_by"] == (
            "max_steps"
        )
        assert len(parted.requests) == 2
        # A restart in between: the resumed context comes from the ledger alone.
        second.stop()
        second.start()
        client = second.client()
        assert client.post(f"/runs/{stopped}/resume", json={"max_steps": 6}).status_code == 202
        assert wait_terminal(client, stopped, timeout_s=60)["status"] == "completed"

    assert len(whole.requests) == len(parted.requests) == 4
    for number, (a, b) in enumerate(zip(whole.requests, parted.requests, strict=True), 1):
        for index, (one, other) in enumerate(
            zip(a["body"]["messages"], b["body"]["messages"], strict=True)
        ):
            assert one == other, f"request {number}, message {index}"
        assert a["body"] == b["body"], f"request {number} differs"
    assert "invalid_arguments" in json.dumps(parted.requests[3]["body"]["messages"][-1])
