"""Signed heads: the server's Ed25519 signature over a run's head.

A hash chain proves that entries were not changed *relative to each other*; whoever can write the
database can still re-seal a whole chain. A signed head is the server's statement, made with its
root key, that entry `seq` of run `run` has id `id` (and so, through the chain, that every entry
up to it is exactly what was recorded). Anyone with the public key (`GET /writs/root-key`) checks
it with any Ed25519 library. The signed message is the RFC 8785 JSON of

    {"id": ENTRY_ID, "run": RUN_ID, "seq": N, "signed_at": RFC3339, "v": "thymos-signed-head/1"}

What it does not prove: that nothing came after the latest signed head (a copy cut back to an
earlier signed head verifies; keep the latest head you were given), nor that the server decided
correctly (replay re-runs the decisions for that).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._canonical import canonical_bytes
from ._ids import is_hex64

SIGNED_HEAD_VERSION = "thymos-signed-head/1"
SIGNED_HEAD_FIELDS = ("run", "seq", "id", "signed_at", "signature")


def signed_head_message(run_id: str, seq: int, entry_id: str, signed_at: str) -> bytes:
    """The exact bytes the server signs."""
    return canonical_bytes(
        {
            "id": entry_id,
            "run": run_id,
            "seq": seq,
            "signed_at": signed_at,
            "v": SIGNED_HEAD_VERSION,
        }
    )


@dataclass(frozen=True, slots=True)
class SignedHead:
    run_id: str
    seq: int
    entry_id: str
    signed_at: str
    signature: str
    """128 lowercase hex characters (the 64-byte Ed25519 signature)."""

    def message(self) -> bytes:
        return signed_head_message(self.run_id, self.seq, self.entry_id, self.signed_at)

    def as_record(self) -> dict[str, Any]:
        """The head as the export shows it (`{"signed_head": ...}`)."""
        return {
            "run": self.run_id,
            "seq": self.seq,
            "id": self.entry_id,
            "signed_at": self.signed_at,
            "signature": self.signature,
        }

    @staticmethod
    def from_record(record: Mapping[str, Any]) -> SignedHead:
        """Parse an exported head; ValueError when a field is missing or malformed."""
        if not isinstance(record, Mapping) or set(record) != set(SIGNED_HEAD_FIELDS):
            raise ValueError(
                f"a signed head has exactly the fields {', '.join(SIGNED_HEAD_FIELDS)}"
            )
        run, seq, ident = record["run"], record["seq"], record["id"]
        signed_at, signature = record["signed_at"], record["signature"]
        if not (
            isinstance(run, str)
            and isinstance(seq, int)
            and not isinstance(seq, bool)
            and seq >= 0
            and isinstance(ident, str)
            and is_hex64(ident)
            and isinstance(signed_at, str)
            and isinstance(signature, str)
            and len(signature) == 128
        ):
            raise ValueError("a signed head has a malformed field")
        try:
            bytes.fromhex(signature)
        except ValueError:
            raise ValueError("a signed head's signature is not hex") from None
        return SignedHead(run, seq, ident, signed_at, signature)


class HeadSigner:
    """Signs heads with the root key's 32-byte Ed25519 private key."""

    def __init__(self, private_key: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(private_key)

    def sign(self, run_id: str, seq: int, entry_id: str, signed_at: str) -> SignedHead:
        message = signed_head_message(run_id, seq, entry_id, signed_at)
        return SignedHead(run_id, seq, entry_id, signed_at, self._key.sign(message).hex())


class HeadVerifier:
    """Checks signed heads against the root key's 32-byte Ed25519 public key."""

    def __init__(self, public_key: bytes) -> None:
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    def verifies(self, head: SignedHead) -> bool:
        try:
            self._key.verify(bytes.fromhex(head.signature), head.message())
        except (InvalidSignature, ValueError):
            return False
        return True
