"""`thymos bench --quick` runs every part of the benchmark on small sizes and prints its one
JSON line (CI proves the bench works; no figure is asserted: speed is the bench's to report)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.blackbox

KEYS = {
    "overhead_us_per_intent_seq_100",
    "overhead_us_per_intent_seq_100k",
    "replay_entries_per_s",
    "replay_chain_fold_entries_per_s",
    "full_sync_us_per_intent_1_runs",
    "full_sync_us_per_intent_4_runs",
    "parked_bytes_per_run",
    "sse_delivery_p99_ms",
    "http_runs_per_s",
}


@pytest.mark.timeout(600)
def test_the_quick_bench_runs_every_part_and_prints_its_json_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "thymos.bench", "--quick"],
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    figures = json.loads(last)
    assert figures["bench"] == "thymos"
    assert set(figures) >= KEYS, sorted(KEYS - set(figures))
    assert figures["sse_complete_streams"] == figures["sse_subscribers"]
