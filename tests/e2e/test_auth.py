"""API keys, tenants, roles, per-key rate limits and `GET /usage`, against the real server.

One server per module is started with `THYMOS_API_KEYS` naming keys of two tenants. Each test
that checks exact counts uses keys no other test touches, so the tests hold in any order and
split across workers.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e._harness import (
    ServerProcess,
    assert_error,
    create_run,
    wait_terminal,
)
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

SECRETS = {
    "a1": "a1-secret-0123456789abcdef",
    "a2": "a2-secret-0123456789abcdef",
    "a-viewer": "av-secret-0123456789abcdef",
    "a-admin": "aa-secret-0123456789abcdef",
    "b1": "b1-secret-0123456789abcdef",
    "a-limited": "al-secret-0123456789abcdef",
}
RATE_LIMIT_RPM = 3

KEYS_ENV = ",".join(
    [
        f"a1:A:operator:{SECRETS['a1']}",
        f"a2:A:operator:{SECRETS['a2']}",
        f"a-viewer:A:viewer:{SECRETS['a-viewer']}",
        f"a-admin:A:admin:{SECRETS['a-admin']}",
        f"b1:B:operator:{SECRETS['b1']}",
        f"a-limited:A:operator:{SECRETS['a-limited']}:{RATE_LIMIT_RPM}",
    ]
)

# Every run-scoped read, stream included; `{id}` is the run id.
RUN_READS = (
    "/runs/{id}",
    "/runs/{id}/execution",
    "/runs/{id}/world",
    "/runs/{id}/world/at?seq=0",
    "/runs/{id}/replay",
    "/runs/{id}/ledger",
    "/runs/{id}/events",
    "/runs/{id}/execution/stream",
    "/runs/{id}/stream",
)

USAGE_SCRIPT: list[dict[str, Any]] = [
    {
        "tool": "fs_read",
        "args": {"path": "README.md"},
        "usage": {"input_tokens": 120, "output_tokens": 30},
    },
    {"final": "read it", "usage": {"input_tokens": 40, "output_tokens": 7}},
]


@pytest.fixture(scope="module")
def keyed_server(module_server_factory: ServerFactory) -> ServerProcess:
    """A server whose keys are seeded from THYMOS_API_KEYS (tenants A and B)."""
    return module_server_factory({"THYMOS_API_KEYS": KEYS_ENV})


def as_key(server: ServerProcess, name: str) -> httpx.Client:
    """A client of `server` sending the named key's secret as a bearer token."""
    client = server.client()
    client.headers["Authorization"] = f"Bearer {SECRETS[name]}"
    return client


def finished_run(client: httpx.Client, task: str) -> str:
    run_id = create_run(client, {"task": task, "cognition": {"script": [{"final": "done"}]}})
    wait_terminal(client, run_id)
    return run_id


def test_requests_without_a_valid_key_are_401_with_a_bearer_challenge(
    keyed_server: ServerProcess,
) -> None:
    """Once keys exist, a run route or /tools without a key, with an unknown key, or with a
    non-Bearer Authorization header answers 401 `unauthenticated` in the error envelope with
    `WWW-Authenticate: Bearer`; no such request creates a run."""
    client = keyed_server.client()
    attempts = [
        ("GET", "/runs", {}),
        ("GET", "/tools", {}),
        ("GET", "/usage", {}),
        ("POST", "/runs", {}),
        ("GET", "/runs", {"Authorization": "Bearer not-a-key-0123456789abcdef"}),
        ("GET", "/runs", {"Authorization": f"Basic {SECRETS['a1']}"}),
        ("GET", "/runs", {"Authorization": "Bearer"}),
        ("GET", "/runs", {"Authorization": f"Bearer {SECRETS['a1']}x"}),
    ]
    for method, path, headers in attempts:
        response = client.request(method, path, headers=headers, json={"task": "x"})
        assert_error(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer"
    listing = as_key(keyed_server, "a-admin").get("/runs", params={"limit": 100})
    assert listing.status_code == 200
    assert all(run["task"] != "x" for run in listing.json()["runs"])


def test_health_ready_and_openapi_need_no_key_but_tools_does(keyed_server: ServerProcess) -> None:
    """/health, /ready, /openapi.json and /docs answer 200 without a key on a guarded server;
    /tools answers 200 with any valid key (a viewer's included)."""
    client = keyed_server.client()
    for path in ("/health", "/ready", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path
    tools = as_key(keyed_server, "a-viewer").get("/tools")
    assert tools.status_code == 200
    assert tools.json()["tools"]


def test_another_tenant_sees_none_of_a_tenants_runs_on_any_endpoint(
    keyed_server: ServerProcess,
) -> None:
    """A run made by tenant A's key is invisible to tenant B's key: absent from B's GET /runs,
    and every run-scoped read and stream answers 404 `run_not_found`, exactly as for a run that
    does not exist; every key of tenant A (operator, viewer, admin) can read it."""
    run_id = finished_run(as_key(keyed_server, "a1"), "tenant A's run")
    b_client = as_key(keyed_server, "b1")
    b_run = finished_run(b_client, "tenant B's run")
    listed = b_client.get("/runs", params={"limit": 100})
    assert listed.status_code == 200
    ids = {run["run_id"] for run in listed.json()["runs"]}
    assert run_id not in ids
    assert b_run in ids
    for template in RUN_READS:
        path = template.format(id=run_id)
        assert_error(b_client.get(path), 404, "run_not_found")
    for name in ("a1", "a-viewer", "a-admin"):
        a_client = as_key(keyed_server, name)
        for template in RUN_READS:
            # The run has ended, so its streams send what they have and end by themselves.
            response = a_client.get(template.format(id=run_id))
            assert response.status_code == 200, (name, template, response.text)
        a_ids = {run["run_id"] for run in a_client.get("/runs").json()["runs"]}
        assert run_id in a_ids
        assert b_run not in a_ids
        assert_error(a_client.get(f"/runs/{b_run}"), 404, "run_not_found")


def test_viewer_reads_runs_but_cannot_create_them(keyed_server: ServerProcess) -> None:
    """A viewer key reads its tenant's runs (record and execution), but POST /runs answers 403
    `forbidden` naming the role, and creates nothing."""
    run_id = finished_run(as_key(keyed_server, "a1"), "for the viewer")
    viewer = as_key(keyed_server, "a-viewer")
    assert viewer.get(f"/runs/{run_id}").status_code == 200
    assert viewer.get(f"/runs/{run_id}/execution").status_code == 200
    before = {run["run_id"] for run in viewer.get("/runs", params={"limit": 100}).json()["runs"]}
    error = assert_error(
        viewer.post("/runs", json={"task": "viewer tries", "cognition": {"provider": "mock"}}),
        403,
        "forbidden",
    )
    assert "viewer" in error["message"]
    after = {run["run_id"] for run in viewer.get("/runs", params={"limit": 100}).json()["runs"]}
    assert after == before


def test_rate_limit_answers_429_with_retry_after_and_rejections_do_not_count(
    keyed_server: ServerProcess,
) -> None:
    """A key with rpm=3 gets 3 requests through in a minute; the 4th and later answer 429
    `rate_limited` with a whole-second `Retry-After` within the minute that never grows while
    rejected; /usage then shows the window holding exactly the 3 admitted requests and the
    key's request count 3 (the rejected ones counted in neither)."""
    limited = as_key(keyed_server, "a-limited")
    for _ in range(RATE_LIMIT_RPM):
        assert limited.get("/runs").status_code == 200
    retry_afters: list[int] = []
    for _ in range(5):
        response = limited.get("/runs")
        assert_error(response, 429, "rate_limited")
        retry_afters.append(int(response.headers["retry-after"]))
    assert all(1 <= value <= 60 for value in retry_afters), retry_afters
    assert retry_afters == sorted(retry_afters, reverse=True), retry_afters
    other = as_key(keyed_server, "a1").get("/runs")
    assert other.status_code == 200, "one key's limit must not limit another key"
    rows = {
        row["name"]: row for row in as_key(keyed_server, "a-admin").get("/usage").json()["keys"]
    }
    row = rows["a-limited"]
    assert row["rpm"] == RATE_LIMIT_RPM
    assert row["requests"] == RATE_LIMIT_RPM
    assert row["window"]["used"] == RATE_LIMIT_RPM
    assert row["window"]["remaining"] == 0
    assert row["window"]["resets_at"] is not None
    assert rows["a1"]["window"] is None
    assert rows["a1"]["rpm"] is None


def test_usage_counts_requests_runs_tokens_and_tool_calls_per_key(
    keyed_server: ServerProcess,
) -> None:
    """For key a2 (used by this test only): /usage reports exactly the requests it made
    (including the /usage call itself), the runs it created, and the sum of their input/output
    tokens, tool calls and spend as the runs themselves report; an admin sees every key of every
    tenant; an operator sees only its own row; no row carries a secret or its hash."""
    made = 0

    def count(_: httpx.Request) -> None:
        nonlocal made
        made += 1

    a2 = as_key(keyed_server, "a2")
    a2.event_hooks = {**a2.event_hooks, "request": [count]}
    first = create_run(a2, {"task": "usage one", "cognition": {"script": USAGE_SCRIPT}})
    second = create_run(a2, {"task": "usage two", "cognition": {"script": [{"final": "ok"}]}})
    records = [wait_terminal(a2, first), wait_terminal(a2, second)]
    usage = [record["usage"] for record in records]
    assert usage[0]["input_tokens"] == 160
    assert usage[0]["output_tokens"] == 37
    assert usage[0]["tool_calls"] == 1

    own = a2.get("/usage")
    assert own.status_code == 200
    body = own.json()
    assert body["gateway"] is True
    assert [row["name"] for row in body["keys"]] == ["a2"]
    row = body["keys"][0]
    assert row["tenant"] == "A"
    assert row["role"] == "operator"
    assert row["requests"] == made
    assert row["runs_created"] == 2
    for field in ("input_tokens", "output_tokens", "tool_calls", "usd_millicents"):
        assert row[field] == sum(u[field] for u in usage), field
    assert row["rpm"] is None

    admin_view = as_key(keyed_server, "a-admin").get("/usage").json()
    by_name = {r["name"]: r for r in admin_view["keys"]}
    assert set(by_name) == set(SECRETS)
    assert by_name["b1"]["tenant"] == "B"
    assert by_name["a2"]["requests"] == made
    assert by_name["a2"]["runs_created"] == 2
    assert by_name["a2"]["input_tokens"] == row["input_tokens"]
    text = json.dumps(admin_view)
    assert not any(secret in text for secret in SECRETS.values())
    assert "hash" not in text

    b_view = as_key(keyed_server, "b1").get("/usage").json()
    assert [r["name"] for r in b_view["keys"]] == ["b1"]


def test_secrets_never_appear_in_the_server_log(keyed_server: ServerProcess) -> None:
    """After authenticated, rejected and rate-limited traffic, no key's secret is in the
    server's log."""
    as_key(keyed_server, "a1").get("/runs")
    keyed_server.client().get("/runs", headers={"Authorization": "Bearer wrong-0123456789abcdef"})
    log = keyed_server.log_path.read_text(errors="replace")
    assert "API gateway on" in log
    assert not any(secret in log for secret in SECRETS.values())


def test_open_server_usage_says_the_gateway_is_off(server: ServerProcess) -> None:
    """Without keys the server is open: run routes and /tools need no key, and /usage answers
    200 with `gateway: false` and an empty key list."""
    client = server.client()
    response = client.get("/usage")
    assert response.status_code == 200
    assert response.json()["gateway"] is False
    assert response.json()["keys"] == []
    assert client.get("/runs").status_code == 200
    assert client.get("/tools").status_code == 200
    finished_run(client, "open server run")


def test_env_keys_update_in_place_and_removed_keys_stop_working(
    server_factory: ServerFactory,
) -> None:
    """Restarting with THYMOS_API_KEYS changed updates a key of the same name (a new secret
    replaces the old one, a new role applies) and revokes a key no longer listed; runs created
    before still count for the updated key."""
    first_env = (
        f"k1:T:operator:{'k1-old-secret-0123456789'},k2:T:operator:{'k2-secret-0123456789ab'}"
    )
    server = server_factory({"THYMOS_API_KEYS": first_env})
    old = server.client()
    old.headers["Authorization"] = "Bearer k1-old-secret-0123456789"
    finished_run(old, "before the rotation")
    server.stop()
    server.env_extra["THYMOS_API_KEYS"] = "k1:T:admin:k1-new-secret-0123456789"
    server.start()
    client = server.client()
    assert_error(
        client.get("/runs", headers={"Authorization": "Bearer k1-old-secret-0123456789"}),
        401,
        "unauthenticated",
    )
    assert_error(
        client.get("/runs", headers={"Authorization": "Bearer k2-secret-0123456789ab"}),
        401,
        "unauthenticated",
    )
    client.headers["Authorization"] = "Bearer k1-new-secret-0123456789"
    rows = client.get("/usage").json()["keys"]
    assert [(r["name"], r["role"], r["runs_created"]) for r in rows] == [("k1", "admin", 1)]
