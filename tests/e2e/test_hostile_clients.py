"""The server holds against hostile clients and web pages (issue 6), tried on the real process.

Each test reproduces one attack from the issue against `thymos serve` with its defaults (plus
what the attack needs) and checks the server refuses it with its documented code, records
nothing it should not, and stays healthy.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._authority import entries, of_kind, policy_dir, wait_pending
from tests.e2e._harness import (
    ServerProcess,
    assert_error,
    create_run,
    ledger_lines,
    raw_exchange,
    wait_for,
    wait_terminal,
)
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

WAIT_POLICY = '@id("hold")\n@approval("ops")\npermit(principal, action, resource);\n'
"""Every tool call waits for one approval on channel ops: a run that calls a tool stays active."""


def _kv_run(value: Any) -> dict[str, Any]:
    return {
        "task": "store a value",
        "tool_scopes": ["kv_set"],
        "cognition": {
            "script": [{"tool": "kv_set", "args": {"key": "k", "value": value}}, {"final": "ok"}]
        },
    }


# -- 1. the server's own files are out of every tool's reach -----------------------------------


def test_no_tool_reads_the_root_key_policies_or_ledger_wherever_they_lie(
    server_factory: ServerFactory,
) -> None:
    """With the data directory inside the workspace (the default layout: `./.thymos` in the
    working directory) and the policy folder there too, a run scoped to every read tool tries
    each way in: by name, through `..`, a symlink, a hard link, a whole-tree grep and repo_map.
    Every direct attempt is a recorded `protected_path` failure, the walks never show those
    files, the root key appears nowhere in the ledger, and the server warned at start-up."""
    server = server_factory(start=False)
    workspace = server.workspace
    server.data_dir = workspace / ".thymos"
    policies = policy_dir(workspace, allow="permit(principal, action, resource);\n")
    server.env_extra["THYMOS_POLICY_DIR"] = str(policies)
    server.start()
    root_key = (server.data_dir / "root_key").read_text().strip()
    assert len(root_key) == 64
    os.symlink(server.data_dir / "root_key", workspace / "innocent.txt")
    os.link(server.data_dir / "root_key", workspace / "docs" / "key-copy.txt")
    attempts = [
        ("fs_read", {"path": ".thymos/root_key"}),
        ("fs_read", {"path": "docs/../.thymos/root_key"}),
        ("fs_read", {"path": ".thymos/ledger.sqlite3"}),
        ("fs_read", {"path": "innocent.txt"}),
        ("fs_read", {"path": "docs/key-copy.txt"}),
        ("fs_read", {"path": "policies/allow.cedar"}),
        ("grep", {"pattern": ".", "path": ".thymos"}),
        ("grep", {"pattern": ".", "path": "policies"}),
        ("repo_map", {"path": ".thymos"}),
        ("repo_map", {"path": "policies"}),
    ]
    walks = [
        ("grep", {"pattern": root_key[:16]}),
        ("grep", {"pattern": "permit"}),
        ("repo_map", {}),
    ]
    script: list[dict[str, Any]] = [{"tool": tool, "args": args} for tool, args in attempts + walks]
    client = server.client()
    run_id = create_run(
        client,
        {
            "task": "read the server's secrets",
            "tool_scopes": ["fs_read", "grep", "repo_map"],
            "cognition": {"script": [*script, {"final": "done"}]},
        },
    )
    assert wait_terminal(client, run_id)["status"] == "completed"
    ledger = entries(client, run_id)
    failures = of_kind(ledger, "tool_failure")
    assert [f["payload"]["error"]["code"] for f in failures] == ["protected_path"] * len(attempts)
    commits = of_kind(ledger, "commit")
    assert len(commits) == len(walks)
    grep_key, grep_policy, listing = (c["payload"]["output"] for c in commits)
    assert grep_key["matches"] == []
    assert grep_policy["matches"] == []
    listed = {f["path"] for f in listing["files"]}
    assert listed == {"README.md", "docs/notes.txt"}, listed
    exported = b"\n".join(ledger_lines(client, run_id))
    assert root_key.encode() not in exported
    assert b"permit(principal" not in exported
    log = server.log_tail(20_000)
    assert "lies inside the workspace" in log, log


# -- 2. web pages cannot drive the server ------------------------------------------------------


def _count_runs(client: httpx.Client) -> int:
    response = client.get("/runs", params={"limit": 500})
    assert response.status_code == 200, response.text
    return len(response.json()["runs"])


RUN = json.dumps({"task": "from a web page", "cognition": {"script": [{"final": "pwned"}]}})


def test_a_web_page_cannot_start_a_run(server: ServerProcess) -> None:
    """What a browser lets any page send: a "simple" cross-origin POST (text/plain, form or no
    type), a request from a foreign origin with a JSON type, a rebound host name, a cross-site
    fetch without Origin, a preflight from an unlisted origin. Each is refused with its code and
    no run is created; the server's own origin and loopback names keep working."""
    client = server.client()
    origin = f"http://127.0.0.1:{server.port}"
    refused = [
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/json; charset=latin-1"}, 415, "unsupported_media_type"),
        ({}, 415, "unsupported_media_type"),
        (
            {"Content-Type": "application/json", "Origin": "http://evil.example"},
            403,
            "origin_not_allowed",
        ),
        ({"Content-Type": "application/json", "Origin": "null"}, 403, "origin_not_allowed"),
        (
            {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
            403,
            "origin_not_allowed",
        ),
        (
            {"Content-Type": "application/json", "Host": f"evil.example:{server.port}"},
            400,
            "host_not_allowed",
        ),
        (
            {"Content-Type": "application/json", "Host": "127.0.0.1.nip.io"},
            400,
            "host_not_allowed",
        ),
    ]
    for headers, status, code in refused:
        response = client.post("/runs", content=RUN.encode(), headers=headers)
        assert_error(response, status, code)
    preflight = client.options(
        "/runs",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert_error(preflight, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in preflight.headers
    assert _count_runs(client) == 0
    # The rebound name is refused on every route, reads included.
    assert_error(client.get("/health", headers={"Host": "evil.example"}), 400, "host_not_allowed")
    accepted = [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json; charset=UTF-8"},
        {"Content-Type": "application/json", "Origin": origin},
        {"Content-Type": "application/json", "Host": f"localhost:{server.port}"},
        {"Content-Type": "application/json", "Host": "[::1]"},
    ]
    for headers in accepted:
        response = client.post("/runs", content=RUN.encode(), headers=headers)
        assert response.status_code == 202, (headers, response.text)
    assert _count_runs(client) == len(accepted)


def test_listed_origins_and_hosts_are_served_with_cors(server_factory: ServerFactory) -> None:
    """`THYMOS_CORS_ORIGINS` lets a console on another origin call the API: its preflight is
    answered with the methods and headers it may use, its responses carry its origin, and other
    origins stay refused. `THYMOS_ALLOWED_HOSTS` adds served names (and subdomains)."""
    console = "http://console.example:5173"
    server = server_factory(
        {
            "THYMOS_CORS_ORIGINS": console,
            "THYMOS_ALLOWED_HOSTS": "thymos.example,*.corp.example",
        }
    )
    client = server.client()
    preflight = client.options(
        "/runs",
        headers={
            "Origin": console,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["access-control-allow-origin"] == console
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    created = client.post(
        "/runs",
        content=RUN.encode(),
        headers={"Origin": console, "Content-Type": "application/json"},
    )
    assert created.status_code == 202, created.text
    assert created.headers["access-control-allow-origin"] == console
    assert "Retry-After" in created.headers["access-control-expose-headers"]
    other = client.post(
        "/runs",
        content=RUN.encode(),
        headers={"Origin": "http://console.example:5174", "Content-Type": "application/json"},
    )
    assert_error(other, 403, "origin_not_allowed")
    for host in ("thymos.example", "THYMOS.example:80", "a.corp.example", "b.a.corp.example"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host
    for host in ("corp.example", "thymos.example.evil", "xcorp.example"):
        assert_error(client.get("/health", headers={"Host": host}), 400, "host_not_allowed")


def test_head_is_answered_wherever_get_is(server_factory: ServerFactory, tmp_path: Path) -> None:
    """HEAD on every GET route answers the GET's status and headers without a body, and a
    stream's HEAD returns at once instead of streaming (the run it follows waits for an
    approval that never comes)."""
    server = server_factory({"THYMOS_POLICY_DIR": str(policy_dir(tmp_path, hold=WAIT_POLICY))})
    client = server.client()
    run_id = create_run(client, {"task": "head", "cognition": {"script": [{"final": "ok"}]}})
    wait_terminal(client, run_id)
    paths = [
        "/health",
        "/ready",
        "/tools",
        "/openapi.json",
        "/runs",
        f"/runs/{run_id}",
        f"/runs/{run_id}/execution",
        f"/runs/{run_id}/world",
        f"/runs/{run_id}/world/at?seq=0",
        f"/runs/{run_id}/replay",
        f"/runs/{run_id}/ledger",
        f"/runs/{run_id}/events",
        f"/runs/{run_id}/execution/stream",
        f"/runs/{run_id}/stream",
        "/usage",
        "/policy",
        "/policy/schema",
        "/writs/root-key",
        "/runs/01900000-0000-7000-8000-000000000000",
    ]
    for path in paths:
        get = client.get(path)
        head = client.head(path)
        assert head.status_code == get.status_code, (path, head.status_code, get.status_code)
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
    live = create_run(client, _kv_run(1))
    wait_pending(client, live)
    for path in (f"/runs/{live}/events", f"/runs/{live}/execution/stream", f"/runs/{live}/stream"):
        head = client.head(path)
        assert head.status_code == 200, path
        assert head.headers["content-type"].startswith("text/event-stream")
    not_allowed = client.put("/runs")
    error = assert_error(not_allowed, 405, "method_not_allowed")
    assert not_allowed.headers["allow"] == "GET, HEAD, POST", not_allowed.headers
    assert error["details"]["allowed"] == ["GET", "HEAD", "POST"]


# -- 3. the active-run cap holds under concurrency ---------------------------------------------

CAP = 4


def test_the_active_run_cap_holds_under_a_burst(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Sixty-four concurrent POST /runs against a cap of four: exactly four are accepted (each
    run then thinks for a minute, so all stay active) and sixty are 429 capacity_exhausted with
    Retry-After; the accepted runs are exactly the runs listed. When one finishes, a new run is
    accepted again. Runs waiting for approval are parked and hold no slot: twice the cap of them
    wait at once."""
    server = server_factory(
        {
            "THYMOS_RUNS_ACTIVE_MAX": str(CAP),
            "THYMOS_POLICY_DIR": str(policy_dir(tmp_path, hold=WAIT_POLICY)),
        }
    )
    body = {
        "task": "hold a slot",
        "tool_scopes": ["kv_set"],
        "cognition": {"script": [{"text": "thinking", "sleep_ms": 60_000}, {"final": "ok"}]},
    }
    waits = {
        "task": "wait for a vote",
        "tool_scopes": ["kv_set"],
        "cognition": {
            "script": [{"tool": "kv_set", "args": {"key": "k", "value": 1}}, {"final": "ok"}]
        },
    }
    burst = 64

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.base_url, timeout=30.0) as one:
            return one.post("/runs", json=body)

    with concurrent.futures.ThreadPoolExecutor(max_workers=burst) as pool:
        responses = list(pool.map(post, range(burst)))
    accepted = [r.json()["run_id"] for r in responses if r.status_code == 202]
    refused = [r for r in responses if r.status_code != 202]
    assert len(accepted) == CAP, [r.status_code for r in responses]
    for response in refused:
        error = assert_error(response, 429, "capacity_exhausted")
        assert error["details"]["runs_active_max"] == CAP
        assert response.headers["retry-after"] == "1"
    client = server.client()
    listed = {run["run_id"] for run in client.get("/runs").json()["runs"]}
    assert listed == set(accepted)
    assert_error(client.post("/runs", json=body), 429, "capacity_exhausted")
    assert client.post(f"/runs/{accepted[0]}/cancel").status_code == 202
    wait_terminal(client, accepted[0])
    wait_for(
        lambda: True if client.post("/runs", json=body).status_code == 202 else None,
        timeout_s=15,
        what="a slot to free up",
    )
    for run_id in {run["run_id"] for run in client.get("/runs").json()["runs"]}:
        client.post(f"/runs/{run_id}/cancel")
    for run_id in {run["run_id"] for run in client.get("/runs").json()["runs"]}:
        wait_terminal(client, run_id)
    waiting = []
    for _ in range(2 * CAP):
        response = client.post("/runs", json=waits)
        assert response.status_code == 202, response.text
        waiting.append(response.json()["run_id"])
        wait_pending(client, waiting[-1])
        wait_for(
            lambda: (
                client.get(f"/runs/{waiting[-1]}/execution").json()["phase"] == "parked" or None
            ),
            timeout_s=15,
            what="the waiting run to park",
        )
    assert len(client.get("/approvals").json()["approvals"]) == 2 * CAP


# -- 5 and 6. bodies and headers with one meaning, never a 500 ---------------------------------


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"v": value}
    return value


def _nested_body(depth: int) -> bytes:
    """A kv_set run whose value nests `depth` objects, spelled out (no encoder's limit applies)."""
    value = b'{"v": ' * depth + b'"leaf"' + b"}" * depth
    return (
        b'{"task": "store a value", "tool_scopes": ["kv_set"], "cognition": {"script": '
        b'[{"tool": "kv_set", "args": {"key": "k", "value": ' + value + b'}}, {"final": "ok"}]}}'
    )


def test_deep_nesting_is_refused_at_the_edge(server: ServerProcess) -> None:
    """A kv_set value nested 250 or 1,000 levels deep (a 500 before: the storage encoder's and
    the canonical encoder's recursion limits) is 422 json_too_deep, as is a bare nested array
    past the parser's own depth; a value that fits under the limit runs and commits."""
    client = server.client()
    json_type = {"Content-Type": "application/json"}
    for depth in (250, 1000):
        response = client.post("/runs", content=_nested_body(depth), headers=json_type)
        error = assert_error(response, 422, "json_too_deep")
        assert error["details"]["depth_max"] == 64
    deep_array = b'{"task": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert_error(client.post("/runs", content=deep_array, headers=json_type), 422, "json_too_deep")
    assert _count_runs(client) == 0
    run_id = create_run(client, _kv_run(_nested(50)))
    assert wait_terminal(client, run_id)["status"] == "completed"
    world = client.get(f"/runs/{run_id}/world").json()
    assert world["resources"][0]["value"] == _nested(50)


def test_ambiguous_requests_are_refused(server_factory: ServerFactory) -> None:
    """A key named twice in one object (the last used to win), a header an authenticated
    request names twice (the first used to win), and integers past 2^53 (read as floats, later
    a tool failure) are refused with their own codes; 2^53 - 1 and an integral 5.0 are
    accepted as the integers they are."""
    secret = "duplicate-header-secret-0123"
    other = "duplicate-header-other-0123"
    server = server_factory({"THYMOS_API_KEYS": f"one:T:operator:{secret},two:T:admin:{other}"})
    client = server.client()
    client.headers["Authorization"] = f"Bearer {secret}"
    json_type = {"Content-Type": "application/json"}
    for raw, key in (
        (b'{"task": "A", "task": "B"}', "task"),
        (b'{"task": "x", "cognition": {"provider": "mock", "provider": "mock"}}', "provider"),
        (b'{"task": "x", "budget": {"tokens": 1, "tokens": 9}}', "tokens"),
    ):
        error = assert_error(
            client.post("/runs", content=raw, headers=json_type), 400, "duplicate_key"
        )
        assert error["details"]["key"] == key
    two_keys = httpx.Headers(
        [
            ("Authorization", f"Bearer {secret}"),
            ("Authorization", f"Bearer {other}"),
            ("Content-Type", "application/json"),
        ]
    )
    with httpx.Client(base_url=server.base_url, timeout=15.0) as bare:
        response = bare.post("/runs", content=RUN.encode(), headers=two_keys)
        error = assert_error(response, 400, "duplicate_header")
        assert error["details"]["header"] == "authorization"
    # HTTP clients refuse to send two Host headers; a hostile one does not.
    status, answer = raw_exchange(
        server.port,
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
    )
    assert (status, json.loads(answer)["error"]["code"]) == (400, "duplicate_header")
    for number in (2**53, -(2**53), 2**64, 10**30):
        response = client.post("/runs", json=_kv_run(number))
        assert_error(response, 422, "number_out_of_range")
    big_float = b'{"task": "x", "max_steps": 9007199254740993.0}'
    assert_error(
        client.post("/runs", content=big_float, headers=json_type), 422, "number_out_of_range"
    )
    assert _count_runs(client) == 0
    run_id = create_run(client, {**_kv_run(2**53 - 1), "max_steps": 5.0})
    record = wait_terminal(client, run_id)
    assert record["status"] == "completed"
    assert record["max_steps"] == 5
    world = client.get(f"/runs/{run_id}/world").json()
    assert world["resources"][0]["value"] == 2**53 - 1
