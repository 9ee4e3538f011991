"""The SSE streams: ids on every event, resumption without gaps or duplicates, live delivery,
an end of stream at the run's end, and comment keep-alives on a quiet run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e._harness import (
    ServerProcess,
    Sse,
    create_run,
    iter_sse,
    ledger_lines,
    read_events,
    wait_terminal,
)
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

KEEPALIVE_S = 0.2
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory({"THYMOS_SSE_KEEPALIVE_S": str(KEEPALIVE_S)})


def _script(*elements: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": "streams",
        "tool_scopes": ["kv_*", "fs_read"],
        "cognition": {"provider": "mock", "script": list(elements)},
    }


def _kv(key: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"tool": "kv_set", "args": {"key": key, "value": value}, **extra}


FAST = _script(
    _kv("a", 1),
    {"tool": "fs_read", "args": {"path": "README.md"}},
    _kv("b", 2),
    {"final": "fast"},
)


def _ids(events: list[Sse]) -> list[int]:
    return [int(e.id or "-1") for e in events]


def test_events_resume_from_last_event_id_and_after_seq_without_gap_or_duplicate(
    server: ServerProcess,
) -> None:
    """For a finished run, reading the first 3 events then reconnecting with Last-Event-ID (or
    ?after_seq=) of the last one seen yields exactly the remaining events: together they equal
    the full stream, in seq order, no duplicates, no gaps; Last-Event-ID at the head yields an
    empty stream that ends; Last-Event-ID wins over after_seq."""
    client = server.client()
    run_id = create_run(client, FAST)
    head = wait_terminal(client, run_id)["summary"]["head_seq"]
    path = f"/runs/{run_id}/events"
    full = read_events(client, path)
    assert _ids(full) == list(range(head + 1))

    first = read_events(client, path, limit=3)
    assert first == full[:3]
    last = first[-1].id
    assert last == "2"
    resumed = read_events(client, path, headers={"Last-Event-ID": last})
    assert first + resumed == full
    by_query = read_events(client, path, params={"after_seq": last})
    assert first + by_query == full

    for cut in (0, head - 1):
        rest = read_events(client, path, headers={"Last-Event-ID": str(cut)})
        assert _ids(rest) == list(range(cut + 1, head + 1))
    assert read_events(client, path, headers={"Last-Event-ID": str(head)}) == []
    assert read_events(client, path, params={"after_seq": head}) == []
    assert read_events(client, path, params={"after_seq": -1}) == full
    both = read_events(client, path, headers={"Last-Event-ID": "5"}, params={"after_seq": 1})
    assert _ids(both) == list(range(6, head + 1))


def test_events_of_a_live_run_arrive_live_and_the_stream_ends_at_run_ended(
    server: ServerProcess,
) -> None:
    """A subscriber connected just after POST /runs receives each entry while the run is still
    going (the kv_set commit arrives while GET /runs/:id still says running), gets every entry
    exactly once in seq order, and the stream ends by itself right after run_ended; a second
    subscriber resuming mid-run with Last-Event-ID also gets exactly the rest."""
    client = server.client()
    probe = server.client()
    run_id = create_run(
        client,
        _script(
            _kv("a", 1),
            {"sleep_ms": 300},
            {"tool": "fs_read", "args": {"path": "README.md"}, "sleep_ms": 300},
            {"final": "slow", "sleep_ms": 300},
        ),
    )
    received: list[Sse] = []
    arrival: list[float] = []
    status_at_first_commit: str | None = None
    resumed: list[Sse] | None = None
    with client.stream("GET", f"/runs/{run_id}/events") as response:
        assert response.status_code == 200
        for message in iter_sse(response):
            if message.comment is not None:
                continue
            received.append(message)
            arrival.append(time.monotonic())
            if message.event == "commit" and status_at_first_commit is None:
                status_at_first_commit = probe.get(f"/runs/{run_id}").json()["status"]
                # A second subscriber joins mid-run from this event.
                resumed = read_events(
                    probe, f"/runs/{run_id}/events", headers={"Last-Event-ID": message.id or ""}
                )
    ended_at = time.monotonic()
    assert status_at_first_commit == "running"
    assert received[-1].event == "run_ended"
    assert _ids(received) == list(range(len(received)))
    record = client.get(f"/runs/{run_id}").json()
    assert record["status"] == "completed"
    assert record["summary"]["head_seq"] == len(received) - 1
    assert len(ledger_lines(client, run_id)) == len(received)
    # Delivered over the run's life, not in one burst at its end.
    assert arrival[-1] - arrival[0] >= 0.6
    assert ended_at - arrival[-1] < 2.0
    assert resumed is not None
    commit_seq = next(int(e.id or "-1") for e in received if e.event == "commit")
    assert resumed == received[commit_seq + 1 :]


def test_execution_stream_ends_after_a_terminal_snapshot_with_ids_on_every_event(
    server: ServerProcess,
) -> None:
    """/execution/stream of a live run sends a snapshot at once, every event has an id and is
    a `snapshot`, ids never repeat, snapshots progress to a terminal status, and the stream ends
    by itself after the terminal snapshot; reconnecting with the last id gets nothing again."""
    client = server.client()
    run_id = create_run(
        client,
        _script(
            _kv("a", 1, sleep_ms=200), _kv("b", 2, sleep_ms=200), {"final": "x", "sleep_ms": 200}
        ),
    )
    started = time.monotonic()
    snapshots = read_events(client, f"/runs/{run_id}/execution/stream")
    assert snapshots
    assert all(s.event == "snapshot" for s in snapshots)
    assert all(s.id for s in snapshots)
    ids = [s.id for s in snapshots]
    assert len(set(ids)) == len(ids)
    bodies = [s.json() for s in snapshots]
    assert bodies[0]["run_id"] == run_id
    assert bodies[0]["status"] == "running"
    assert bodies[-1]["status"] == "completed"
    assert all(b["status"] not in TERMINAL for b in bodies[:-1])
    assert bodies[-1]["final_answer"] == "x"
    heads = [b["head_seq"] for b in bodies]
    assert heads == sorted(heads)
    assert time.monotonic() - started < 10
    execution = client.get(f"/runs/{run_id}/execution").json()
    assert bodies[-1]["counters"] == execution["counters"]
    assert bodies[-1]["head_seq"] == execution["head_seq"]

    # The run is finished: a fresh subscriber gets one terminal snapshot; one that saw it, none.
    again = read_events(client, f"/runs/{run_id}/execution/stream")
    assert len(again) == 1
    assert again[0].json()["status"] == "completed"
    assert (
        read_events(
            client, f"/runs/{run_id}/execution/stream", headers={"Last-Event-ID": again[0].id or ""}
        )
        == []
    )


@dataclass
class _Read:
    comments: int
    events: list[Sse]


def _read_with_comments(client: httpx.Client, path: str) -> _Read:
    comments, events = 0, []
    with client.stream("GET", path) as response:
        assert response.status_code == 200
        for message in iter_sse(response):
            if message.comment is not None:
                comments += 1
            else:
                events.append(message)
    return _Read(comments, events)


@pytest.mark.parametrize("stream", ["events", "execution/stream"])
def test_quiet_run_gets_comment_keepalives(server: ServerProcess, stream: str) -> None:
    """With THYMOS_SSE_KEEPALIVE_S=0.2, a run silent for 1.2 s gets comment lines (starting
    with ':') on its stream, and the stream still ends by itself at the end of the run."""
    client = server.client()
    run_id = create_run(client, _script({"sleep_ms": 1200}, {"final": "quiet"}))
    read = _read_with_comments(client, f"/runs/{run_id}/{stream}")
    assert read.comments >= 2, read
    assert read.events
    last = read.events[-1]
    if stream == "events":
        assert last.event == "run_ended"
    else:
        assert last.json()["status"] == "completed"


def test_cognition_stream_of_finished_run_ends_at_once(server: ServerProcess) -> None:
    """/runs/:id/stream of a finished run answers 200 text/event-stream and ends immediately
    with no events (cognition events are not kept)."""
    client = server.client()
    run_id = create_run(client, FAST)
    wait_terminal(client, run_id)
    started = time.monotonic()
    assert read_events(client, f"/runs/{run_id}/stream") == []
    assert time.monotonic() - started < 2
