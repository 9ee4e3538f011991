"""The canonical encoding of ledger envelopes: RFC 8785 (JCS) JSON, version 1.

Entry ids are BLAKE3 over these bytes, so the encoding is part of the ledger format and is
versioned (`CANONICAL_VERSION`). Two encoders produce identical bytes for every value we accept:

- the fast path, `orjson` with sorted keys, which equals JCS for values with no floats, integers
  within the IEEE-754 safe range, and object keys inside the Basic Multilingual Plane (JCS sorts
  keys by UTF-16 code units, orjson by code points; they differ only for astral-plane keys);
- the reference path, the `rfc8785` package, for everything else (floats above all).

A property test checks that the two agree. Values JCS cannot represent (NaN, infinities, integers
beyond 2**53) are rejected with `NotCanonicalizable` rather than silently changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import orjson
import rfc8785

CANONICAL_VERSION = 1
SAFE_INT_MAX = 2**53 - 1
"""JCS numbers are IEEE-754 doubles; larger integers would silently lose precision."""

JsonValue: TypeAlias = (
    bool | int | float | str | Sequence["JsonValue"] | Mapping[str, "JsonValue"] | None
)
JsonObject: TypeAlias = Mapping[str, Any]


class NotCanonicalizable(ValueError):
    """The value has no RFC 8785 form (NaN, infinity, a huge integer, a non-JSON type)."""


_SORT = orjson.OPT_SORT_KEYS


def _fast_path_ok(value: object) -> bool:
    """True when orjson's sorted output is byte-identical to JCS for `value`."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) or item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if -SAFE_INT_MAX <= item <= SAFE_INT_MAX:
                continue
            return False
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str) or (key and max(key) > "\uffff"):
                    return False
                stack.append(child)
            continue
        if isinstance(item, list | tuple):
            stack.extend(item)
            continue
        return False  # floats and anything else take the reference path
    return True


def canonical_bytes(value: Any) -> bytes:
    """Encode `value` as RFC 8785 canonical JSON bytes."""
    if _fast_path_ok(value):
        try:
            return orjson.dumps(value, option=_SORT)
        except TypeError as exc:  # pragma: no cover - guarded by _fast_path_ok
            raise NotCanonicalizable(str(exc)) from exc
    try:
        encoded: bytes = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise NotCanonicalizable(f"value has no canonical JSON form: {exc}") from exc
    return encoded


def reference_canonical_bytes(value: Any) -> bytes:
    """The reference encoder alone; used by tests to check the fast path."""
    encoded: bytes = rfc8785.dumps(value)
    return encoded


def loads(data: bytes | str) -> Any:
    """Parse JSON (the stored envelopes are parsed with orjson, never re-serialised)."""
    return orjson.loads(data)
