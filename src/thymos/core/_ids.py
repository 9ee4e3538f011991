"""Identifier forms, one per concept.

Run ids are UUID version 7 (they sort by creation time); entry, commit and proposal ids and every
hash are 64 lowercase hex characters of BLAKE3, with no prefix. The core never reads the clock or
the random source: callers pass them in.
"""

from __future__ import annotations

import re
import uuid

import blake3

HEX64 = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def blake3_hex(data: bytes) -> str:
    """The 64-hex BLAKE3 digest of `data`."""
    return blake3.blake3(data).hexdigest()


def is_hex64(value: str) -> bool:
    return HEX64.fullmatch(value) is not None


def uuid7(unix_ms: int, random_bytes: bytes) -> str:
    """A UUID v7 string from a millisecond timestamp and 10 random bytes (RFC 9562)."""
    if len(random_bytes) < 10:
        raise ValueError("uuid7 needs 10 random bytes")
    value = (unix_ms & ((1 << 48) - 1)) << 80
    rand = int.from_bytes(random_bytes[:10], "big")
    rand_a = (rand >> 68) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value |= 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def registry_ledger_id(tenant: str) -> str:
    """The id of a tenant's registry ledger: a UUID (version 8, RFC 9562) derived from the
    tenant, so every node names the same ledger without asking the store, and it reads as a run
    id wherever entries are listed (`/audit/entries?run_id=`)."""
    digest = bytearray(blake3.blake3(b"thymos registry ledger\0" + tenant.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))


def is_run_id(value: str) -> bool:
    """True for the canonical lowercase UUID form we issue."""
    return _UUID.fullmatch(value) is not None
