"""Tools from every source on the real server: file writes committed as file resources (and
replayed without the workspace), manifest tools end to end, and a malformed manifest that stops
start-up with a message naming the file and the field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import blake3
import pytest

from tests.e2e._authority import entries, policy_dir
from tests.e2e._harness import THYMOS_BIN, ServerProcess, create_run, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

PERMIT_ALL = '@id("permit-all")\npermit(principal, action, resource);\n'
MANIFEST: dict[str, Any] = {
    "name": "count_words",
    "version": "1.0.0",
    "description": "Count the words of a workspace file.",
    "effect_class": "read",
    "risk_class": "low",
    "input_schema": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
        "additionalProperties": False,
    },
    "executor": {"kind": "shell", "command_template": "wc -w < {path}"},
}


def _finished(server: ServerProcess, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    client = server.client()
    run_id = create_run(client, body)
    assert wait_terminal(client, run_id, timeout_s=60)["status"] == "completed"
    return run_id, entries(client, run_id)


def test_file_writes_commit_their_hashes_and_replay_without_the_workspace(
    server: ServerProcess,
) -> None:
    script = [
        {"tool": "fs_write", "args": {"path": "src/app.py", "content": "x = 1\ny = 2\n"}},
        {
            "tool": "fs_patch",
            "args": {"path": "src/app.py", "anchor": "y = 2", "replacement": "y = 3"},
        },
        {"final": "done"},
    ]
    run_id, items = _finished(
        server,
        {"task": "edit", "tool_scopes": ["fs_*"], "cognition": {"script": script}},
    )
    content = b"x = 1\ny = 3\n"
    assert (server.workspace / "src" / "app.py").read_bytes() == content
    client = server.client()
    world = client.get(f"/runs/{run_id}/world").json()
    assert world["resources"] == [
        {
            "kind": "file",
            "id": "src/app.py",
            "version": 2,
            "value": {"size": len(content), "blake3": blake3.blake3(content).hexdigest()},
        }
    ]
    assert [e["kind"] for e in items if e["kind"] in ("commit", "tool_failure")] == ["commit"] * 2
    shutil.rmtree(server.workspace)
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report["failures"]
    assert report["world_hash"] == world["world_hash"]
    server.workspace.mkdir()  # the teardown's clean stop does not need it, but leave it as found


def test_a_manifest_tool_runs_end_to_end_and_its_arguments_stay_words(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "count_words.json").write_text(json.dumps(MANIFEST))
    server = server_factory(
        {
            "THYMOS_TOOL_MANIFEST_DIRS": str(folder),
            "THYMOS_POLICY_DIR": str(policy_dir(tmp_path, permit=PERMIT_ALL)),
        }
    )
    tools = {t["name"]: t for t in server.client().get("/tools").json()["tools"]}
    assert tools["count_words"]["source"] == "manifest"
    script = [
        {"tool": "count_words", "args": {"path": "README.md"}},
        {"tool": "count_words", "args": {"path": "README.md; touch pwned"}},
        {"final": "done"},
    ]
    _, items = _finished(
        server, {"task": "count", "tool_scopes": ["count_words"], "cognition": {"script": script}}
    )
    counted, injected = (e["payload"]["output"] for e in items if e["kind"] == "commit")
    words = len((server.workspace / "README.md").read_text().split())
    assert (counted["exit_code"], counted["stdout"].strip()) == (0, str(words))
    assert injected["exit_code"] != 0  # no file of that whole name
    assert not (server.workspace / "pwned").exists()


def test_a_malformed_manifest_stops_start_up_naming_the_file_and_the_field(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "broken.json").write_text(json.dumps({**MANIFEST, "effect_class": "destructive"}))
    workspace = tmp_path / "ws"
    workspace.mkdir()
    env = {
        **os.environ,
        "THYMOS_DATA_DIR": str(tmp_path / "data"),
        "THYMOS_WORKSPACE": str(workspace),
        "THYMOS_TOOL_MANIFEST_DIRS": str(folder),
    }
    done = subprocess.run(
        [str(THYMOS_BIN), "serve", "--addr", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "broken.json" in done.stderr and "effect_class" in done.stderr
