"""The ledger export is verifiable without Thymos: `scripts/verify_ledger.py` (which needs only
`blake3`) accepts an export and names the first bad seq of a damaged one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ._harness import ServerProcess, create_run, ledger_lines, wait_terminal

pytestmark = pytest.mark.blackbox

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "verify_ledger.py"


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True, timeout=60
    )


def test_an_export_verifies_outside_thymos_and_a_damaged_one_names_its_seq(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The script verifies an export of a real run, and for a copy with one line removed it
    exits 1 naming the seq where the chain breaks."""
    client = server.client()
    script = [{"tool": "kv_set", "args": {"key": "a", "value": 1}}, {"final": "done"}]
    run_id = create_run(
        client, {"task": "export", "tool_scopes": ["kv_*"], "cognition": {"script": script}}
    )
    wait_terminal(client, run_id)
    lines = ledger_lines(client, run_id)
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"".join(line + b"\n" for line in lines))
    done = _verify(good)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"verified: {len(lines)} entries" in done.stdout
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_bytes(b"".join(line + b"\n" for index, line in enumerate(lines) if index != 2))
    broken = _verify(damaged)
    assert broken.returncode == 1
    assert "seq 2" in broken.stdout
