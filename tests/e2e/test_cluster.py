"""Several `thymos serve` processes on one PostgreSQL database, over real HTTP.

Each test gets a fresh database (`tests/e2e/_postgres.py`). The nodes share one root key (a
cluster signs and verifies writs with one key) and one workspace, and hold leases of two
seconds, so a node that dies loses its runs quickly. Nothing here waits on the clock: every
wait polls for an outcome with a generous deadline.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._authority import policy_dir
from tests.e2e._harness import (
    ServerProcess,
    alive_with,
    assert_error,
    create_run,
    iter_sse,
    read_events,
    wait_for,
    wait_terminal,
)
from tests.e2e._postgres import fresh_database, terminate_connections
from tests.e2e.conftest import ServerFactory, make_workspace
from thymos.marketplace import public_key_of, publish_body, sign

pytestmark = pytest.mark.blackbox

LEASE_TTL_S = "2"
TAKEOVER_TIMEOUT_S = 60.0
HOLD = "while [ -e hold ]; do sleep 0.02; done"
POLICY = (
    '@id("permit-all")\npermit(principal, action, resource);\n'
    '@id("kv-needs-ops") @approval("ops")\n'
    'permit(principal, action, resource == Thymos::Tool::"kv_set")\n'
    'when { context.arguments like "*needs-approval*" };\n'
)
APPEND_ONCE = {
    "name": "append_once",
    "version": "1.0.0",
    "description": "appends a line to effects.txt",
    "effect_class": "external",
    "risk_class": "medium",
    "idempotent": False,
    "input_schema": {
        "type": "object",
        "properties": {"line": {"type": "string"}},
        "required": ["line"],
        "additionalProperties": False,
    },
    "executor": {
        "kind": "shell",
        "command_template": f"echo {{line}} >> effects.txt; {HOLD}",
        "timeout_secs": 120,
    },
}


@pytest.fixture
def database() -> Iterator[str]:
    yield from fresh_database()


@pytest.fixture
def cluster_env(database: str, tmp_path: Path) -> dict[str, str]:
    """What every node of one cluster shares: the database, the root key, the workspace, the
    policy (a `kv_set` whose arguments say `needs-approval` waits on `ops`) and the tools."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "append_once.json").write_text(json.dumps(APPEND_ONCE))
    return {
        "THYMOS_POSTGRES_URL": database,
        "THYMOS_ROOT_KEY": secrets.token_hex(32),
        "THYMOS_LEASE_TTL_S": LEASE_TTL_S,
        "THYMOS_WORKSPACE": str(make_workspace(tmp_path / "shared")),
        "THYMOS_POLICY_DIR": str(policy_dir(tmp_path, rules=POLICY)),
        "THYMOS_TOOL_MANIFEST_DIRS": str(manifests),
    }


def _node(server_factory: ServerFactory, env: dict[str, str], name: str) -> ServerProcess:
    return server_factory({**env, "THYMOS_NODE_ID": name})


def _workspace(env: dict[str, str]) -> Path:
    return Path(env["THYMOS_WORKSPACE"])


def _script_run(client: httpx.Client, script: list[dict[str, Any]], scopes: list[str]) -> str:
    body = {"task": "cluster", "tool_scopes": scopes, "cognition": {"script": script}}
    return create_run(client, body)


def _verified(client: httpx.Client, run_id: str) -> None:
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report["failures"]


def _kinds(client: httpx.Client, run_id: str) -> list[str]:
    head = client.get(f"/runs/{run_id}").json()["summary"]["head_seq"]
    return [e.event or "" for e in read_events(client, f"/runs/{run_id}/events", limit=head + 1)]


def _pending(client: httpx.Client, run_id: str, channel: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        session = client.get(f"/runs/{run_id}/execution").json()
        waiting = [p for p in session["pending_approvals"] if p["channel"] == channel]
        return dict(waiting[0]) if session["status"] == "waiting_approval" and waiting else None

    return wait_for(probe, timeout_s=TAKEOVER_TIMEOUT_S, what=f"a proposal on {channel}")


def test_runs_streams_votes_and_cancels_work_on_either_node(
    server_factory: ServerFactory, cluster_env: dict[str, str]
) -> None:
    """Runs created on both nodes complete and read the same on both; a client of node B
    follows a run node A drives, live, entry by entry; a vote and a cancel sent to node B reach
    the run node A drives; every ledger verifies on the other node."""
    a = _node(server_factory, cluster_env, "node-a")
    b = _node(server_factory, cluster_env, "node-b")
    on_a, on_b = a.client(), b.client()
    for client in (on_a, on_b):
        health = client.get("/health").json()
        assert health["ledger"] == "postgres", health

    simple: list[dict[str, Any]] = [
        {"tool": "kv_set", "args": {"key": "k", "value": 1}},
        {"final": "done"},
    ]
    runs = [_script_run(c, simple, ["kv_*"]) for c in (on_a, on_b, on_a, on_b)]
    for run_id in runs:
        for client in (on_a, on_b):
            record = wait_terminal(client, run_id, timeout_s=30)
            assert record["status"] == "completed", record
            assert record["summary"]["final_answer"] == "done"
    listed = {r["run_id"] for r in on_b.get("/runs", params={"limit": 50}).json()["runs"]}
    assert set(runs) <= listed

    # One Idempotency-Key sent to both nodes at once: one run, the same answer from both.
    body = {"task": "once", "tool_scopes": ["kv_*"], "cognition": {"script": simple}}
    headers = {"Idempotency-Key": "cluster-once"}
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(lambda c: c.post("/runs", json=body, headers=headers), (on_a, on_b))
        )
    assert all(a.status_code in (200, 202) for a in answers), [a.text for a in answers]
    assert len({a.json()["run_id"] for a in answers}) == 1, [a.text for a in answers]
    conflict = on_b.post("/runs", json={**body, "task": "another"}, headers=headers)
    assert_error(conflict, 409, "idempotency_conflict")

    # Node B follows a run node A drives: its entries arrive while the run is still going.
    slow: list[dict[str, Any]] = [{"text": f"thinking {i}", "sleep_ms": 400} for i in range(4)]
    slow.append({"final": "slow"})
    followed = _script_run(on_a, slow, ["kv_*"])
    seqs: list[int] = []
    kinds: list[str] = []
    seen_live = False
    with on_b.stream("GET", f"/runs/{followed}/events") as response:
        assert response.status_code == 200
        for message in iter_sse(response):
            if message.comment is not None:
                continue
            seqs.append(int(message.id or -1))
            kinds.append(message.event or "")
            if len(seqs) == 2:
                # The run has four slow turns to go: it is live, not a replay of a finished one.
                status = on_a.get(f"/runs/{followed}").json()["status"]
                seen_live = status == "running"
    assert seen_live, "node B's stream only caught up after the run ended"
    assert seqs == list(range(len(seqs))), seqs
    assert kinds[0] == "run_started" and kinds[-1] == "run_ended", kinds
    assert wait_terminal(on_b, followed)["summary"]["final_answer"] == "slow"

    # A vote sent to node B reaches the run node A drives.
    ask: list[dict[str, Any]] = [
        {"tool": "kv_set", "args": {"key": "gate", "value": "needs-approval"}},
        {"final": "approved"},
    ]
    voted = _script_run(on_a, ask, ["kv_*"])
    pending = _pending(on_b, voted, "ops")
    vote = on_b.post(f"/runs/{voted}/approvals/ops", json={"approve": True, "reason": "via b"})
    assert vote.status_code == 200, vote.text
    assert vote.json()["proposal_id"] == pending["proposal_id"]
    record = wait_terminal(on_b, voted, timeout_s=30)
    assert (record["status"], record["summary"]["final_answer"]) == ("completed", "approved")
    assert "approval" in _kinds(on_b, voted)

    # A cancel sent to node B ends the run node A drives.
    cancelled = _script_run(on_a, ask, ["kv_*"])
    _pending(on_b, cancelled, "ops")
    response = on_b.post(f"/runs/{cancelled}/cancel", json={"reason": "via b"})
    assert response.status_code == 202, response.text
    record = wait_terminal(on_a, cancelled, timeout_s=30)
    assert record["status"] == "cancelled", record
    assert_error(on_b.post(f"/runs/{cancelled}/cancel"), 409, "run_not_active")

    # A delegating run outlives several heartbeats: its child is leased like any run, so
    # the node that drives both never mistakes the child for a run another node took.
    child_script = [{"text": f"child {i}", "sleep_ms": 500} for i in range(4)]
    child_script.append({"final": "child done"})
    delegate = {
        "tool": "delegate",
        "args": {
            "task": "slow child",
            "tool_scopes": ["kv_set"],
            "cognition": {"script": child_script},
        },
    }
    parent = _script_run(on_a, [delegate, {"final": "parent done"}], ["kv_*", "delegate"])
    record = wait_terminal(on_b, parent, timeout_s=60)
    assert (record["status"], record["summary"]["final_answer"]) == ("completed", "parent done")
    (child,) = [
        c["child_run_id"] for c in on_b.get(f"/runs/{parent}/delegations").json()["delegations"]
    ]
    assert wait_terminal(on_b, child)["summary"]["final_answer"] == "child done"

    for run_id in [*runs, followed, voted, cancelled, parent, child]:
        _verified(on_b, run_id)


def test_the_runs_of_a_killed_node_are_finished_by_the_other_and_no_effect_runs_twice(
    server_factory: ServerFactory, cluster_env: dict[str, str]
) -> None:
    """SIGKILL node A while one of its runs holds an external call between its durable start
    and its commit and another waits on a slow model turn: node B takes both over once A's
    leases expire. The call whose outcome is unknown is put to an operator (denied here, so
    the effect happened once); the other run resumes; both complete and every ledger
    verifies."""
    workspace = _workspace(cluster_env)
    (workspace / "hold").write_text("")
    a = _node(server_factory, cluster_env, "node-a")
    b = _node(server_factory, cluster_env, "node-b")
    on_a, on_b = a.client(), b.client()
    external = _script_run(
        on_a,
        [
            {"tool": "kv_set", "args": {"key": "before", "value": 1}},
            {"tool": "append_once", "args": {"line": "effect"}},
            {"tool": "kv_set", "args": {"key": "after", "value": 2}},
            {"final": "external done"},
        ],
        ["kv_set", "append_once"],
    )
    slow = _script_run(
        on_a,
        [{"text": "warming up"}, {"text": "a long thought", "sleep_ms": 3000}, {"final": "slow"}],
        ["kv_*"],
    )
    effects = workspace / "effects.txt"
    wait_for(
        lambda: True if effects.exists() and effects.read_text() else None,
        timeout_s=30,
        what="the external call to take effect",
    )
    wait_for(
        lambda: True if "turn" in _kinds(on_b, slow) else None,
        timeout_s=30,
        what="the slow run's first turn",
    )
    assert _kinds(on_b, external)[-1] == "execution_started"
    a.kill()
    (workspace / "hold").unlink()
    wait_for(
        lambda: True if not alive_with(">> effects.txt") else None,
        timeout_s=10,
        what="the external call's process to die with its node",
    )

    pending = _pending(on_b, external, "recovery")
    assert pending["tool"] == "append_once"
    denial = {"approve": False, "reason": "it already ran"}
    response = on_b.post(f"/runs/{external}/approvals/recovery", json=denial)
    assert response.status_code == 200, response.text
    for run_id, answer in ((external, "external done"), (slow, "slow")):
        record = wait_terminal(on_b, run_id, timeout_s=TAKEOVER_TIMEOUT_S)
        assert (record["status"], record["summary"]["final_answer"]) == ("completed", answer)
        kinds = _kinds(on_b, run_id)
        assert "resumption" in kinds, kinds
        _verified(on_b, run_id)
    assert effects.read_text().splitlines() == ["effect"], "the external effect ran twice"


def test_dropped_database_connections_pause_runs_and_lose_nothing(
    server_factory: ServerFactory, cluster_env: dict[str, str], database: str
) -> None:
    """Every connection the server holds to PostgreSQL is ended twice while runs are active:
    the runs carry on once the server reconnects, complete, and their ledgers verify."""
    node = _node(server_factory, cluster_env, "node-a")
    client = node.client()
    script: list[dict[str, Any]] = [
        step
        for i in range(6)
        for step in (
            {"text": f"step {i}", "sleep_ms": 150},
            {"tool": "kv_set", "args": {"key": f"k{i}", "value": i}},
        )
    ] + [{"final": "survived"}]
    runs = [_script_run(client, script, ["kv_*"]) for _ in range(4)]
    for _ in range(2):
        heads = {r: client.get(f"/runs/{r}").json()["summary"]["head_seq"] for r in runs}
        ended = terminate_connections(database)
        assert ended > 0, "the server held no connection to end"

        def moved(before: dict[str, int] = heads) -> bool | None:
            for run_id, head in before.items():
                response = client.get(f"/runs/{run_id}")
                if response.status_code != 200:
                    return None  # 503 storage_unavailable while it reconnects
                record = response.json()
                if record["status"] == "running" and record["summary"]["head_seq"] <= head:
                    return None
            return True

        wait_for(moved, timeout_s=60, what="the runs to move on after the connections dropped")
    for run_id in runs:
        record = wait_terminal(client, run_id, timeout_s=60)
        assert (record["status"], record["summary"]["final_answer"]) == ("completed", "survived")
        _verified(client, run_id)
        kv = client.get(f"/runs/{run_id}/world").json()
        assert len([r for r in kv["resources"] if r["kind"] == "kv"]) == 6


def test_a_package_installed_or_activated_on_one_node_governs_runs_on_the_other(
    server_factory: ServerFactory, cluster_env: dict[str, str]
) -> None:
    """Node A trusts a publisher, takes its packages, installs a manifest tool and activates a
    policy; node B's runs scope the tool and are governed by the policy (its decisions name the
    package), and B's audit lists what A recorded, on one registry ledger."""
    a = _node(server_factory, cluster_env, "node-a")
    b = _node(server_factory, cluster_env, "node-b")
    on_a, on_b = a.client(), b.client()
    private = secrets.token_hex(32)
    trusted = on_a.post(
        "/marketplace/publishers", json={"name": "co", "public_key": public_key_of(private)}
    )
    assert trusted.status_code == 201, trusted.text
    greet = {**APPEND_ONCE, "name": "greet", "effect_class": "read", "executor": {"kind": "noop"}}
    packages = [
        ("greeter", "tool_manifest", greet),
        (
            "no-kv-get",
            "policy",
            {"cedar": 'forbid(principal, action, resource == Thymos::Tool::"kv_get");'},
        ),
    ]
    for name, kind, content in packages:
        body = sign(publish_body(name=name, version="1.0.0", kind=kind, content=content), private)
        assert on_b.post("/marketplace/packages", json=body).status_code == 201
    assert on_a.post("/marketplace/packages/greeter/install").status_code == 200
    used = _script_run(on_b, [{"tool": "greet", "args": {"line": "x"}}, {"final": "ok"}], ["greet"])
    record = wait_terminal(on_b, used, timeout_s=30)
    assert record["status"] == "completed", record
    assert "commit" in _kinds(on_b, used)

    activated = on_a.post("/marketplace/packages/no-kv-get/activate")
    assert activated.status_code == 200, activated.text
    assert on_b.get("/policy").json()["policy_hash"] == activated.json()["policy_hash"]
    denied = _script_run(
        on_b, [{"tool": "kv_get", "args": {"key": "k"}}, {"final": "ok"}], ["kv_*"]
    )
    wait_terminal(on_b, denied, timeout_s=30)
    head = on_b.get(f"/runs/{denied}").json()["summary"]["head_seq"]
    events = read_events(on_b, f"/runs/{denied}/events", limit=head + 1)
    (rejection,) = [e.json() for e in events if e.event == "rejection"]
    assert rejection["payload"]["policies"] == ["package:no-kv-get@1.0.0#1"]
    for run_id in (used, denied):
        _verified(on_a, run_id)

    listed = on_b.get(
        "/audit/entries",
        params={"kind": "publisher_trusted,package_published,package_installed,policy_activated"},
    ).json()["entries"]
    assert [e["kind"] for e in listed] == [
        "publisher_trusted",
        "package_published",
        "package_published",
        "package_installed",
        "policy_activated",
    ]
    assert [e["seq"] for e in listed] == [0, 1, 2, 3, 4]
