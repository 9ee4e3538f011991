"""Tampering with the SQLite ledger while the server is stopped is found by /replay, by seq.

One server records one completed run per tampering case (plus an untouched control run), stops,
the cases are applied to the file with the `sqlite3` module, and a new server on the same data
dir is asked about each run. Replay must name the first damaged seq; nothing may answer 5xx.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest

from tests.e2e._harness import (
    ServerProcess,
    assert_error,
    create_run,
    read_events,
    wait_terminal,
)
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.blackbox

RUN: dict[str, Any] = {
    "task": "a run to tamper with",
    "tool_scopes": ["kv_*", "fs_read"],
    "cognition": {
        "provider": "mock",
        "script": [
            {"tool": "kv_set", "args": {"key": "a", "value": 1}},
            {"tool": "fs_read", "args": {"path": "README.md"}},
            {"tool": "kv_set", "args": {"key": "a", "value": 2}},
            {"final": "done"},
        ],
    },
}
HEAD = 11  # run_started, then 3 x (turn, intent, commit), then turn(final), run_ended

Tamper = Callable[[sqlite3.Connection, str], None]


def _envelope(conn: sqlite3.Connection, run_id: str, seq: int) -> bytes:
    row = conn.execute(
        "SELECT envelope FROM entries WHERE run_id = ? AND seq = ?", (run_id, seq)
    ).fetchone()
    assert row is not None, f"no entry {seq}"
    return bytes(row[0])


def _set_envelope(conn: sqlite3.Connection, run_id: str, seq: int, raw: bytes) -> None:
    conn.execute("UPDATE entries SET envelope = ? WHERE run_id = ? AND seq = ?", (raw, run_id, seq))


def flip(seq: int, where: str) -> Tamper:
    def tamper(conn: sqlite3.Connection, run_id: str) -> None:
        raw = bytearray(_envelope(conn, run_id, seq))
        index = {"first": 0, "middle": len(raw) // 2, "last": len(raw) - 1}[where]
        raw[index] ^= 0x01
        _set_envelope(conn, run_id, seq, bytes(raw))

    return tamper


def delete(seq: int) -> Tamper:
    def tamper(conn: sqlite3.Connection, run_id: str) -> None:
        conn.execute("DELETE FROM entries WHERE run_id = ? AND seq = ?", (run_id, seq))

    return tamper


def swap(a: int, b: int) -> Tamper:
    def tamper(conn: sqlite3.Connection, run_id: str) -> None:
        raw_a, raw_b = _envelope(conn, run_id, a), _envelope(conn, run_id, b)
        _set_envelope(conn, run_id, a, raw_b)
        _set_envelope(conn, run_id, b, raw_a)

    return tamper


def forge(seq: int) -> Tamper:
    """Edit an entry *and* rewrite its id column to match: the entry is self-consistent, so the
    break shows at the next entry's parent link (or, for the head, against the run record)."""

    def tamper(conn: sqlite3.Connection, run_id: str) -> None:
        raw = _envelope(conn, run_id, seq)
        forged = raw.replace(b'"time":"', b'"time":"1', 1)
        assert forged != raw
        conn.execute(
            "UPDATE entries SET envelope = ?, id = ? WHERE run_id = ? AND seq = ?",
            (forged, blake3.blake3(forged).hexdigest(), run_id, seq),
        )

    return tamper


@dataclass(frozen=True)
class Case:
    tamper: Tamper
    first_bad_seq: int


CASES: dict[str, Case] = {
    "flip-seq0-middle": Case(flip(0, "middle"), 0),
    "flip-seq0-first": Case(flip(0, "first"), 0),
    "flip-seq1-middle": Case(flip(1, "middle"), 1),
    "flip-commit-middle": Case(flip(3, "middle"), 3),
    "flip-seq6-last": Case(flip(6, "last"), 6),
    "flip-head-middle": Case(flip(HEAD, "middle"), HEAD),
    "delete-seq0": Case(delete(0), 0),
    "delete-middle": Case(delete(5), 5),
    "delete-last": Case(delete(HEAD), HEAD),
    "swap-2-7": Case(swap(2, 7), 2),
    "swap-adjacent-9-10": Case(swap(9, 10), 9),
    "forge-middle-rehashed": Case(forge(4), 5),
    "forge-head-rehashed": Case(forge(HEAD), HEAD),
}


@dataclass
class Tampered:
    server: ServerProcess
    runs: dict[str, str]
    control: str


@pytest.fixture(scope="module")
def tampered(module_server_factory: ServerFactory) -> Tampered:
    server = module_server_factory()
    client = server.client()
    runs = {name: create_run(client, RUN) for name in CASES}
    control = create_run(client, RUN)
    for run_id in [*runs.values(), control]:
        record = wait_terminal(client, run_id)
        assert record["status"] == "completed"
        assert record["summary"]["head_seq"] == HEAD
        assert client.get(f"/runs/{run_id}/replay").json()["verified"] is True
    server.stop()

    conn = sqlite3.connect(server.sqlite_path)
    try:
        for name, case in CASES.items():
            case.tamper(conn, runs[name])
        conn.commit()
    finally:
        conn.close()

    server.start()
    return Tampered(server, runs, control)


def _health_ok(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


@pytest.mark.parametrize("case", list(CASES))
def test_tampered_ledger_fails_replay_at_the_damaged_seq_without_5xx(
    tampered: Tampered, case: str
) -> None:
    """Each tampering of the stored ledger (a flipped byte at the start, middle or end of an
    envelope, a deleted entry, two swapped envelopes, a re-hashed forgery) makes GET /replay
    answer 200 with verified false and failures[0].seq naming the first damaged seq; and
    /runs/:id, /runs, /health, /execution, /world, /world/at at every seq, /events and /ledger
    still answer without a 5xx (409 ledger_corrupt where the world cannot be folded)."""
    client = tampered.server.client()
    run_id = tampered.runs[case]
    expected = CASES[case].first_bad_seq

    response = client.get(f"/runs/{run_id}/replay")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["verified"] is False
    assert report["failures"], report
    failures = report["failures"]
    assert failures[0]["seq"] == expected, failures
    assert [f["seq"] for f in failures] == sorted(f["seq"] for f in failures)
    for failure in failures:
        assert isinstance(failure["code"], str)
        assert failure["code"]
        assert isinstance(failure["message"], str)

    record = client.get(f"/runs/{run_id}")
    assert record.status_code == 200, record.text
    assert record.json()["status"] == "completed"
    listing = client.get("/runs", params={"limit": 500})
    assert listing.status_code == 200
    assert run_id in [r["run_id"] for r in listing.json()["runs"]]
    assert client.get(f"/runs/{run_id}/execution").status_code == 200
    _health_ok(client)

    for path in [f"/runs/{run_id}/world"] + [
        f"/runs/{run_id}/world/at?seq={seq}" for seq in range(HEAD + 1)
    ]:
        response = client.get(path)
        assert response.status_code in (200, 409), (path, response.text)
        if response.status_code == 409:
            assert_error(response, 409, "ledger_corrupt")
        else:
            assert set(response.json()) >= {"run_id", "seq", "world_hash", "resources"}

    with client.stream("GET", f"/runs/{run_id}/events") as stream:
        assert stream.status_code == 200
        stream.read()  # it ends by itself
    assert client.get(f"/runs/{run_id}/ledger").status_code == 200
    _health_ok(client)
    assert not tampered.server.server_errors()


def test_untouched_run_still_verifies_beside_tampered_ones(tampered: Tampered) -> None:
    """Tampering with other runs' entries in the same file does not affect a run left alone:
    its replay verifies, its world matches, its ledger streams every entry."""
    client = tampered.server.client()
    report = client.get(f"/runs/{tampered.control}/replay").json()
    assert report["verified"] is True, report["failures"]
    assert report["world_matches"] is True
    assert report["head_seq"] == HEAD
    events = read_events(client, f"/runs/{tampered.control}/events")
    assert [e.id for e in events] == [str(s) for s in range(HEAD + 1)]


def test_tampered_sqlite_file_is_still_a_file_the_server_reopens(tampered: Tampered) -> None:
    """The server restarted on the tampered file answers /runs with every run (the run table
    is intact) and lists them newest first."""
    client = tampered.server.client()
    runs = client.get("/runs", params={"limit": 500}).json()["runs"]
    ids = [r["run_id"] for r in runs]
    assert set(ids) == {*tampered.runs.values(), tampered.control}
    assert ids == sorted(ids, reverse=True)
    assert Path(tampered.server.sqlite_path).exists()
