"""Helpers shared by the black-box authority tests: policy folders, keyed clients, ledger reads.

Nothing here imports Thymos: entries are read from the JSON Lines export, and an entry's id is
BLAKE3 of its line, exactly as an outside verifier would compute it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import blake3
import httpx

from tests.e2e._harness import ServerProcess, ledger_lines, wait_for

SECRETS = {
    "a1": "a1-approver-secret-0123456789",
    "a2": "a2-approver-secret-0123456789",
    "a-viewer": "a-viewer-secret-0123456789",
    "b1": "b1-operator-secret-0123456789",
    "a-admin": "a-admin-secret-0123456789ab",
    "b-admin": "b-admin-secret-0123456789ab",
}
KEYS_ENV = ",".join(
    [
        f"a1:A:operator:{SECRETS['a1']}",
        f"a2:A:operator:{SECRETS['a2']}",
        f"a-viewer:A:viewer:{SECRETS['a-viewer']}",
        f"b1:B:operator:{SECRETS['b1']}",
        f"a-admin:A:admin:{SECRETS['a-admin']}",
        f"b-admin:B:admin:{SECRETS['b-admin']}",
    ]
)
QUORUM_POLICY = (
    '@id("ops-quorum")\n@approval("ops") @quorum("2")\npermit(principal, action, resource);\n'
)


def policy_dir(root: Path, **files: str) -> Path:
    """A fresh folder holding the given `NAME.cedar` files (keyword: file stem)."""
    folder = root / "policies"
    folder.mkdir(parents=True, exist_ok=True)
    for stem, text in files.items():
        (folder / f"{stem}.cedar").write_text(text)
    return folder


def as_key(server: ServerProcess, name: str) -> httpx.Client:
    """A client of `server` sending the named key's secret as a bearer token."""
    client = server.client()
    client.headers["Authorization"] = f"Bearer {SECRETS[name]}"
    return client


def entries(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """Every ledger entry of the run as {seq, id, kind, payload}, from the JSON Lines export."""
    out: list[dict[str, Any]] = []
    for line in ledger_lines(client, run_id):
        envelope = json.loads(line)
        out.append(
            {
                "seq": envelope["seq"],
                "id": blake3.blake3(line).hexdigest(),
                "kind": envelope["kind"],
                "payload": envelope["body"],
            }
        )
    return out


def of_kind(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in items if e["kind"] == kind]


def writ_id_of(client: httpx.Client, run_id: str) -> str:
    """The run's writ id, from its first ledger entry's payload."""
    first = entries(client, run_id)[0]
    assert first["kind"] == "run_started", first
    writ_id: str = first["payload"]["writ"]["id"]
    return writ_id


def wait_pending(
    client: httpx.Client, run_id: str, timeout_s: float = 15.0
) -> list[dict[str, Any]]:
    """Wait until the run waits for approval; returns its pending approvals."""

    def probe() -> list[dict[str, Any]] | None:
        response = client.get(f"/runs/{run_id}/execution")
        assert response.status_code == 200, response.text
        session: dict[str, Any] = response.json()
        assert session["status"] not in {"completed", "failed", "cancelled"}, session
        if session["status"] == "waiting_approval" and session["pending_approvals"]:
            pending: list[dict[str, Any]] = session["pending_approvals"]
            return pending
        return None

    return wait_for(probe, timeout_s=timeout_s, what=f"run {run_id} to wait for approval")
