"""MCP servers on the real server: the official time server (from PyPI, installed with the
test dependencies) and a flaky one of ours, both started from THYMOS_MCP_CONFIG as sandboxed
child processes. Their tools appear in /tools and are called through the full governance path;
a hung call hits the timeout, a crashed server is restarted, and /health and /ready tell."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e._authority import entries
from tests.e2e._harness import ServerProcess, create_run, free_port, wait_for, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

TIME_SERVER = Path(sys.executable).with_name("mcp-server-time")
FLAKY = Path(__file__).with_name("mcp") / "flaky_server.py"


@pytest.fixture(scope="module")
def mcp_server(
    module_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    config = tmp_path_factory.mktemp("mcp") / "mcp.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "time": {"command": str(TIME_SERVER), "effect": "read", "risk": "low"},
                    "flaky": {
                        "command": sys.executable,
                        "args": ["flaky_server.py"],
                        "effect": "read",
                        "risk": "low",
                        "timeout_secs": 3,
                    },
                }
            }
        )
    )
    server = module_server_factory({"THYMOS_MCP_CONFIG": str(config)}, start=False)
    shutil.copy(FLAKY, server.workspace / "flaky_server.py")  # the sandbox reads the workspace
    server.start()
    return server


def _run(
    server: ServerProcess, scopes: list[str], script: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    client = server.client()
    run_id = create_run(
        client,
        {"task": "mcp", "tool_scopes": scopes, "cognition": {"script": [*script, {"final": "ok"}]}},
    )
    wait_terminal(client, run_id, timeout_s=60)
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report["failures"]
    return [e for e in entries(client, run_id) if e["kind"] in ("commit", "tool_failure")]


def test_mcp_tools_are_listed_and_the_servers_reported(mcp_server: ServerProcess) -> None:
    client = mcp_server.client()
    tools = {t["name"]: t for t in client.get("/tools").json()["tools"]}
    assert {"mcp_time_get_current_time", "mcp_flaky_echo", "mcp_flaky_hang"} <= set(tools)
    assert tools["mcp_time_get_current_time"]["source"] == "mcp"
    assert tools["mcp_time_get_current_time"]["input_schema"]["type"] == "object"
    health = client.get("/health").json()["mcp"]
    assert health["time"]["status"] == "ready" and health["time"]["tools"] >= 2
    assert client.get("/ready").status_code == 200


def test_an_official_mcp_server_is_called_through_governance_and_commits(
    mcp_server: ServerProcess,
) -> None:
    decided = _run(
        mcp_server,
        ["mcp_time_*"],
        [
            {"tool": "mcp_time_get_current_time", "args": {"timezone": "UTC"}},
            {"tool": "mcp_time_get_current_time", "args": {"zone": 3}},
        ],
    )
    commit = decided[0]
    assert commit["kind"] == "commit"
    assert commit["payload"]["output"]["structured"]["timezone"] == "UTC"


def test_a_hung_call_times_out_and_a_crashed_server_is_restarted(
    mcp_server: ServerProcess,
) -> None:
    """A call that never answers fails `timed_out` and its server is restarted; once ready, a
    call that kills the server fails `connection_failed` and the server is restarted again;
    then its tools work as before."""
    client = mcp_server.client()

    def restarted(times: int) -> dict[str, Any] | None:
        state: dict[str, Any] = client.get("/health").json()["mcp"]["flaky"]
        return state if state["status"] == "ready" and state["restarts"] >= times else None

    before = client.get("/health").json()["mcp"]["flaky"]["restarts"]
    (hung,) = _run(mcp_server, ["mcp_flaky_hang"], [{"tool": "mcp_flaky_hang", "args": {}}])
    assert (hung["kind"], hung["payload"]["error"]["code"]) == ("tool_failure", "timed_out")
    wait_for(lambda: restarted(before + 1), timeout_s=60, what="a restart after the hang")
    (crashed,) = _run(mcp_server, ["mcp_flaky_crash"], [{"tool": "mcp_flaky_crash", "args": {}}])
    assert (crashed["kind"], crashed["payload"]["error"]["code"]) == (
        "tool_failure",
        "connection_failed",
    )
    wait_for(lambda: restarted(before + 2), timeout_s=60, what="a restart after the crash")
    (echoed,) = _run(
        mcp_server, ["mcp_flaky_echo"], [{"tool": "mcp_flaky_echo", "args": {"text": "back"}}]
    )
    assert echoed["kind"] == "commit"
    assert echoed["payload"]["output"]["structured"] == {"result": "back"}


def test_a_streamable_http_server_is_reached_by_its_url(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A server configured by `url` (streamable HTTP, here our flaky server on loopback) has its
    tools discovered and called like a stdio server's."""
    port = free_port()
    remote = subprocess.Popen(
        [sys.executable, str(FLAKY), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: _listening(port) or None, timeout_s=30, what="the HTTP MCP server to listen"
        )
        config = tmp_path / "mcp.json"
        url = f"http://127.0.0.1:{port}/mcp"
        config.write_text(json.dumps({"mcpServers": {"remote": {"url": url, "effect": "read"}}}))
        server = server_factory({"THYMOS_MCP_CONFIG": str(config)})
        (echoed,) = _run(
            server, ["mcp_remote_echo"], [{"tool": "mcp_remote_echo", "args": {"text": "hi"}}]
        )
        assert echoed["kind"] == "commit", echoed
        assert echoed["payload"]["output"]["structured"] == {"result": "hi"}
    finally:
        remote.kill()
        remote.wait(timeout=10)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False
