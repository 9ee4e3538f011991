"""Publisher keys: Ed25519, written as lowercase hex (64 characters for a public key, 64 for a
private key's 32-byte seed, 128 for a signature).

A public key must also be a point of the curve that is not of small order. OpenSSL (under
`cryptography`) accepts any 32 bytes as a public key, and for the eight small-order points a
signature can be made without any private key: with the all-zero key, the all-zero signature
verifies for every message. So the key is decoded here (RFC 8032 section 5.1.3) and refused
when it is not a point, or when eight times it is the neutral element, as libsodium does.
"""

from __future__ import annotations

import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ._errors import PackageError, PackageErrorCode

KEY_HEX_CHARS = 64
SIGNATURE_HEX_CHARS = 128
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")

# Edwards25519: -x^2 + y^2 = 1 + d x^2 y^2 over the field of P elements.
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int]


def _decode(encoded: bytes) -> _Point | None:
    """The affine point an encoding names (RFC 8032 5.1.3), or None when it names none; a
    non-canonical encoding (y >= p, or -0 for x) names none."""
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)
    sign = encoded[31] >> 7
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else (0, y)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _add(a: _Point, b: _Point) -> _Point:
    """Affine addition; complete on this curve (d is not a square), so it also doubles."""
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


def _is_small_order(point: _Point) -> bool:
    for _ in range(3):
        point = _add(point, point)
    return point == (0, 1)


def public_key(text: str, field: str = "publisher_key") -> Ed25519PublicKey:
    """The Ed25519 public key `text` spells: 64 lowercase hex characters naming a curve point
    not of small order; else `PackageError(invalid_publisher_key)`."""
    if _HEX64.fullmatch(text) is None:
        raise PackageError(
            PackageErrorCode.INVALID_PUBLISHER_KEY,
            "an Ed25519 public key is 64 lowercase hex characters (32 bytes)",
            field,
        )
    raw = bytes.fromhex(text)
    point = _decode(raw)
    if point is None or _is_small_order(point):
        raise PackageError(
            PackageErrorCode.INVALID_PUBLISHER_KEY,
            "is not a usable Ed25519 public key (not a curve point, or one of small order)",
            field,
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def private_key(text: str) -> Ed25519PrivateKey:
    """The Ed25519 private key a 64-hex-character seed spells (surrounding whitespace, as in a
    key file, is ignored; either case is read); else `PackageError(invalid_private_key)`."""
    seed = text.strip().lower()
    if _HEX64.fullmatch(seed) is None:
        raise PackageError(
            PackageErrorCode.INVALID_PRIVATE_KEY,
            "an Ed25519 private key is 64 hex characters (a 32-byte seed)",
            "private_key",
        )
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))


def public_key_of(private: str) -> str:
    """The hex public key of a hex private key (the key a publisher registers)."""
    return private_key(private).public_key().public_bytes_raw().hex()


def signature_bytes(text: str) -> bytes:
    """The 64 bytes a signature's 128 lowercase hex characters spell, else
    `PackageError(invalid_signature)`."""
    if _HEX128.fullmatch(text) is None:
        raise PackageError(
            PackageErrorCode.INVALID_SIGNATURE,
            "an Ed25519 signature is 128 lowercase hex characters (64 bytes)",
            "signature",
        )
    return bytes.fromhex(text)
