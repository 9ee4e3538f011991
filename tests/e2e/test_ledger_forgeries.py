"""Forgeries made on a real server's ledger, by editing its SQLite file while it is stopped and
re-sealing the chain as anyone who can write the database could (without the root key), are
caught: `GET /runs/:id/replay` answers `verified: false` naming the seq and the reason, and the
outside verifier rejects their exports; untouched runs beside them still verify.

The runs: `colour` is committed; `prod-db` needs two approvers on `ops` (a1 and a2 approve);
`prod-cache` is approved by a1 and vetoed by a2; a forbidden key, invalid arguments, a failing
read and an out-of-scope call are rejected or failed; then the run ends.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._authority import KEYS_ENV, as_key, policy_dir
from tests.e2e._harness import ServerProcess, create_run, ledger_lines, wait_for, wait_terminal
from tests.e2e.conftest import ServerFactory
from tests.forgery import FORGERIES, Export, entry_id, first_signed_at_or_after, reseal
from tests.policies import GOVERNED_INTENTS, GOVERNED_POLICY, PERMISSIVE_POLICY

pytestmark = pytest.mark.blackbox

VERIFIER = Path(__file__).resolve().parents[2] / "scripts" / "verify_ledger.py"
SCRIPT: list[dict[str, Any]] = [
    *GOVERNED_INTENTS,
    {"final": "done"},
]
VOTES = [[("a1", True), ("a2", True)], [("a1", True), ("a2", False)]]
CASES = [*sorted(FORGERIES), "heads-dropped"]


def _governed_run(server: ServerProcess) -> str:
    """One run of the script, voted through as `VOTES` says; returns its id once it ended."""
    client = as_key(server, "a1")
    run_id = create_run(
        client,
        {
            "task": "configure production",
            "tool_scopes": ["kv_*", "fs_read"],
            "cognition": {"provider": "mock", "script": SCRIPT},
        },
    )
    for votes in VOTES:
        wait_for(
            lambda: client.get(f"/runs/{run_id}").json()["status"] == "waiting_approval" or None,
            timeout_s=15,
            what="the run to wait for approval",
        )
        for approver, approve in votes:
            voted = as_key(server, approver).post(
                f"/runs/{run_id}/approvals/ops", json={"approve": approve}
            )
            assert voted.status_code == 200, voted.text
    assert wait_terminal(client, run_id)["status"] == "completed"
    return run_id


def _verify_outside(tmp: Path, client: httpx.Client, run_id: str) -> int:
    key = client.get("/writs/root-key").json()["public_key"]
    path = tmp / f"{run_id}.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in ledger_lines(client, run_id, proof="true")))
    done = subprocess.run(
        [sys.executable, str(VERIFIER), str(path), "--key", key],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode


def _rewrite(conn: sqlite3.Connection, run_id: str, lines: list[bytes]) -> None:
    """Replace the run's stored entries with `lines` and make its record name the new head,
    as a careful forger would (the signed heads stay: nobody but the server can sign)."""
    conn.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))
    conn.execute("DELETE FROM entries WHERE run_id = ?", (run_id,))
    for seq, line in enumerate(lines):
        envelope = json.loads(line)
        conn.execute(
            "INSERT INTO entries (run_id, seq, id, kind, created_at, envelope) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, seq, entry_id(line), envelope["kind"], envelope["time"], line),
        )
    (summary,) = conn.execute("SELECT summary FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    record = json.loads(summary)
    record["head_seq"], record["head_id"] = len(lines) - 1, entry_id(lines[-1])
    conn.execute("UPDATE runs SET summary = ? WHERE run_id = ?", (json.dumps(record), run_id))


@dataclass
class Forged:
    server: ServerProcess
    runs: dict[str, str]
    expected: dict[str, tuple[int, str]]
    control: str
    kinds: dict[str, str]
    """Untouched runs of other kinds, by what they are."""


def _other_kinds(server: ServerProcess) -> dict[str, str]:
    """Runs that end otherwise, or have not ended when the server stops: max_steps, a model
    error, a budget, one still waiting for approval, one interrupted mid-step by the stop."""
    client = as_key(server, "a1")

    def start(script: list[dict[str, Any]], **extra: Any) -> str:
        body = {"task": "kind", "tool_scopes": ["kv_*"], "cognition": {"script": script}}
        return create_run(client, {**body, **extra})

    kv = {"tool": "kv_set", "args": {"key": "a", "value": 1}}
    runs = {
        "max-steps": start([kv, kv, {"final": "never"}], max_steps=2),
        "model-error": start([kv, {"error": "the model failed"}]),
        "budget": start(
            [kv, {"text": "long", "usage": {"input_tokens": 90, "output_tokens": 20}}, kv],
            budget={"tokens": 100},
        ),
        "waiting": start([{"tool": "kv_set", "args": {"key": "prod-x", "value": 1}}]),
        "interrupted": start([kv, {"text": "thinking", "sleep_ms": 600_000}]),
    }
    for name in ("max-steps", "model-error", "budget"):
        wait_terminal(client, runs[name])
    wait_for(
        lambda: (
            client.get(f"/runs/{runs['waiting']}").json()["status"] == "waiting_approval" or None
        ),
        timeout_s=15,
        what="the run to wait",
    )
    wait_for(
        lambda: (
            client.get(f"/runs/{runs['interrupted']}").json()["summary"]["commits"] == 1 or None
        ),
        timeout_s=15,
        what="the run to sleep",
    )
    return runs


@pytest.fixture(scope="module")
def forged(
    module_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Forged:
    folder = policy_dir(tmp_path_factory.mktemp("policy"), governed=GOVERNED_POLICY)
    # Auto-resume off: the run the restart interrupts stays interrupted, to be verified as such.
    server = module_server_factory(
        {
            "THYMOS_API_KEYS": KEYS_ENV,
            "THYMOS_POLICY_DIR": str(folder),
            "THYMOS_AUTO_RESUME": "false",
        }
    )
    runs = {name: _governed_run(server) for name in CASES}
    control = _governed_run(server)
    kinds = _other_kinds(server)
    admin = as_key(server, "a-admin")
    for run_id in [*runs.values(), control]:
        report = admin.get(f"/runs/{run_id}/replay").json()
        assert report["verified"] is True, report["failures"]
    exports = {
        name: Export.parse(b"\n".join(ledger_lines(admin, run_id, proof="true")))
        for name, run_id in runs.items()
    }
    server.stop()

    expected: dict[str, tuple[int, str]] = {}
    conn = sqlite3.connect(server.sqlite_path)
    try:
        for name, run_id in runs.items():
            export = exports[name]
            if name == "heads-dropped":
                # Rewritten from the first decision on, and the signatures thrown away.
                envelopes = export.envelopes
                envelopes[-1]["body"]["final_answer"] = "forged"
                conn.execute("DELETE FROM signed_heads WHERE run_id = ?", (run_id,))
                _rewrite(conn, run_id, reseal(envelopes))
                expected[name] = (len(envelopes) - 1, "head_unsigned")
                continue
            envelopes, seq, code = FORGERIES[name](export.envelopes)
            if code == "signed_head_mismatch":
                seq = first_signed_at_or_after(export.heads, seq)
            _rewrite(conn, run_id, reseal(envelopes))
            expected[name] = (seq, code)
        conn.commit()
    finally:
        conn.close()
    server.start()
    return Forged(server, runs, expected, control, kinds)


@pytest.mark.parametrize("case", CASES)
def test_a_forged_ledger_fails_replay_naming_the_seq_and_the_reason(
    forged: Forged, case: str, tmp_path: Path
) -> None:
    client = as_key(forged.server, "a-admin")
    report = client.get(f"/runs/{forged.runs[case]}/replay").json()
    assert report["verified"] is False
    named = {(f["seq"], f["code"]) for f in report["failures"]}
    assert forged.expected[case] in named, report["failures"]
    assert _verify_outside(tmp_path, client, forged.runs[case]) == 1
    assert not forged.server.server_errors()


def test_the_untouched_run_still_verifies_inside_and_outside(
    forged: Forged, tmp_path: Path
) -> None:
    client = as_key(forged.server, "a-admin")
    report = client.get(f"/runs/{forged.control}/replay").json()
    assert report["verified"] is True, report["failures"]
    assert report["signed_through"] == report["head_seq"]
    assert report["decisions_checked"] == 9  # 2 suspensions, 4 rejections, 2 commits, a failure
    assert _verify_outside(tmp_path, client, forged.control) == 0


def test_runs_of_every_other_kind_verify_inside_and_outside(forged: Forged, tmp_path: Path) -> None:
    """Runs that stopped at max_steps, on a model error, on a budget, one still waiting for
    approval across the restart and one interrupted by it: each replays verified with its head
    signed, and the outside verifier accepts its export."""
    client = as_key(forged.server, "a-admin")
    ends = {}
    for name, run_id in forged.kinds.items():
        report = client.get(f"/runs/{run_id}/replay").json()
        assert report["verified"] is True, (name, report["failures"])
        assert report["signed_through"] == report["head_seq"], name
        assert _verify_outside(tmp_path, client, run_id) == 0, name
        ends[name] = client.get(f"/runs/{run_id}").json()["summary"]["terminated_by"]
    assert ends == {
        "max-steps": "max_steps",
        "model-error": "error",
        "budget": "budget_exhausted",
        "waiting": None,
        "interrupted": "interrupted",
    }


def test_a_swapped_policy_text_fails_every_decision_made_under_it(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The policy set's stored text is replaced by a permissive one (its address kept): replay
    names the first decision made under it, `document_mismatch`, and so does the verifier."""
    folder = policy_dir(tmp_path / "policy", governed=GOVERNED_POLICY)
    server = server_factory({"THYMOS_API_KEYS": KEYS_ENV, "THYMOS_POLICY_DIR": str(folder)})
    run_id = _governed_run(server)
    client = as_key(server, "a-admin")
    first = next(
        e
        for e in Export.parse(b"\n".join(ledger_lines(client, run_id))).envelopes
        if "policy_hash" in e["body"]
    )
    server.stop()
    body = json.dumps([["governed.cedar", PERMISSIVE_POLICY]], separators=(",", ":")).encode()
    conn = sqlite3.connect(server.sqlite_path)
    try:
        updated = conn.execute(
            "UPDATE documents SET body = ? WHERE kind = 'policy_set'", (body,)
        ).rowcount
        conn.commit()
    finally:
        conn.close()
    assert updated == 1
    # The restarted server stores its policy again only under the true hash of its text, which
    # is the same hash: the forged row is kept (documents are write-once).
    server.start()
    client = as_key(server, "a-admin")
    report = client.get(f"/runs/{run_id}/replay").json()
    assert report["verified"] is False
    assert (report["failures"][0]["seq"], report["failures"][0]["code"]) == (
        first["seq"],
        "document_mismatch",
    )
    assert _verify_outside(tmp_path, client, run_id) == 1

    # Deleted instead, and the server restarted on another policy directory (so it does not
    # store that text again): the text is missing, a named failure, never a pass.
    server.stop()
    conn = sqlite3.connect(server.sqlite_path)
    try:
        conn.execute("DELETE FROM documents WHERE kind = 'policy_set'")
        conn.commit()
    finally:
        conn.close()
    other = policy_dir(tmp_path / "other", permissive=PERMISSIVE_POLICY)
    server.env_extra["THYMOS_POLICY_DIR"] = str(other)
    server.start()
    report = as_key(server, "a-admin").get(f"/runs/{run_id}/replay").json()
    assert (report["failures"][0]["seq"], report["failures"][0]["code"]) == (
        first["seq"],
        "document_missing",
    )
