"""Whatever a client sends, the answer is a 4xx with the one error envelope, never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
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

UNKNOWN_RUN = "01900000-0000-7000-8000-000000000000"
MIB = 1024 * 1024


@dataclass
class Shared:
    server: ServerProcess
    client: httpx.Client
    run_id: str
    head: int


@pytest.fixture(scope="module")
def shared(module_server_factory: ServerFactory) -> Iterator[Shared]:
    server = module_server_factory()
    client = server.client()
    run_id = create_run(client, {"task": "a finished run to ask about"})
    record = wait_terminal(client, run_id)
    yield Shared(server, client, run_id, record["summary"]["head_seq"])
    # After every bad request of the module the server is healthy and never answered 5xx.
    assert client.get("/health").status_code == 200
    assert not server.server_errors(), server.server_errors()


@dataclass(frozen=True)
class Bad:
    method: str
    path: str
    status: int
    code: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _run(**fields: Any) -> dict[str, Any]:
    return {"task": "do something", **fields}


BAD_BODIES: dict[str, Bad] = {
    "malformed-json": Bad("POST", "/runs", 400, "malformed_json", content=b'{"task": '),
    "trailing-comma": Bad("POST", "/runs", 400, "malformed_json", content=b'{"task": "x",}'),
    "nan": Bad("POST", "/runs", 400, "malformed_json", content=b'{"task": "x", "max_steps": NaN}'),
    "empty-body": Bad("POST", "/runs", 400, "malformed_json", content=b""),
    "invalid-utf8": Bad("POST", "/runs", 400, "malformed_json", content=b'{"task": "\xff\xfe"}'),
    "body-array": Bad("POST", "/runs", 400, "malformed_request", json=[{"task": "x"}]),
    "body-string": Bad("POST", "/runs", 400, "malformed_request", json="task"),
    "body-null": Bad("POST", "/runs", 400, "malformed_request", content=b"null"),
    "unknown-field": Bad("POST", "/runs", 422, "invalid_request", json=_run(bogus=1)),
    "unknown-nested-field": Bad(
        "POST",
        "/runs",
        422,
        "invalid_request",
        json=_run(cognition={"provider": "mock", "temperature": 1}),
    ),
    "missing-task": Bad("POST", "/runs", 422, "invalid_request", json={"max_steps": 3}),
    "max-steps-string": Bad("POST", "/runs", 422, "invalid_request", json=_run(max_steps="5")),
    "max-steps-float": Bad("POST", "/runs", 422, "invalid_request", json=_run(max_steps=5.5)),
    "max-steps-bool": Bad("POST", "/runs", 422, "invalid_request", json=_run(max_steps=True)),
    "task-number": Bad("POST", "/runs", 422, "invalid_request", json={"task": 42}),
    "scopes-string": Bad("POST", "/runs", 422, "invalid_request", json=_run(tool_scopes="kv_*")),
    "cognition-string": Bad("POST", "/runs", 422, "invalid_request", json=_run(cognition="mock")),
    "max-steps-0": Bad("POST", "/runs", 422, "invalid_request", json=_run(max_steps=0)),
    "max-steps-1001": Bad("POST", "/runs", 422, "invalid_request", json=_run(max_steps=1001)),
    "max-steps-negative": Bad("POST", "/runs", 422, "invalid_request", json=_run(max_steps=-1)),
    "task-too-long": Bad("POST", "/runs", 422, "invalid_request", json={"task": "x" * 20_001}),
    "task-empty": Bad("POST", "/runs", 422, "invalid_request", json={"task": ""}),
    "task-blank": Bad("POST", "/runs", 422, "invalid_request", json={"task": "   "}),
    "unknown-scope": Bad(
        "POST", "/runs", 422, "unknown_tool_scope", json=_run(tool_scopes=["fs_read", "nope_*"])
    ),
    "unknown-exact-scope": Bad(
        "POST", "/runs", 422, "unknown_tool_scope", json=_run(tool_scopes=["no_such_tool"])
    ),
    "unknown-provider": Bad(
        "POST", "/runs", 422, "unknown_provider", json=_run(cognition={"provider": "gpt-17"})
    ),
    "script-bad-element": Bad(
        "POST",
        "/runs",
        422,
        "invalid_script",
        json=_run(cognition={"provider": "mock", "script": [{"bogus": 1}]}),
    ),
    "script-two-actions": Bad(
        "POST",
        "/runs",
        422,
        "invalid_script",
        json=_run(cognition={"script": [{"tool": "fs_read", "error": "x"}]}),
    ),
    "script-negative-sleep": Bad(
        "POST", "/runs", 422, "invalid_script", json=_run(cognition={"script": [{"sleep_ms": -1}]})
    ),
    "script-args-not-object": Bad(
        "POST",
        "/runs",
        422,
        "invalid_script",
        json=_run(cognition={"script": [{"tool": "fs_read", "args": [1]}]}),
    ),
    "negative-budget": Bad(
        "POST", "/runs", 422, "invalid_request", json=_run(budget={"tokens": -1})
    ),
    "body-over-1mib": Bad(
        "POST", "/runs", 413, "body_too_large", content=b'{"task": "' + b"x" * MIB + b'"}'
    ),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_run_request_is_refused_with_its_error_code(shared: Shared, name: str) -> None:
    """A malformed, ill-typed, out-of-range, unknown-field, unknown-scope, unknown-provider,
    invalid-script or oversized POST /runs body gets its documented status and error code in
    the one error envelope, creates no run, and leaves the server healthy."""
    bad = BAD_BODIES[name]
    before = shared.client.get("/runs", params={"limit": 500}).json()["runs"]
    headers = {"content-type": "application/json", **bad.headers}
    if bad.content is not None:
        response = shared.client.request(bad.method, bad.path, content=bad.content, headers=headers)
    else:
        response = shared.client.request(bad.method, bad.path, json=bad.json, headers=headers)
    assert_error(response, bad.status, bad.code)
    after = shared.client.get("/runs", params={"limit": 500}).json()["runs"]
    assert after == before
    assert shared.client.get("/health").status_code == 200


def test_chunked_body_over_1mib_is_413(shared: Shared) -> None:
    """A body over 1 MiB sent chunked (no Content-Length) is cut off with 413 body_too_large."""

    def chunks() -> Iterator[bytes]:
        yield b'{"task": "'
        for _ in range(20):
            yield b"y" * (64 * 1024)
        yield b'"}'

    response = shared.client.post(
        "/runs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "body_too_large")
    assert shared.client.get("/health").status_code == 200


def test_limits_are_inclusive_at_their_bounds(shared: Shared) -> None:
    """A task of exactly 20000 characters and max_steps of 1 and 1000 are accepted (202)."""
    for body in (
        {"task": "z" * 20_000, "max_steps": 1},
        {"task": "bounds", "max_steps": 1000, "cognition": {"script": [{"final": "ok"}]}},
    ):
        run_id = create_run(shared.client, body)
        assert wait_terminal(shared.client, run_id)["status"] in ("completed", "failed")


def _bad_gets(run_id: str, head: int) -> dict[str, Bad]:
    cases: dict[str, Bad] = {}
    for suffix in ("", "/execution", "/world", "/world/at?seq=0", "/replay", "/ledger", "/events"):
        for label, ident in (("unknown", UNKNOWN_RUN), ("malformed", "not-a-run-id")):
            cases[f"{label}-run{suffix or '/'}"] = Bad(
                "GET", f"/runs/{ident}{suffix}", 404, "run_not_found"
            )
    cases["execution-stream-unknown-run"] = Bad(
        "GET", f"/runs/{UNKNOWN_RUN}/execution/stream", 404, "run_not_found"
    )
    for label, seq in (
        ("negative", "-1"),
        ("beyond-head", str(head + 1)),
        ("word", "abc"),
        ("float", "1.5"),
        ("empty", ""),
        ("huge", "9" * 40),
    ):
        cases[f"world-at-{label}"] = Bad(
            "GET", f"/runs/{run_id}/world/at?seq={seq}", 400, "seq_out_of_range"
        )
    cases["world-at-missing-seq"] = Bad("GET", f"/runs/{run_id}/world/at", 400, "invalid_query")
    cases["unknown-route"] = Bad("GET", "/no/such/route", 404, "not_found")
    cases["unknown-run-subroute"] = Bad("GET", f"/runs/{run_id}/nope", 404, "not_found")
    cases["delete-runs"] = Bad("DELETE", "/runs", 405, "method_not_allowed")
    cases["put-health"] = Bad("PUT", "/health", 405, "method_not_allowed")
    cases["post-run"] = Bad("POST", f"/runs/{run_id}", 405, "method_not_allowed")
    cases["bad-cursor"] = Bad("GET", "/runs?cursor=not-a-cursor", 400, "invalid_cursor")
    cases["limit-0"] = Bad("GET", "/runs?limit=0", 400, "invalid_query")
    cases["limit-10000"] = Bad("GET", "/runs?limit=10000", 400, "invalid_query")
    cases["limit-word"] = Bad("GET", "/runs?limit=ten", 400, "invalid_query")
    cases["status-unknown"] = Bad("GET", "/runs?status=sleeping", 400, "invalid_query")
    cases["events-after-seq-word"] = Bad(
        "GET", f"/runs/{run_id}/events?after_seq=x", 400, "invalid_query"
    )
    cases["events-bad-last-event-id"] = Bad(
        "GET", f"/runs/{run_id}/events", 400, "invalid_query", headers={"Last-Event-ID": "abc"}
    )
    # Beyond any seq storage can hold: a bad query value, never a crash mid-stream.
    huge = str(2**63)
    cases["events-after-seq-huge"] = Bad(
        "GET", f"/runs/{run_id}/events?after_seq={huge}", 400, "invalid_query"
    )
    # A Last-Event-ID is at most 19 digits (its documented pattern; a larger one that fits is
    # read as "after everything"); more digits are not a seq.
    cases["events-last-event-id-huge"] = Bad(
        "GET", f"/runs/{run_id}/events", 400, "invalid_query", headers={"Last-Event-ID": "9" * 20}
    )
    cases["ledger-after-seq-huge"] = Bad(
        "GET", f"/runs/{run_id}/ledger?after_seq={huge}", 400, "invalid_query"
    )
    cases["ledger-after-seq-below-minus-one"] = Bad(
        "GET", f"/runs/{run_id}/ledger?after_seq=-2", 400, "invalid_query"
    )
    cases["ledger-after-seq-word"] = Bad(
        "GET", f"/runs/{run_id}/ledger?after_seq=x", 400, "invalid_query"
    )
    return cases


BAD_GET_NAMES = list(_bad_gets(UNKNOWN_RUN, 0))


@pytest.mark.parametrize("name", BAD_GET_NAMES)
def test_bad_read_is_refused_with_its_error_code(shared: Shared, name: str) -> None:
    """Unknown or malformed run ids (404 run_not_found on every run route), bad world/at seqs
    (400 seq_out_of_range with the head in details), unknown routes (404 not_found), wrong
    methods (405 method_not_allowed), bad cursors and limits (400) all answer the one error
    envelope, and the server stays healthy."""
    bad = _bad_gets(shared.run_id, shared.head)[name]
    response = shared.client.request(bad.method, bad.path, headers=bad.headers)
    error = assert_error(response, bad.status, bad.code)
    if bad.code == "seq_out_of_range":
        assert error["details"]["head"] == shared.head
    assert shared.client.get("/health").status_code == 200


def test_idempotency_key_replays_the_same_run_and_refuses_another_body(shared: Shared) -> None:
    """The same Idempotency-Key with the same body returns the same run_id (no second run);
    the same key with a different body is 409 idempotency_conflict; another key is a new run."""
    client = shared.client
    body = {"task": "idempotent", "cognition": {"script": [{"final": "once"}]}}
    first = client.post("/runs", json=body, headers={"Idempotency-Key": "key-1"})
    assert first.status_code == 202, first.text
    again = client.post("/runs", json=body, headers={"Idempotency-Key": "key-1"})
    assert again.status_code == 202, again.text
    assert again.json()["run_id"] == first.json()["run_id"]
    # Key order and whitespace do not make a different body.
    reordered = client.post(
        "/runs",
        content=b'{ "cognition": {"script": [{"final": "once"}]},  "task": "idempotent" }',
        headers={"Idempotency-Key": "key-1", "content-type": "application/json"},
    )
    assert reordered.status_code == 202, reordered.text
    assert reordered.json()["run_id"] == first.json()["run_id"]

    conflict = client.post(
        "/runs", json={**body, "task": "something else"}, headers={"Idempotency-Key": "key-1"}
    )
    assert_error(conflict, 409, "idempotency_conflict")
    other = client.post("/runs", json=body, headers={"Idempotency-Key": "key-2"})
    assert other.status_code == 202
    assert other.json()["run_id"] != first.json()["run_id"]
    runs = client.get("/runs", params={"limit": 500}).json()["runs"]
    tasks = [r["task"] for r in runs]
    assert tasks.count("idempotent") == 2
    assert "something else" not in tasks
