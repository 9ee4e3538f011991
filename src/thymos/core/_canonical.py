"""The canonical encoding of ledger envelopes: RFC 8785 (JCS) JSON, version 1.

Entry ids are BLAKE3 over these bytes, so the encoding is part of the ledger format and is
versioned (`CANONICAL_VERSION`). Two encoders produce identical bytes for every value we accept:

- the fast path, `orjson` with sorted keys, which equals JCS for values with no floats, integers
  within the IEEE-754 safe range, and object keys inside the Basic Multilingual Plane (JCS sorts
  keys by UTF-16 code units, orjson by code points; they differ only for astral-plane keys); the
  output is checked for anything outside that domain, which then takes the reference path;
- the reference path, the `rfc8785` package, for everything else (floats above all).

A property test checks that the two agree. Values JCS cannot represent (NaN, infinities, integers
beyond 2**53) are rejected with `NotCanonicalizable` rather than silently changed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import rfc8785

CANONICAL_VERSION = 1
SAFE_INT_MAX = 2**53 - 1
"""JCS numbers are IEEE-754 doubles; larger integers would silently lose precision."""


class NotCanonicalizable(ValueError):
    """The value has no RFC 8785 form (NaN, infinity, a huge integer, a non-JSON type)."""


_SORT_STRICT = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
"""Sorted keys, and integers beyond 2**53 refused (they take the reference path, which refuses
them with a clear error)."""

_FLOAT_HINT = re.compile(rb"[0-9](?:\.[0-9]|e[-+])")
_ASTRAL = re.compile(rb"[\xf0-\xf4]")
_NUMBER_CHARS = frozenset(b"0123456789+-.eE")


def _may_differ(encoded: bytes) -> bool:
    """True when orjson's output could differ from JCS: it holds a float token, or a 4-byte UTF-8
    sequence (an astral-plane character, which JCS and orjson may sort differently in keys).

    orjson writes every float with a `.` or an exponent with a sign (`1e-7`, `1e+16`), so output
    with neither has no float and is decided by two substring searches. Otherwise each candidate
    is checked: a float token stands between one of `:,[` (or the start) and one of `,}]` (or the
    end), so a digit-dot-digit inside a string (a time, a version) is not one. A false alarm only
    costs the slower reference path."""
    if not encoded.isascii() and _ASTRAL.search(encoded):
        return True
    if b"." not in encoded and b"e+" not in encoded and b"e-" not in encoded:
        return False
    size = len(encoded)
    for match in _FLOAT_HINT.finditer(encoded):
        start = match.start()
        while start > 0 and encoded[start - 1] in _NUMBER_CHARS:
            start -= 1
        if start > 0 and encoded[start - 1] not in b":,[":
            continue
        end = match.end()
        while end < size and encoded[end] in _NUMBER_CHARS:
            end += 1
        if end == size or encoded[end] in b",}]":
            return True
    return False


def canonical_bytes(value: Any) -> bytes:
    """Encode `value` as RFC 8785 canonical JSON bytes.

    The fast path serialises with orjson and keeps the result when nothing in it can differ from
    JCS and it parses back to an equal value (which catches NaN and infinities, that orjson would
    write as null, and tuples or other non-JSON containers)."""
    try:
        encoded = orjson.dumps(value, option=_SORT_STRICT)
    except TypeError as exc:
        if "Recursion" in str(exc):
            # Past orjson's depth (254) no JSON this system stores can hold the value either.
            raise NotCanonicalizable("value has no canonical JSON form: nested too deeply") from exc
        encoded = b""
    if encoded and not _may_differ(encoded) and orjson.loads(encoded) == value:
        return encoded
    if _has_unsafe_integral_float(value):
        raise NotCanonicalizable(
            "value has no canonical JSON form: a float of magnitude 2**53 or more is written as "
            "integer digits that read back as an integer beyond 2**53"
        )
    try:
        reference: bytes = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise NotCanonicalizable(f"value has no canonical JSON form: {exc}") from exc
    return reference


_UNSAFE_FLOAT_MIN = 2.0**53
_EXPONENT_FLOAT_MIN = 1e21
"""JCS writes a double below 1e21 in magnitude without an exponent. From 2**53 up, such a double
is integral, so it is written as integer digits that every JSON reader parses back as an integer
beyond the safe range, which has no canonical form: a sealed entry holding one could not be
folded again from its own bytes (replay would call the ledger damaged). Such floats are refused."""


def _has_unsafe_integral_float(value: object) -> bool:
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if _UNSAFE_FLOAT_MIN <= abs(item) < _EXPONENT_FLOAT_MIN:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def reference_canonical_bytes(value: Any) -> bytes:
    """The reference encoder alone; used by tests to check the fast path."""
    encoded: bytes = rfc8785.dumps(value)
    return encoded
