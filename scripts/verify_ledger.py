#!/usr/bin/env python3
"""Verify a Thymos ledger export without Thymos.

    curl -s "$THYMOS/writs/root-key"                     # {"public_key": "<64 hex>", ...}
    curl -s "$THYMOS/runs/$RUN/ledger?proof=true" > run.jsonl
    python scripts/verify_ledger.py run.jsonl --key <64 hex>

Needs only `blake3`, `rfc8785` and `cryptography` (for Ed25519). It checks, line by line:

- each envelope line is canonical RFC 8785 JSON; its BLAKE3 is the entry's id; `seq` counts up
  from 0, each `parent` is the previous entry's id, every entry names the same run;
- each `{"document": {...}}` line hashes to its address (BLAKE3 of the RFC 8785 body), and every
  policy set or tool catalog a decision names is present;
- each `{"signed_head": {...}}` line is the server's Ed25519 signature, under the given public
  key, over `{"id", "run", "seq", "signed_at", "v": "thymos-signed-head/1"}` (RFC 8785), and names
  the very entry at its seq: a chain re-sealed by anyone without the root key fails here;
- the export ends on a signed head (a cut-off copy fails), unless `--allow-unsigned-tail` (an
  export of a run still running, whose latest entries are not signed yet).

Exits 0 when everything holds, 1 naming the first seq that does not, 2 for unusable input.
`--chain-only` checks only the hash chain (no key needed), as exports without proof allow.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import blake3
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ENVELOPE_FIELDS = {"v", "run", "seq", "parent", "kind", "time", "body"}
HEAD_FIELDS = {"run", "seq", "id", "signed_at", "signature"}
SIGNED_HEAD_VERSION = "thymos-signed-head/1"
DOCUMENT_FIELDS = ("policy_hash", "catalog_hash")


class NotVerified(Exception):
    pass


def _hash(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def verify(lines: list[bytes], key: Ed25519PublicKey | None, allow_unsigned_tail: bool) -> str:
    ids: list[str] = []
    run: str | None = None
    documents: set[str] = set()
    signed: int | None = None
    heads = 0
    for line in lines:
        try:
            record: Any = json.loads(line)
        except ValueError:
            raise NotVerified(f"after seq {len(ids) - 1}: a line is not JSON") from None
        if not isinstance(record, dict):
            raise NotVerified(f"after seq {len(ids) - 1}: a line is not a JSON object")
        if set(record) == {"document"}:
            document = record["document"]
            if _hash(rfc8785.dumps(document.get("body"))) != document.get("hash"):
                raise NotVerified(
                    f"before seq {len(ids)}: the {document.get('kind')} document does not hash "
                    "to its address"
                )
            documents.add(document["hash"])
            continue
        if set(record) == {"signed_head"}:
            if key is None:
                continue
            head = record["signed_head"]
            seq = head.get("seq") if isinstance(head, dict) else None
            if not isinstance(head, dict) or set(head) != HEAD_FIELDS or not isinstance(seq, int):
                raise NotVerified(f"after seq {len(ids) - 1}: a malformed signed head")
            if seq >= len(ids):
                raise NotVerified(f"seq {len(ids)}: the export ends before signed seq {seq}")
            if head["run"] != run or head["id"] != ids[seq]:
                raise NotVerified(f"seq {seq}: not the entry the server signed")
            message = rfc8785.dumps(
                {
                    "id": head["id"],
                    "run": head["run"],
                    "seq": seq,
                    "signed_at": head["signed_at"],
                    "v": SIGNED_HEAD_VERSION,
                }
            )
            try:
                key.verify(bytes.fromhex(head["signature"]), message)
            except (InvalidSignature, ValueError):
                raise NotVerified(
                    f"seq {seq}: the head's signature does not verify under the key"
                ) from None
            heads += 1
            if seq == len(ids) - 1:
                signed = seq
            continue
        seq = len(ids)
        if set(record) != ENVELOPE_FIELDS:
            raise NotVerified(f"seq {seq}: not an envelope")
        if record["seq"] != seq:
            raise NotVerified(f"seq {seq}: found seq {record['seq']!r}")
        if record["parent"] != (ids[-1] if ids else None):
            raise NotVerified(f"seq {seq}: parent does not match the previous entry's id")
        if run is not None and record["run"] != run:
            raise NotVerified(f"seq {seq}: names another run")
        if rfc8785.dumps(record) != line:
            raise NotVerified(f"seq {seq}: not canonical RFC 8785 JSON")
        body = record["body"]
        if key is not None and isinstance(body, dict):
            for name in DOCUMENT_FIELDS:
                if isinstance(body.get(name), str) and body[name] not in documents:
                    raise NotVerified(f"seq {seq}: the export lacks the document {body[name]}")
        run = record["run"]
        ids.append(_hash(line))
    if not ids:
        raise NotVerified("seq 0: the export holds no entries")
    if key is not None and signed != len(ids) - 1 and not allow_unsigned_tail:
        raise NotVerified(
            f"seq {len(ids) - 1}: the export's last entry is not signed (cut off, or the run "
            "is still running: --allow-unsigned-tail)"
        )
    through = "" if key is None else f", {heads} signed heads, signed through seq {signed}"
    return f"verified: {len(ids)} entries{through}, head {ids[-1]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="a file from GET /runs/:id/ledger?proof=true")
    parser.add_argument("--key", help="the server's public key, from GET /writs/root-key")
    parser.add_argument("--chain-only", action="store_true", help="check the hash chain only")
    parser.add_argument("--allow-unsigned-tail", action="store_true")
    args = parser.parse_args()
    if (args.key is None) == (not args.chain_only):
        print("give the server's public key with --key (or --chain-only)", file=sys.stderr)
        return 2
    try:
        key = (
            None if args.chain_only else Ed25519PublicKey.from_public_bytes(bytes.fromhex(args.key))
        )
    except ValueError:
        print("--key must be 64 hex characters (an Ed25519 public key)", file=sys.stderr)
        return 2
    with open(args.export, "rb") as handle:
        lines = [line.rstrip(b"\n") for line in handle if line.strip()]
    try:
        print(verify(lines, key, args.allow_unsigned_tail))
    except NotVerified as failure:
        print(f"not verified: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
