"""Installing tool packages and activating policy packages, over real HTTP on `thymos serve`.

One keyed server per module (tenants A and B, an admin each), whose own policy makes `kv_get`
wait for an approval on channel `ops`. A trusted publisher publishes a manifest tool, an MCP
server, a policy package and a skill; A's admin installs and activates them for tenant A:

- a manifest tool is unknown to every run until installed, then A's runs scope it and call it
  (its command runs), while B's runs still cannot scope it; uninstalled, it is gone again;
- an MCP server package starts its server at install, and its tools are called by A's runs;
- an activated policy package governs the next decision of a run already waiting, and the
  rejection names the package's policy; B's runs are not governed by it; deactivated, it no
  longer governs;
- every action (trust, publish, install, activate, uninstall, deactivate) is an entry of the
  acting tenant's registry ledger, listed by `/audit/entries` with the key that did it, seen by
  no other tenant; every run replays.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._authority import KEYS_ENV, as_key, entries, of_kind, policy_dir
from tests.e2e._harness import ServerProcess, assert_error, create_run, wait_for, wait_terminal
from tests.e2e.conftest import ServerFactory
from thymos.marketplace import public_key_of, publish_body, sign

pytestmark = pytest.mark.blackbox

SERVER_POLICY = """\
@id("permit-all")
permit(principal, action, resource);

@id("kv-get-needs-ops")
@approval("ops")
permit(principal, action, resource == Thymos::Tool::"kv_get");
"""
GREETER = {
    "name": "greet",
    "version": "1.0.0",
    "description": "Say hello to someone",
    "effect_class": "read",
    "risk_class": "low",
    "input_schema": {
        "type": "object",
        "properties": {"who": {"type": "string"}},
        "required": ["who"],
    },
    "executor": {"kind": "shell", "command_template": "echo hello {who}"},
}
NO_KV_SET = '@id("no-kv-set")\nforbid(principal, action, resource == Thymos::Tool::"kv_set");\n'
TIME_SERVER = Path(sys.executable).with_name("mcp-server-time")
FINAL = {"final": "done"}


@pytest.fixture(scope="module")
def server(
    module_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    folder = policy_dir(tmp_path_factory.mktemp("install-policy"), main=SERVER_POLICY)
    return module_server_factory({"THYMOS_API_KEYS": KEYS_ENV, "THYMOS_POLICY_DIR": str(folder)})


def _publish(client: httpx.Client, private: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/marketplace/packages", json=sign(publish_body(**fields), private))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def published(server: ServerProcess) -> dict[str, dict[str, Any]]:
    private = secrets.token_hex(32)
    trusted = as_key(server, "a-admin").post(
        "/marketplace/publishers", json={"name": "tools-co", "public_key": public_key_of(private)}
    )
    assert trusted.status_code == 201, trusted.text
    operator = as_key(server, "a1")
    return {
        "greeter": _publish(
            operator,
            private,
            name="greeter",
            version="1.0.0",
            kind="tool_manifest",
            content=GREETER,
        ),
        "clock": _publish(
            operator,
            private,
            name="clock",
            version="1.0.0",
            kind="mcp_server",
            content={"clock": {"command": str(TIME_SERVER), "effect": "read", "risk": "low"}},
        ),
        "no-writes": _publish(
            operator,
            private,
            name="no-writes",
            version="1.0.0",
            kind="policy",
            content={"cedar": NO_KV_SET},
        ),
        "reader": _publish(
            operator,
            private,
            name="reader",
            version="1.0.0",
            kind="skill",
            content={"instructions": "read", "tool_scopes": ["kv_get"]},
        ),
    }


def _tools(client: httpx.Client) -> set[str]:
    return {tool["name"] for tool in client.get("/tools").json()["tools"]}


def _registry_entries(client: httpx.Client, kind: str) -> list[dict[str, Any]]:
    response = client.get("/audit/entries", params={"kind": kind, "limit": 500})
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["entries"]
    return listed


def _replays(client: httpx.Client, run_id: str) -> None:
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is True, report


def test_a_manifest_tool_is_usable_only_by_the_tenant_that_installed_it(
    server: ServerProcess, published: dict[str, dict[str, Any]]
) -> None:
    a, b, admin = as_key(server, "a1"), as_key(server, "b1"), as_key(server, "a-admin")
    body = {
        "task": "greet",
        "tool_scopes": ["greet"],
        "cognition": {"script": [{"tool": "greet", "args": {"who": "ada"}}, FINAL]},
    }
    assert "greet" not in _tools(a)
    assert_error(a.post("/runs", json=body), 422, "unknown_tool_scope")

    # Only an admin installs; a skill is not a tool package; an unknown version is 404.
    assert_error(a.post("/marketplace/packages/greeter/install"), 403, "forbidden")
    assert_error(admin.post("/marketplace/packages/reader/install"), 422, "wrong_package_kind")
    assert_error(
        admin.post("/marketplace/packages/greeter/install", json={"version": "2.0.0"}),
        404,
        "package_not_found",
    )
    assert_error(
        admin.post("/marketplace/packages/greeter/install", json={"version": "two"}),
        422,
        "invalid_version",
    )

    installed = admin.post("/marketplace/packages/greeter/install", json={"version": "1.0.0"})
    assert installed.status_code == 200, installed.text
    view = installed.json()
    assert view["changed"] is True
    assert view["installed"]["tools"] == ["greet"]
    assert view["installed"]["content_hash"] == published["greeter"]["content_hash"]
    again = admin.post("/marketplace/packages/greeter/install")
    assert again.json()["changed"] is False  # the newest version is the installed one

    assert "greet" in _tools(a)
    assert "greet" not in _tools(b)
    assert_error(b.post("/runs", json=body), 422, "unknown_tool_scope")

    run_id = create_run(a, body)
    record = wait_terminal(a, run_id)
    assert record["status"] == "completed", record
    (commit,) = of_kind(entries(a, run_id), "commit")
    assert commit["payload"]["tool"] == "greet"
    assert commit["payload"]["output"]["stdout"].strip() == "hello ada"
    _replays(a, run_id)

    listed = admin.get("/marketplace/installed").json()
    assert [p["name"] for p in listed["installed"]] == ["greeter"]
    assert as_key(server, "b-admin").get("/marketplace/installed").json()["installed"] == []

    removed = admin.post("/marketplace/packages/greeter/uninstall")
    assert removed.status_code == 200, removed.text
    assert "greet" not in _tools(a)
    assert_error(a.post("/runs", json=body), 422, "unknown_tool_scope")
    assert_error(
        admin.post("/marketplace/packages/greeter/uninstall"), 409, "package_not_installed"
    )
    # The run that used it still replays: its decisions name the catalog they were made under.
    _replays(a, run_id)


def test_an_installed_mcp_server_package_starts_and_its_tools_are_called(
    server: ServerProcess, published: dict[str, dict[str, Any]]
) -> None:
    a, admin = as_key(server, "a1"), as_key(server, "a-admin")
    installed = admin.post("/marketplace/packages/clock/install")
    assert installed.status_code == 200, installed.text
    tools = installed.json()["installed"]["tools"]
    assert "mcp_clock_get_current_time" in tools
    run_id = create_run(
        a,
        {
            "task": "what time is it",
            "tool_scopes": ["mcp_clock_*"],
            "cognition": {
                "script": [
                    {"tool": "mcp_clock_get_current_time", "args": {"timezone": "UTC"}},
                    FINAL,
                ]
            },
        },
    )
    record = wait_terminal(a, run_id, timeout_s=60)
    assert record["status"] == "completed", record
    (commit,) = of_kind(entries(a, run_id), "commit")
    assert commit["payload"]["output"]["structured"]["timezone"] == "UTC"
    _replays(a, run_id)
    assert admin.post("/marketplace/packages/clock/uninstall").status_code == 200


def _pending(client: httpx.Client, run_id: str) -> dict[str, Any] | None:
    record = client.get(f"/runs/{run_id}").json()
    return record if record["status"] == "waiting_approval" else None


def test_an_activated_policy_governs_the_next_decision_and_is_named(
    server: ServerProcess, published: dict[str, dict[str, Any]]
) -> None:
    a, b, admin = as_key(server, "a1"), as_key(server, "b1"), as_key(server, "a-admin")
    script = [
        {"tool": "kv_get", "args": {"key": "note"}},
        {"tool": "kv_set", "args": {"key": "note", "value": "x"}},
        FINAL,
    ]
    body = {"task": "write a note", "tool_scopes": ["kv_*"], "cognition": {"script": script}}
    assert_error(admin.post("/marketplace/packages/greeter/activate"), 422, "wrong_package_kind")
    policy_before = a.get("/policy").json()["policy_hash"]

    # A's run waits for approval on its first call; the policy is activated meanwhile.
    run_id = create_run(a, body)
    wait_for(lambda: _pending(a, run_id), timeout_s=15, what="the run to wait on ops")
    other = create_run(b, body)
    wait_for(lambda: _pending(b, other), timeout_s=15, what="B's run to wait on ops")
    activated = admin.post("/marketplace/packages/no-writes/activate")
    assert activated.status_code == 200, activated.text
    active = activated.json()
    assert active["activated"]["policies"] == ["package:no-writes@1.0.0#no-kv-set"]
    assert active["policy_hash"] != policy_before
    assert a.get("/policy").json()["policy_hash"] == active["policy_hash"]
    assert "package:no-writes@1.0.0" in a.get("/policy").json()["files"]
    assert b.get("/policy").json()["policy_hash"] == policy_before

    for client, run in ((a, run_id), (b, other)):
        voted = client.post(f"/runs/{run}/approvals/ops", json={"approve": True})
        assert voted.status_code == 200, voted.text
        assert wait_terminal(client, run)["status"] == "completed"

    (rejection,) = of_kind(entries(a, run_id), "rejection")
    assert rejection["payload"]["tool"] == "kv_set"
    assert rejection["payload"]["reason"] == "policy_denied"
    assert rejection["payload"]["policies"] == ["package:no-writes@1.0.0#no-kv-set"]
    assert rejection["payload"]["policy_hash"] == active["policy_hash"]
    _replays(a, run_id)
    # Tenant B's run was not governed by A's package: its kv_set committed.
    assert of_kind(entries(b, other), "rejection") == []
    assert [c["payload"]["tool"] for c in of_kind(entries(b, other), "commit")] == [
        "kv_get",
        "kv_set",
    ]

    deactivated = admin.post("/marketplace/packages/no-writes/deactivate")
    assert deactivated.status_code == 200, deactivated.text
    assert deactivated.json()["policy_hash"] == policy_before
    assert_error(
        admin.post("/marketplace/packages/no-writes/deactivate"), 409, "package_not_installed"
    )
    later = create_run(a, {**body, "cognition": {"script": script[1:]}})
    assert wait_terminal(a, later)["status"] == "completed"
    assert [c["payload"]["tool"] for c in of_kind(entries(a, later), "commit")] == ["kv_set"]
    _replays(a, run_id)


def test_every_marketplace_action_is_audited_with_its_key_in_its_tenant_only(
    server: ServerProcess, published: dict[str, dict[str, Any]]
) -> None:
    admin, b_admin = as_key(server, "a-admin"), as_key(server, "b-admin")
    trusted = _registry_entries(admin, "publisher_trusted")
    assert [(e["payload"]["name"], e["payload"]["by"]["name"]) for e in trusted] == [
        ("tools-co", "a-admin")
    ]
    published_entries = {
        e["payload"]["name"]: e for e in _registry_entries(admin, "package_published")
    }
    assert set(published_entries) == {"greeter", "clock", "no-writes", "reader"}
    for name, package in published.items():
        entry = published_entries[name]
        assert entry["payload"]["content_hash"] == package["content_hash"]
        assert entry["payload"]["version"] == "1.0.0"
        assert entry["payload"]["by"]["name"] == "a1"
        assert entry["payload"]["by"]["key_id"]

    # An install and an uninstall are recorded with the package's hash and the key; a listing
    # of one kind of registry entry counts what it pages through.
    assert admin.post("/marketplace/packages/greeter/install").status_code == 200
    assert admin.post("/marketplace/packages/greeter/uninstall").status_code == 200
    installs = _registry_entries(admin, "package_installed")
    (uninstall, *_) = _registry_entries(admin, "package_uninstalled")[-1:]
    assert uninstall["payload"]["name"] == "greeter"
    assert uninstall["payload"]["by"]["name"] == "a-admin"
    assert installs[-1]["payload"]["tools"] == ["greet"]
    for entry in installs:
        assert entry["payload"]["by"]["name"] == "a-admin"
        assert (
            entry["payload"]["content_hash"] == published[entry["payload"]["name"]]["content_hash"]
        )
    count = admin.get("/audit/entries/count", params={"kind": "package_installed"}).json()
    assert count["count"] == len(installs)

    # All of A's registry entries are one hash-chained ledger, in seq order.
    kinds = "publisher_trusted,package_published,package_installed,package_uninstalled,policy_activated,policy_deactivated"
    chain = _registry_entries(admin, kinds)
    ledger = {e["run_id"] for e in chain}
    assert len(ledger) == 1
    assert sorted(e["seq"] for e in chain) == list(range(len(chain)))
    # The registry ledger is not a run: it is not listed, nor shown as one.
    (ledger_id,) = ledger
    assert ledger_id not in {r["run_id"] for r in admin.get("/runs").json()["runs"]}
    assert_error(admin.get(f"/runs/{ledger_id}"), 404, "run_not_found")

    # Tenant B did nothing in the marketplace and sees none of A's actions.
    assert _registry_entries(b_admin, kinds) == []
