"""Sandboxed commands on the real server: each escape attempt is refused, stopped or truncated,
the process is gone afterwards, the run records it, and the server keeps answering meanwhile.

`shell` (effect external) and `test_run` (effect write, no network; `THYMOS_TEST_COMMAND` is
`bash -c`, so its arguments are a script) run under a permit-all policy so no approval is
needed; the server's environment holds a provider key and a secret setting that must never be
seen.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e._authority import entries, policy_dir
from tests.e2e._harness import ServerProcess, alive_with, create_run, wait_for, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

PROVIDER_KEY = "sk-ant-test-0123456789abcdefghijklmnopqrstuv"
PERMIT_ALL = '@id("permit-all")\npermit(principal, action, resource);\n'


@pytest.fixture(scope="module")
def sandboxed(
    module_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    folder = policy_dir(tmp_path_factory.mktemp("policy"), permit=PERMIT_ALL)
    return module_server_factory(
        {
            "THYMOS_POLICY_DIR": str(folder),
            "THYMOS_TEST_COMMAND": "bash -c",
            "ANTHROPIC_API_KEY": PROVIDER_KEY,
        }
    )


def _run(server: ServerProcess, intents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run of one turn per intent; its decided entries (commit or tool_failure), in order."""
    client = server.client()
    run_id = create_run(
        client,
        {
            "task": "sandbox",
            "tool_scopes": ["shell", "test_run"],
            "cognition": {"script": [*intents, {"final": "done"}]},
        },
    )
    assert wait_terminal(client, run_id, timeout_s=60)["status"] == "completed"
    items = entries(client, run_id)
    # Each command (external or not) replays: shell's execution_started precedes its commit.
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report["failures"]
    shells = [e for e in items if e["kind"] == "commit" and e["payload"]["tool"] == "shell"]
    started = [e for e in items if e["kind"] == "execution_started"]
    assert len(started) == len(shells)
    return [e for e in items if e["kind"] in ("commit", "tool_failure")]


def _shell(command: str, seconds: int = 20) -> dict[str, Any]:
    return {"tool": "shell", "args": {"command": command, "timeout_secs": seconds}}


def _test_run(script: str) -> dict[str, Any]:
    return {"tool": "test_run", "args": {"args": [script]}}


def test_a_command_cannot_read_or_write_outside_its_workspace(
    sandboxed: ServerProcess,
) -> None:
    outside = sandboxed.workspace.parent / "outside-secret.txt"
    outside.write_text("outside secret\n")
    target = sandboxed.workspace.parent / "written-by-tool.txt"
    decided = _run(
        sandboxed,
        [
            _shell("cat /etc/shadow"),
            _shell(f"cat {outside}"),
            _shell(f"echo pwned > {target}"),
            _shell(f"ls {sandboxed.data_dir}; cat {sandboxed.data_dir}/root_key"),
            _shell("echo fine > inside.txt && cat inside.txt"),
        ],
    )
    outputs = [e["payload"]["output"] for e in decided]
    for output in outputs[:4]:
        assert output["exit_code"] != 0, output
        assert "outside secret" not in output["stdout"]
    assert "Permission denied" in outputs[0]["stderr"]
    assert not target.exists()
    assert outputs[4]["stdout"] == "fine\n"
    assert (sandboxed.workspace / "inside.txt").read_text() == "fine\n"


def test_a_command_sees_nothing_of_the_servers_environment_or_processes(
    sandboxed: ServerProcess,
) -> None:
    """Neither its own environment nor any process's (the server's /proc is not mounted there)
    holds a provider key or a THYMOS_ setting."""
    decided = _run(
        sandboxed,
        [
            _shell(
                "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; ls /proc | grep -c '^[0-9]'"
            )
        ],
    )
    output = decided[0]["payload"]["output"]
    assert PROVIDER_KEY not in output["stdout"]
    assert "THYMOS_" not in output["stdout"]
    assert int(output["stdout"].strip().split("\n")[-1]) <= 6


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener this test controls, recording what connects."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            seen.append(conn.recv(100))
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_a_tool_without_external_cannot_reach_the_network(
    sandboxed: ServerProcess, listener: tuple[int, list[bytes]]
) -> None:
    """test_run (effect write) has no network: its connection fails and the listener sees
    nothing; shell (effect external) may connect."""
    port, seen = listener
    decided = _run(
        sandboxed,
        [
            _test_run(f"echo hello > /dev/tcp/127.0.0.1/{port} && echo connected"),
            _shell(f"echo external > /dev/tcp/127.0.0.1/{port} && echo connected"),
        ],
    )
    blocked, allowed = (e["payload"]["output"] for e in decided)
    assert "connected" not in blocked["stdout"] and blocked["exit_code"] != 0
    assert allowed["stdout"] == "connected\n"
    wait_for(lambda: seen or None, timeout_s=10, what="the external connection")
    assert seen == [b"external\n"]


def test_output_is_truncated_and_a_slow_command_is_stopped_while_the_server_answers(
    sandboxed: ServerProcess,
) -> None:
    """10 MB of output is cut at the cap; a command sleeping past its timeout is killed, with
    everything it started; /health answers while it sleeps."""
    client = sandboxed.client()
    marker = "thymos-sandbox-marker-7f3a"
    run_id = create_run(
        client,
        {
            "task": "sandbox",
            "tool_scopes": ["shell"],
            "cognition": {
                "script": [
                    _shell("head -c 10000000 /dev/zero | tr '\\0' x"),
                    _shell(f"(sleep 3600 # {marker}\n) & sleep 3600 # {marker}", seconds=3),
                    {"final": "done"},
                ]
            },
        },
    )
    wait_for(lambda: alive_with(marker) or None, timeout_s=30, what="the sleeper to start")
    assert client.get("/health").status_code == 200
    assert wait_terminal(client, run_id, timeout_s=60)["status"] == "completed"
    loud, slow = (e["payload"]["output"] for e in entries(client, run_id) if e["kind"] == "commit")
    assert loud["truncated"] is True and loud["exit_code"] is None
    assert 0 < len(loud["stdout"]) <= 256 * 1024
    assert (slow["timed_out"], slow["exit_code"]) == (True, None)
    wait_for(lambda: not alive_with(marker) or None, timeout_s=15, what="the sleepers to die")


def test_health_reports_the_sandbox(sandboxed: ServerProcess) -> None:
    sandbox = sandboxed.client().get("/health").json()["sandbox"]
    assert sandbox["usable"] is True
    assert sandbox["landlock_abi"] >= 1


def test_a_provider_key_a_tool_prints_never_reaches_the_ledger_streams_or_logs(
    sandboxed: ServerProcess,
) -> None:
    """A file of the workspace holds the server's provider key and a credential-shaped value; a
    command prints both. The ledger, the event stream, the export and the server log show
    `[REDACTED]` instead (the model's context is built from the ledger)."""
    (sandboxed.workspace / "leak.txt").write_text(
        f"{PROVIDER_KEY}\nghp_abcdefghijklmnopqrstuvwxyz0123456789\n"
    )
    client = sandboxed.client()
    run_id = create_run(
        client,
        {
            "task": "leak",
            "tool_scopes": ["shell"],
            "cognition": {"script": [_shell("cat leak.txt"), {"final": "done"}]},
        },
    )
    wait_terminal(client, run_id, timeout_s=60)
    output = next(e for e in entries(client, run_id) if e["kind"] == "commit")["payload"]["output"]
    assert output["stdout"] == "[REDACTED]\n[REDACTED]\n"
    for path in (f"/runs/{run_id}/ledger", f"/runs/{run_id}/events", f"/runs/{run_id}/execution"):
        with client.stream("GET", path) as response:
            body = response.read()
        assert PROVIDER_KEY.encode() not in body and b"ghp_abcdef" not in body, path
    assert PROVIDER_KEY not in sandboxed.log_path.read_text(errors="replace")
