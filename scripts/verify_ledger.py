#!/usr/bin/env python3
"""Verify a Thymos ledger export without Thymos: `verify_ledger.py run.jsonl`.

Needs only the `blake3` package. Each line is a canonical envelope; its BLAKE3 is the entry's
id; each envelope names the previous entry's id as `parent` and counts `seq` up from 0.
Exits 0 when the chain is sound, 1 naming the first bad seq otherwise.
"""

from __future__ import annotations

import json
import sys

import blake3


def verify(lines: list[bytes]) -> str | None:
    previous = None
    run = None
    for expected_seq, line in enumerate(lines):
        envelope = json.loads(line)
        if envelope.get("seq") != expected_seq:
            return f"seq {expected_seq}: found seq {envelope.get('seq')!r}"
        if envelope.get("parent") != previous:
            return f"seq {expected_seq}: parent does not match the previous entry's id"
        if run is not None and envelope.get("run") != run:
            return f"seq {expected_seq}: names another run"
        run = envelope.get("run")
        previous = blake3.blake3(line).hexdigest()
    return None


def main() -> int:
    with open(sys.argv[1], "rb") as handle:
        lines = [line.rstrip(b"\n") for line in handle if line.strip()]
    problem = verify(lines)
    if problem:
        print(f"not verified: {problem}")
        return 1
    print(
        f"verified: {len(lines)} entries, head {blake3.blake3(lines[-1]).hexdigest() if lines else None}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
