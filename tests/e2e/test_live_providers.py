"""Live runs against the real vendors, when their keys are in the environment.

Each test starts the real server with the vendor's key and asks a tiny tool-using task; without
the key it is skipped with a line saying so (STATUS.md records which vendors were proven live
and when). Nothing here runs in CI unless an operator provides keys.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e._harness import create_run, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

VENDORS = [("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")]


@pytest.mark.parametrize(("provider", "variable"), VENDORS)
def test_a_live_vendor_completes_a_tool_using_run(
    server_factory: ServerFactory, provider: str, variable: str
) -> None:
    key = os.environ.get(variable)
    if not key:
        pytest.skip(f"SKIP live {provider}: {variable} is not set")
    server = server_factory({variable: key})
    client = server.client()
    run_id = create_run(
        client,
        {
            "task": "Store the value 42 under the key 'answer' with kv_set, then reply 'stored'.",
            "tool_scopes": ["kv_*"],
            "max_steps": 6,
            "cognition": {"provider": provider},
        },
    )
    record = wait_terminal(client, run_id, timeout_s=180)
    assert record["status"] == "completed", record
    world = client.get(f"/runs/{run_id}/world").json()
    assert {k: world["resources"][0][k] for k in ("kind", "id")} == {"kind": "kv", "id": "answer"}
