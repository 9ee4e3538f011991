"""Stops and restarts: what the server recorded survives it, and runs it abandoned are closed."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests.e2e._harness import (
    ServerProcess,
    Sse,
    assert_error,
    create_run,
    iter_sse,
    read_events,
    wait_for,
    wait_head,
    wait_terminal,
)
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox


def _script(*elements: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": "durability",
        "tool_scopes": ["kv_*", "fs_read"],
        "cognition": {"provider": "mock", "script": list(elements)},
    }


KV_SET = {"tool": "kv_set", "args": {"key": "k", "value": [1, 2, 3]}}
LONG_SLEEP = {"sleep_ms": 60_000}


def _snapshot(client: httpx.Client, run_ids: list[str]) -> dict[str, Any]:
    """Everything a client can read about these runs, as comparable values."""
    out: dict[str, Any] = {"runs": client.get("/runs", params={"limit": 500}).json()}
    for run_id in run_ids:
        for path in ("", "/execution", "/world", "/replay", "/world/at?seq=3"):
            response = client.get(f"/runs/{run_id}{path}")
            assert response.status_code == 200, (path, response.text)
            out[f"{run_id}{path}"] = response.json()
        ledger = client.get(f"/runs/{run_id}/ledger")
        assert ledger.status_code == 200
        out[f"{run_id}/ledger"] = ledger.content
        out[f"{run_id}/events"] = read_events(client, f"/runs/{run_id}/events")
    return out


def test_restart_keeps_runs_records_worlds_replays_and_ledgers_identical(
    server: ServerProcess,
) -> None:
    """After a clean SIGTERM (exit 0) and a new server on the same data dir, GET /runs,
    /runs/:id, /execution, /world, /world/at, /replay, /ledger and /events answer exactly what
    they answered before the restart, for a completed and a failed run."""
    client = server.client()
    completed = create_run(
        client, _script(KV_SET, {"tool": "fs_read", "args": {"path": "README.md"}}, {"final": "ok"})
    )
    failed = create_run(client, _script(KV_SET, {"error": "the model fell over"}))
    assert wait_terminal(client, completed)["status"] == "completed"
    failed_record = wait_terminal(client, failed)
    assert failed_record["status"] == "failed"
    assert failed_record["summary"]["terminated_by"] == "error"
    before = _snapshot(client, [completed, failed])
    assert before[f"{completed}/replay"]["verified"] is True
    assert before[f"{failed}/replay"]["verified"] is True
    assert [r["run_id"] for r in before["runs"]["runs"]] == [failed, completed]

    server.restart()

    after = _snapshot(server.client(), [completed, failed])
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key


def _follow(server: ServerProcess, run_id: str, out: list[Sse], ended: threading.Event) -> None:
    """Read /events in a thread until the server ends the stream."""
    try:
        with (
            httpx.Client(base_url=server.base_url, timeout=httpx.Timeout(20.0)) as client,
            client.stream("GET", f"/runs/{run_id}/events") as response,
        ):
            for message in iter_sse(response):
                if message.comment is None:
                    out.append(message)
        ended.set()
    except httpx.HTTPError as exc:  # recorded, and the test fails on it
        out.append(Sse(event="client_error", data=repr(exc)))


def test_sigterm_with_active_run_drains_refuses_new_runs_and_records_interrupted(
    server_factory: ServerFactory,
) -> None:
    """SIGTERM with a run in a long model turn: POST /runs (and /ready) answer 503 while
    the server drains, the server exits 0 within a few seconds, the open /events stream ends
    (with the run's run_ended entry), and after a restart the run is failed / interrupted, its
    commit kept, and its replay verifies."""
    server = server_factory({"THYMOS_SHUTDOWN_GRACE_S": "1", "THYMOS_AUTO_RESUME": "false"})
    client = server.client()
    run_id = create_run(client, _script(KV_SET, LONG_SLEEP, {"final": "never"}))
    # run_started, turn, intent, commit, then the long model turn.
    wait_head(client, run_id, at_least=3)
    events: list[Sse] = []
    ended = threading.Event()
    follower = threading.Thread(target=_follow, args=(server, run_id, events, ended), daemon=True)
    follower.start()
    wait_for(lambda: True if len(events) >= 4 else None, timeout_s=10, what="events caught up")

    stopping = httpx.Client(base_url=server.base_url, timeout=5.0)
    assert stopping.get("/health").status_code == 200  # the connection is open before SIGTERM
    started = time.monotonic()
    server.signal_stop()
    refused: list[httpx.Response] = []
    # A request that reaches the server before it handles the signal is still accepted.
    accepted: list[str] = []
    while time.monotonic() - started < 10 and not refused:
        try:
            response = stopping.post("/runs", json={"task": "too late"})
        except httpx.TransportError:
            break  # the server has stopped listening
        assert response.status_code in (202, 503), response.text
        if response.status_code == 503:
            refused.append(response)
        else:
            accepted.append(response.json()["run_id"])
    ready: httpx.Response | None = None
    if refused:
        try:
            ready = stopping.get("/ready")
        except httpx.TransportError:
            ready = None  # the drain finished first
    stopping.close()
    assert refused, "POST /runs was never refused with 503 during the drain"
    if ready is not None:
        assert_error(ready, 503)
    assert_error(refused[0], 503, "shutting_down")
    assert refused[0].headers.get("retry-after")

    code = server.wait_exit(timeout_s=10)
    assert code == 0, server.log_tail()
    assert time.monotonic() - started < 8
    follower.join(timeout=10)
    assert not follower.is_alive(), "the /events stream did not end at shutdown"
    assert ended.is_set(), events[-1:]
    assert [e.id for e in events] == [str(s) for s in range(len(events))]
    assert events[-1].event == "run_ended"
    assert events[-1].json()["payload"]["terminated_by"] == "interrupted"

    server.start()
    client = server.client()
    record = client.get(f"/runs/{run_id}").json()
    assert record["status"] == "failed"
    assert record["summary"]["terminated_by"] == "interrupted"
    assert record["summary"]["commits"] == 1
    replay = client.get(f"/runs/{run_id}/replay").json()
    assert replay["verified"] is True, replay["failures"]
    assert replay["world_matches"] is True
    assert replay["kinds"]["run_ended"] == 1
    world = client.get(f"/runs/{run_id}/world").json()
    assert [(r["kind"], r["id"]) for r in world["resources"]] == [("kv", "k")]
    # No run was created by the refused requests.
    runs = client.get("/runs").json()["runs"]
    assert {r["run_id"] for r in runs} == {run_id, *accepted}


def test_sigkill_mid_run_is_recorded_interrupted_on_restart_and_replays(
    server_factory: ServerFactory,
) -> None:
    """A server killed with SIGKILL during a run leaves it `running` on disk; the next server
    on the same data dir (auto-resume off) records it failed / interrupted (one run_ended
    entry), keeps its commit, serves a stream that ends, and its replay verifies."""
    server = server_factory({"THYMOS_AUTO_RESUME": "false"})
    client = server.client()
    run_id = create_run(client, _script(KV_SET, LONG_SLEEP, {"final": "never"}))
    # Streams carry only durable entries: once seq 3 (the commit) is streamed, it is on disk.
    durable = read_events(client, f"/runs/{run_id}/events", limit=4)
    assert [e.event for e in durable] == ["run_started", "turn", "intent", "commit"]
    head = 3
    server.kill()

    server.start()
    client = server.client()
    record = client.get(f"/runs/{run_id}").json()
    assert record["status"] == "failed"
    assert record["summary"]["terminated_by"] == "interrupted"
    assert record["summary"]["commits"] == 1
    assert record["summary"]["head_seq"] == head + 1
    assert client.get("/runs", params={"status": "running"}).json()["runs"] == []
    events = read_events(client, f"/runs/{run_id}/events")
    assert [e.id for e in events] == [str(s) for s in range(head + 2)]
    assert [e.event for e in events].count("run_ended") == 1
    assert events[-1].event == "run_ended"
    assert events[-1].json()["payload"]["terminated_by"] == "interrupted"
    replay = client.get(f"/runs/{run_id}/replay").json()
    assert replay["verified"] is True, replay["failures"]
    assert replay["world_matches"] is True
    execution = client.get(f"/runs/{run_id}/execution").json()
    assert execution["status"] == "failed"
    assert execution["terminated_by"] == "interrupted"

    # A second restart does not record it again.
    server.restart()
    again = server.client().get(f"/runs/{run_id}").json()
    assert again == record
