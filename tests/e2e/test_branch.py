"""Branch (`POST /runs/:id/branch`) on the real server: a new run whose world starts as the
source's world after one of its commits, recorded in its first entry; a run like any other
(listed, cancelled, resumed, branched again, replayed through its source), kept across a
restart; a commit id that is not one of the source's commits is refused, and so is a caller who
may not see the source or may not start runs."""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

import httpx
import pytest

from tests.e2e._authority import KEYS_ENV, as_key, entries, of_kind
from tests.e2e._harness import (
    ServerProcess,
    assert_error,
    create_run,
    wait_for,
    wait_terminal,
)
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

SOURCE_TASK = "set five keys"


def _set(key: str, value: int) -> dict[str, Any]:
    return {"tool": "kv_set", "args": {"key": key, "value": value}}


def _five_commits(client: httpx.Client) -> tuple[str, list[dict[str, Any]]]:
    """A completed run that set a..e to 1..5, one commit each; (run id, its commits)."""
    script = [_set(key, value) for value, key in enumerate("abcde", start=1)]
    run_id = create_run(
        client,
        {
            "task": SOURCE_TASK,
            "max_steps": 8,
            "tool_scopes": ["kv_*"],
            "budget": {"tool_calls": 40},
            "cognition": {"script": [*script, {"final": "five keys set"}]},
        },
    )
    assert wait_terminal(client, run_id)["status"] == "completed"
    commits = of_kind(entries(client, run_id), "commit")
    assert len(commits) == 5
    return run_id, commits


def _branch(client: httpx.Client, run_id: str, body: dict[str, Any]) -> str:
    response = client.post(f"/runs/{run_id}/branch", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == {"run_id", "task", "status"}
    assert created["status"] == "running"
    assert created["run_id"] != run_id
    branch: str = created["run_id"]
    return branch


def _values(world: dict[str, Any]) -> dict[str, Any]:
    return {r["id"]: r["value"] for r in world["resources"]}


def _world(client: httpx.Client, run_id: str, seq: int | None = None) -> dict[str, Any]:
    path = f"/runs/{run_id}/world" if seq is None else f"/runs/{run_id}/world/at?seq={seq}"
    response = client.get(path)
    assert response.status_code == 200, response.text
    world: dict[str, Any] = response.json()
    return world


def _assert_replays(client: httpx.Client, run_id: str) -> dict[str, Any]:
    report: dict[str, Any] = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report["failures"]
    assert report["world_matches"] is True, report
    assert report["world_hash"] == _world(client, run_id)["world_hash"]
    return report


def _assert_inherits(
    client: httpx.Client, branch: str, source: str, commit: dict[str, Any]
) -> None:
    """The branch's world before its own first entry is exactly the source's world after the
    commit, and its first entry and its record say where it came from."""
    inherited = _world(client, source, commit["seq"])
    start = _world(client, branch, 0)
    assert start["resources"] == inherited["resources"]
    assert start["world_hash"] == inherited["world_hash"]
    first = entries(client, branch)[0]
    assert first["kind"] == "run_started" and first["seq"] == 0
    origin = first["payload"]["branch_of"]
    assert {k: v for k, v in origin.items() if k not in ("requested_by", "key_id")} == {
        "run_id": source,
        "commit_id": commit["id"],
        "seq": commit["seq"],
        "world_hash": inherited["world_hash"],
    }
    record = client.get(f"/runs/{branch}").json()
    assert record["branch_of"] == {
        "run_id": source,
        "commit_id": commit["id"],
        "seq": commit["seq"],
    }


def test_a_branch_starts_from_the_world_at_a_commit_and_adds_its_own_commits(
    server: ServerProcess,
) -> None:
    """A branch from the third of five commits starts with exactly a..c; its own script reads an
    inherited key, changes one and adds one, and its world ends as what it inherited plus its
    own commits. A branch of that branch does the same from the branch's commit. Both replay
    through their sources and match their live worlds; the source is untouched."""
    client = server.client()
    source, commits = _five_commits(client)
    source_world = _world(client, source)
    third = commits[2]

    script = [
        {"tool": "kv_get", "args": {"key": "c"}},
        _set("b", 20),
        _set("f", 6),
        {"final": "branched"},
    ]
    branch = _branch(client, source, {"commit_id": third["id"], "cognition": {"script": script}})
    _assert_inherits(client, branch, source, third)
    assert _values(_world(client, branch, 0)) == {"a": 1, "b": 2, "c": 3}
    record = wait_terminal(client, branch)
    assert record["status"] == "completed", record
    assert record["summary"]["final_answer"] == "branched"
    assert record["task"] == SOURCE_TASK
    assert record["branch_of"]["run_id"] == source
    own = of_kind(entries(client, branch), "commit")
    assert len(own) == 3
    assert own[0]["payload"]["output"]["value"] == 3, "the branch reads what it inherited"
    world = _world(client, branch)
    assert _values(world) == {"a": 1, "b": 20, "c": 3, "f": 6}
    versions = {r["id"]: r["version"] for r in world["resources"]}
    assert versions == {"a": 1, "b": 2, "c": 1, "f": 1}
    _assert_replays(client, branch)

    # A branch of the branch, from its commit of f, with its own task and step limit.
    of_f = own[2]
    second = _branch(
        client,
        branch,
        {
            "commit_id": of_f["id"],
            "task": "a second branch",
            "max_steps": 3,
            "cognition": {"script": [_set("g", 7), {"final": "deeper"}]},
        },
    )
    _assert_inherits(client, second, branch, of_f)
    record = wait_terminal(client, second)
    assert (record["status"], record["task"], record["max_steps"]) == (
        "completed",
        "a second branch",
        3,
    )
    assert _values(_world(client, second)) == {"a": 1, "b": 20, "c": 3, "f": 6, "g": 7}
    _assert_replays(client, second)

    # Every view of the source is as it was; it records no branch.
    assert _world(client, source) == source_world
    assert client.get(f"/runs/{source}").json()["branch_of"] is None
    _assert_replays(client, source)
    listed = [run["run_id"] for run in client.get("/runs").json()["runs"]]
    assert listed[:3] == [second, branch, source]


def test_a_branch_keeps_the_sources_authority_but_gets_its_own_writ(
    server: ServerProcess,
) -> None:
    """Without a task, max_steps or cognition the branch takes the source's (its script plays
    again, on the inherited world); its scopes, effect ceiling and budget are the source's, and
    its writ is a new one, so its usage counts from zero."""
    client = server.client()
    source, commits = _five_commits(client)
    branch = _branch(client, source, {"commit_id": commits[1]["id"]})
    record = wait_terminal(client, branch)
    assert record["status"] == "completed", record
    origin = client.get(f"/runs/{source}").json()
    for name in ("task", "max_steps", "tool_scopes", "tools", "cognition", "budget"):
        assert record[name] == origin[name], name
    assert record["effect_ceiling"] == origin["effect_ceiling"] == "write"
    assert record["writ"]["id"] != origin["writ"]["id"]
    assert record["usage"]["tool_calls"] == 5
    world = _world(client, branch)
    # a and b were inherited and set again (version 2); c..e were created by the branch.
    assert {r["id"]: (r["value"], r["version"]) for r in world["resources"]} == {
        "a": (1, 2),
        "b": (2, 2),
        "c": (3, 1),
        "d": (4, 1),
        "e": (5, 1),
    }
    _assert_replays(client, branch)


def test_a_commit_id_that_is_not_a_commit_of_the_source_is_refused(
    server: ServerProcess,
) -> None:
    """An unknown id, a commit of another run, the id of an entry of the source that is not a
    commit, and a malformed id are each 422 `commit_not_in_run` naming `commit_id`; a body
    without a commit id or with an unknown field is 422 `invalid_request`; an unknown run is
    404. Nothing is created."""
    client = server.client()
    source, _ = _five_commits(client)
    other, other_commits = _five_commits(client)
    items = entries(client, source)
    not_commits = [e for e in items if e["kind"] in ("run_started", "turn", "intent", "run_ended")]
    assert {e["kind"] for e in not_commits} == {"run_started", "turn", "intent", "run_ended"}
    before = client.get("/runs").json()["runs"]

    def refused(commit_id: str) -> dict[str, Any]:
        response = client.post(f"/runs/{source}/branch", json={"commit_id": commit_id})
        error = assert_error(response, 422, "commit_not_in_run")
        assert error["details"]["field"] == "commit_id"
        assert error["details"]["run_id"] == source
        return error

    assert refused(secrets.token_hex(32))["details"]["commit_id"] is not None
    refused(other_commits[0]["id"])
    for entry in not_commits:
        assert refused(entry["id"])["details"]["kind"] == entry["kind"]
    for malformed in ("", "abc", "A" * 64, "g" * 64, other_commits[0]["id"] + "0"):
        refused(malformed)

    assert_error(client.post(f"/runs/{source}/branch", json={}), 422, "invalid_request")
    assert_error(
        client.post(
            f"/runs/{source}/branch", json={"commit_id": other_commits[0]["id"], "extra": 1}
        ),
        422,
        "invalid_request",
    )
    assert_error(
        client.post(f"/runs/{source}/branch", json={"commit_id": 5}), 422, "invalid_request"
    )
    missing = "0192d2f4-0000-7000-8000-000000000000"
    assert_error(
        client.post(f"/runs/{missing}/branch", json={"commit_id": other_commits[0]["id"]}),
        404,
        "run_not_found",
    )
    assert client.get("/runs").json()["runs"] == before
    assert other in [run["run_id"] for run in before]


def test_branching_needs_an_operator_who_can_see_the_source(server_factory: ServerFactory) -> None:
    """Another tenant's operator or admin gets 404 exactly as for a missing run, a viewer of the
    source's tenant 403; another operator of the tenant may branch, and the branch belongs to
    the tenant (listed for it, invisible to the other)."""
    server = server_factory({"THYMOS_API_KEYS": KEYS_ENV})
    operator = as_key(server, "a1")
    source, commits = _five_commits(operator)
    body = {"commit_id": commits[0]["id"], "cognition": {"script": [{"final": "ok"}]}}
    for other in ("b1", "b-admin"):
        assert_error(
            as_key(server, other).post(f"/runs/{source}/branch", json=body), 404, "run_not_found"
        )
    assert_error(
        as_key(server, "a-viewer").post(f"/runs/{source}/branch", json=body), 403, "forbidden"
    )
    assert_error(server.client().post(f"/runs/{source}/branch", json=body), 401)
    branch = _branch(as_key(server, "a2"), source, body)
    assert wait_terminal(operator, branch)["tenant"] == "A"
    # The branch is on record with the key that asked for it.
    (first,) = [e for e in entries(operator, branch) if e["kind"] == "run_started"]
    asked = first["payload"]["branch_of"]
    assert asked["requested_by"] == "a2"
    assert isinstance(asked["key_id"], str) and asked["key_id"]
    assert branch in [run["run_id"] for run in operator.get("/runs").json()["runs"]]
    other_tenant = as_key(server, "b1")
    assert branch not in [run["run_id"] for run in other_tenant.get("/runs").json()["runs"]]
    assert_error(other_tenant.get(f"/runs/{branch}"), 404, "run_not_found")


def test_a_branch_can_be_cancelled_and_resumed(server: ServerProcess) -> None:
    """A branch is a run like any other: cancelled during a long model call it ends cancelled
    and can be resumed; one stopped at its step limit resumes and completes, its world still
    built on what it inherited."""
    client = server.client()
    source, commits = _five_commits(client)

    sleeper = _branch(
        client,
        source,
        {
            "commit_id": commits[0]["id"],
            "cognition": {"script": [{"sleep_ms": 60_000}, {"final": "never"}]},
        },
    )
    wait_for(
        lambda: client.get(f"/runs/{sleeper}/execution").json()["phase"] == "thinking" or None,
        timeout_s=10,
        what="the branch to think",
    )
    assert client.post(f"/runs/{sleeper}/cancel").status_code == 202
    record = wait_terminal(client, sleeper, timeout_s=10)
    assert (record["status"], record["summary"]["terminated_by"]) == ("cancelled", "cancelled")
    resumed = client.post(f"/runs/{sleeper}/resume")
    assert resumed.status_code == 202, resumed.text
    assert client.post(f"/runs/{sleeper}/cancel").status_code == 202
    assert wait_terminal(client, sleeper, timeout_s=10)["status"] == "cancelled"
    assert _values(_world(client, sleeper)) == {"a": 1}
    _assert_replays(client, sleeper)

    stepper = _branch(
        client,
        source,
        {
            "commit_id": commits[3]["id"],
            "max_steps": 1,
            "cognition": {"script": [_set("x", 1), _set("a", 10), {"final": "resumed"}]},
        },
    )
    record = wait_terminal(client, stepper)
    assert (record["status"], record["summary"]["terminated_by"]) == ("failed", "max_steps")
    assert client.post(f"/runs/{stepper}/resume", json={"max_steps": 5}).status_code == 202
    record = wait_terminal(client, stepper)
    assert record["status"] == "completed", record
    assert _values(_world(client, stepper)) == {"a": 10, "b": 2, "c": 3, "d": 4, "x": 1}
    _assert_replays(client, stepper)


def test_a_branch_survives_a_restart(server: ServerProcess) -> None:
    """After a restart a branch's world, its world at seq 0, its record and its replay are what
    they were; a branch stopped at its step limit is resumed after the restart (its state
    refolded from the ledger starts from what it inherited) and completes on that world."""
    client = server.client()
    source, commits = _five_commits(client)
    done = _branch(
        client,
        source,
        {"commit_id": commits[2]["id"], "cognition": {"script": [_set("c", 30), {"final": "x"}]}},
    )
    wait_terminal(client, done)
    stopped = _branch(
        client,
        source,
        {
            "commit_id": commits[1]["id"],
            "max_steps": 1,
            "cognition": {"script": [_set("b", 200), _set("z", 26), {"final": "later"}]},
        },
    )
    assert wait_terminal(client, stopped)["summary"]["terminated_by"] == "max_steps"
    seen = {
        run_id: (
            client.get(f"/runs/{run_id}").json(),
            _world(client, run_id),
            _world(client, run_id, 0),
            _assert_replays(client, run_id),
        )
        for run_id in (done, stopped)
    }

    server.restart()
    client = server.client()
    for run_id, (record, world, start, report) in seen.items():
        assert client.get(f"/runs/{run_id}").json() == record
        assert _world(client, run_id) == world
        assert _world(client, run_id, 0) == start
        assert _assert_replays(client, run_id) == report
    assert _values(seen[done][1]) == {"a": 1, "b": 2, "c": 30}

    assert client.post(f"/runs/{stopped}/resume", json={"max_steps": 4}).status_code == 202
    record = wait_terminal(client, stopped)
    assert record["status"] == "completed", record
    assert _values(_world(client, stopped)) == {"a": 1, "b": 200, "z": 26}
    _assert_replays(client, stopped)


def _flip_a_byte(server: ServerProcess, run_id: str, seq: int) -> None:
    with sqlite3.connect(server.sqlite_path) as conn:
        row = conn.execute(
            "SELECT envelope FROM entries WHERE run_id = ? AND seq = ?", (run_id, seq)
        ).fetchone()
        raw = bytearray(row[0])
        raw[len(raw) // 2] ^= 0x01
        conn.execute(
            "UPDATE entries SET envelope = ? WHERE run_id = ? AND seq = ?",
            (bytes(raw), run_id, seq),
        )


def test_a_branch_verifies_through_its_source_up_to_the_commit(server: ServerProcess) -> None:
    """A source damaged before the commit a branch starts from makes the branch's replay fail
    `branch_source_mismatch` at seq 0 (its own entries still check out); damage after the commit
    fails only the source, not the branch."""
    client = server.client()
    early, early_commits = _five_commits(client)
    late, late_commits = _five_commits(client)
    body = {"cognition": {"script": [_set("b", 20), {"final": "x"}]}}
    hurt = _branch(client, early, {**body, "commit_id": early_commits[2]["id"]})
    fine = _branch(client, late, {**body, "commit_id": late_commits[2]["id"]})
    for run_id in (hurt, fine):
        wait_terminal(client, run_id)

    server.stop()
    _flip_a_byte(server, early, early_commits[1]["seq"])
    _flip_a_byte(server, late, late_commits[4]["seq"])
    server.start()
    client = server.client()

    report = client.get(f"/runs/{hurt}/replay").json()
    assert report["verified"] is False
    assert [(f["seq"], f["code"]) for f in report["failures"]] == [(0, "branch_source_mismatch")]
    assert report["world_matches"] is True, "the branch's own entries replay from what it kept"
    _assert_replays(client, fine)
    for source in (early, late):
        assert client.get(f"/runs/{source}/replay").json()["verified"] is False
