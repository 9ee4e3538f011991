"""The named limits are settings: an operator raises them for long-running agents.

One server with the defaults and one whose operator raised `THYMOS_MAX_STEPS_MAX`,
`THYMOS_SCRIPT_ELEMENTS_MAX` and `THYMOS_BODY_BYTES_MAX` and lowered
`THYMOS_SUBSCRIBERS_PER_RUN_MAX`: the default refuses a run of more steps than it allows (422
naming the setting) and a body over its bound (413); the raised one runs a scripted agent through
more steps than the default allows, to its final answer, and refuses a stream subscriber past its
bound (429).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e._harness import ServerProcess, assert_error, create_run, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

STEPS = 1500
"""Past the default `max_steps` bound of 1000."""


def _long_run(steps: int) -> dict[str, Any]:
    script: list[dict[str, Any]] = [{"text": f"step {i}"} for i in range(steps - 1)]
    script.append({"final": "done"})
    return {"task": "think for a long time", "max_steps": steps, "cognition": {"script": script}}


def test_the_defaults_bound_steps_and_bodies(server_factory: ServerFactory) -> None:
    server = server_factory({})
    client = server.client()
    refused = assert_error(client.post("/runs", json=_long_run(STEPS)), 422, "invalid_request")
    assert "THYMOS_MAX_STEPS_MAX" in refused["message"]
    assert refused["details"] == {"field": "max_steps", "max_steps_max": 1000}
    big = {"task": "x" * 10, "padding": "y" * (1024 * 1024)}
    assert_error(client.post("/runs", json=big), 413, "body_too_large")


@pytest.fixture
def raised(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(
        {
            "THYMOS_MAX_STEPS_MAX": "100000",
            "THYMOS_SCRIPT_ELEMENTS_MAX": "100000",
            "THYMOS_BODY_BYTES_MAX": str(8 * 1024 * 1024),
            "THYMOS_SUBSCRIBERS_PER_RUN_MAX": "1",
        }
    )


def test_an_operator_allows_a_long_running_agent(raised: ServerProcess) -> None:
    client = raised.client()
    run_id = create_run(client, _long_run(STEPS))
    record = wait_terminal(client, run_id, timeout_s=300)
    assert record["status"] == "completed", record
    assert record["summary"]["final_answer"] == "done"
    assert record["summary"]["steps_executed"] == STEPS
    replay = client.get(f"/runs/{run_id}/replay").json()
    assert replay["verified"] is True, replay
    refused = assert_error(client.post("/runs", json=_long_run(100_001)), 422, "invalid_request")
    assert refused["details"]["max_steps_max"] == 100_000


def test_stream_subscribers_are_bounded_per_run(raised: ServerProcess) -> None:
    client = raised.client()
    waiting = {
        "task": "wait",
        "tool_scopes": ["kv_get"],
        "cognition": {"script": [{"text": "thinking", "sleep_ms": 60_000}, {"final": "late"}]},
    }
    run_id = create_run(client, waiting)
    with client.stream("GET", f"/runs/{run_id}/events") as first:
        assert first.status_code == 200
        # The first subscriber is counted before its response starts: a second is refused.
        second = assert_error(client.get(f"/runs/{run_id}/execution/stream"), 429)
        assert second["code"] == "capacity_exhausted"
        assert "THYMOS_SUBSCRIBERS_PER_RUN_MAX" in second["message"]
    assert client.post(f"/runs/{run_id}/cancel").status_code == 202
