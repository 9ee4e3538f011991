"""Facts about the server: /health, /ready, /tools, /openapi.json, and paging GET /runs."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e._harness import ServerProcess, assert_error, create_run, wait_terminal
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

# Every route API.md names, as (method, OpenAPI path). The server must list in /openapi.json
# exactly those it serves; the web console (`GET /`) is a page, not an API route.
CONTRACT_ROUTES: tuple[tuple[str, str], ...] = (
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/tools"),
    ("get", "/metrics"),
    ("get", "/usage"),
    ("post", "/runs"),
    ("get", "/runs"),
    ("get", "/runs/{run_id}"),
    ("get", "/runs/{run_id}/execution"),
    ("get", "/runs/{run_id}/execution/stream"),
    ("get", "/runs/{run_id}/stream"),
    ("get", "/runs/{run_id}/events"),
    ("get", "/runs/{run_id}/world"),
    ("get", "/runs/{run_id}/world/at"),
    ("get", "/runs/{run_id}/replay"),
    ("get", "/runs/{run_id}/ledger"),
    ("post", "/runs/{run_id}/resume"),
    ("post", "/runs/{run_id}/cancel"),
    ("post", "/runs/{run_id}/branch"),
    ("get", "/runs/{run_id}/delegations"),
    ("post", "/runs/{run_id}/approvals/{channel}"),
    ("get", "/audit/entries"),
    ("get", "/audit/entries/count"),
    ("get", "/marketplace/packages"),
    ("post", "/marketplace/packages"),
    ("get", "/marketplace/packages/{name}"),
)
NOT_BUILT_YET: set[tuple[str, str]] = set()
"""Roadmap routes (STATUS.md) not served yet: none left of the API.md list."""
IMPLEMENTED_NOW = set(CONTRACT_ROUTES) - NOT_BUILT_YET
NOT_API = {"/", "/docs", "/docs/oauth2-redirect", "/openapi.json"}


@pytest.fixture(scope="module")
def shared_server(module_server_factory: ServerFactory) -> ServerProcess:
    """One server for the read-only facts of this module (paging gets its own)."""
    return module_server_factory()


def _concrete(path: str, run_id: str) -> str:
    return (
        path.replace("{run_id}", run_id)
        .replace("{channel}", "ops")
        .replace("{name}", "no-such-package")
    )


def test_health_reports_the_runtime_facts(shared_server: ServerProcess) -> None:
    """/health answers status ok, mode reference, default_provider mock, cognition_live false,
    ledger sqlite, shutdown false and a version string; /ready answers 200."""
    client = shared_server.client()
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["mode"] == "reference"
    assert body["default_provider"] == "mock"
    assert body["cognition_live"] is False
    assert body["ledger"] == "sqlite"
    assert body["shutdown"] is False
    assert isinstance(body["version"], str)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", body["version"])
    assert client.get("/ready").status_code == 200


def test_tools_lists_every_builtin_with_effect_risk_and_schema(
    shared_server: ServerProcess,
) -> None:
    """/tools lists kv_get, kv_set, repo_map, fs_read and grep, each with a description, source
    builtin, an effect and risk class, and a JSON-Schema object as input_schema; kv_set is the
    only one that writes."""
    response = shared_server.client().get("/tools")
    assert response.status_code == 200
    tools: list[dict[str, Any]] = response.json()["tools"]
    by_name = {tool["name"]: tool for tool in tools}
    assert len(by_name) == len(tools)
    assert {"kv_get", "kv_set", "repo_map", "fs_read", "grep"} <= set(by_name)
    for tool in tools:
        assert isinstance(tool["description"], str)
        assert tool["description"]
        assert tool["source"] in ("builtin", "manifest", "mcp")
        assert isinstance(tool["effect"], str)
        assert tool["effect"]
        assert isinstance(tool["risk"], str)
        assert tool["risk"]
        schema = tool["input_schema"]
        assert isinstance(schema, dict)
        assert schema["type"] == "object"
    for name in ("kv_get", "kv_set", "repo_map", "fs_read", "grep"):
        assert by_name[name]["source"] == "builtin"
    assert by_name["kv_set"]["effect"] != by_name["kv_get"]["effect"]
    assert by_name["fs_read"]["effect"] == by_name["kv_get"]["effect"]
    assert "path" in by_name["fs_read"]["input_schema"]["properties"]
    assert set(by_name["kv_set"]["input_schema"]["required"]) == {"key", "value"}


def test_openapi_is_3_1_and_lists_exactly_the_routes_the_server_serves(
    shared_server: ServerProcess,
) -> None:
    """/openapi.json is an OpenAPI 3.1 document; every route the server implements today is
    in it; every documented path answers (not a route-level 404); and every route API.md names
    is either documented or not served at all (404 not_found), never served undocumented."""
    client = shared_server.client()
    run_id = create_run(client, {"task": "openapi", "cognition": {"script": [{"final": "ok"}]}})
    wait_terminal(client, run_id)
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert str(document["openapi"]).startswith("3.1")
    assert document["info"]["title"]
    paths: dict[str, dict[str, Any]] = document["paths"]
    documented = {(method, path) for path, item in paths.items() for method in item}
    assert documented >= IMPLEMENTED_NOW, IMPLEMENTED_NOW - documented
    # A roadmap route that gets built must leave NOT_BUILT_YET (and STATUS.md's list).
    assert not (documented & NOT_BUILT_YET), documented & NOT_BUILT_YET
    assert "CreateRunBody" in document.get("components", {}).get("schemas", {})

    for method, path in sorted(documented):
        if path in NOT_API or method not in ("get", "post"):
            continue
        url = _concrete(path, run_id)
        if url.endswith("/world/at"):
            url += "?seq=0"
        answer = client.get(url) if method == "get" else client.post(url, json={})
        assert answer.status_code < 500, (method, path, answer.text)
        if answer.status_code in (404, 405):
            assert answer.json()["error"]["code"] not in ("not_found", "method_not_allowed"), (
                method,
                path,
            )

    for method, path in CONTRACT_ROUTES:
        if (method, path) in documented:
            continue
        url = _concrete(path, run_id)
        answer = client.request(method.upper(), url, json={} if method == "post" else None)
        assert answer.status_code in (404, 405), (method, path, answer.status_code)
        code = answer.json()["error"]["code"]
        assert code in ("not_found", "method_not_allowed"), (method, path, code)


def test_runs_page_newest_first_exactly_once_and_filter_by_status(server: ServerProcess) -> None:
    """Five runs (three completed, two failed) paged with limit=2 and next_cursor come back
    each exactly once, newest first (run ids descending, created_at non-increasing), with
    next_cursor null on the last page; ?status= filters; a cursor from one listing works with
    the same filter."""
    client = server.client()
    created: list[str] = []
    for index in range(5):
        script = [{"final": f"run {index}"}] if index % 2 == 0 else [{"error": "boom"}]
        created.append(
            create_run(client, {"task": f"page {index}", "cognition": {"script": script}})
        )
    for run_id in created:
        wait_terminal(client, run_id)

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get("/runs", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["runs"]) <= 2
        seen.extend(body["runs"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
        assert pages < 10
    assert pages == 3
    ids = [r["run_id"] for r in seen]
    assert ids == list(reversed(created))
    assert [r["created_at"] for r in seen] == sorted((r["created_at"] for r in seen), reverse=True)
    assert client.get("/runs", params={"limit": 5}).json()["next_cursor"] is None

    completed = client.get("/runs", params={"status": "completed"}).json()
    assert [r["run_id"] for r in completed["runs"]] == [created[4], created[2], created[0]]
    assert all(r["status"] == "completed" for r in completed["runs"])
    failed = client.get("/runs", params={"status": "failed"}).json()
    assert [r["run_id"] for r in failed["runs"]] == [created[3], created[1]]
    assert all(r["summary"]["terminated_by"] == "error" for r in failed["runs"])
    assert client.get("/runs", params={"status": "running"}).json()["runs"] == []

    first = client.get("/runs", params={"status": "completed", "limit": 1}).json()
    second = client.get(
        "/runs", params={"status": "completed", "limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [r["run_id"] for r in first["runs"] + second["runs"]] == [
        created[4],
        created[2],
        created[0],
    ]
    assert second["next_cursor"] is None
    assert_error(client.get("/runs", params={"cursor": "x" + (first["next_cursor"] or "")}), 400)
