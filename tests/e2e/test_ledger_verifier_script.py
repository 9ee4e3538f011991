"""The ledger export is verifiable without Thymos: `scripts/verify_ledger.py` (which needs only
`blake3`, `rfc8785` and `cryptography`) accepts an export and names the first bad seq of a
damaged one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ._harness import ServerProcess, create_run, ledger_lines, wait_terminal

pytestmark = pytest.mark.blackbox

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "verify_ledger.py"


def _verify(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_export_verifies_outside_thymos_and_a_damaged_one_names_its_seq(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The script verifies the proof export of a real run (chain, documents and the signed head,
    with the key `GET /writs/root-key` publishes), and a plain export with `--chain-only`; for
    a copy with one entry removed it exits 1 naming the seq where the chain breaks."""
    client = server.client()
    script = [{"tool": "kv_set", "args": {"key": "a", "value": 1}}, {"final": "done"}]
    run_id = create_run(
        client, {"task": "export", "tool_scopes": ["kv_*"], "cognition": {"script": script}}
    )
    wait_terminal(client, run_id)
    key = client.get("/writs/root-key").json()["public_key"]
    proof = ledger_lines(client, run_id, proof="true")
    plain = ledger_lines(client, run_id)
    assert [line for line in proof if line.startswith(b'{"body":')] == plain
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"".join(line + b"\n" for line in proof))
    done = _verify(good, "--key", key)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"verified: {len(plain)} entries" in done.stdout
    assert f"signed through seq {len(plain) - 1}" in done.stdout

    chain = tmp_path / "chain.jsonl"
    chain.write_bytes(b"".join(line + b"\n" for line in plain))
    assert _verify(chain, "--chain-only").returncode == 0
    # Without its signed heads, an export does not pass for a proof.
    assert _verify(chain, "--key", key).returncode == 1

    damaged = tmp_path / "damaged.jsonl"
    damaged.write_bytes(b"".join(line + b"\n" for index, line in enumerate(plain) if index != 2))
    broken = _verify(damaged, "--chain-only")
    assert broken.returncode == 1
    assert "seq 2" in broken.stdout
