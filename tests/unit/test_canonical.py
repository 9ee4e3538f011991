"""The canonical encoding: the orjson fast path equals RFC 8785 (the `rfc8785` reference), and
values with no canonical form are refused rather than silently changed."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from thymos.core import NotCanonicalizable, canonical_bytes, reference_canonical_bytes

from ._strategies import SAFE_INT, json_values, safe_floats, text

astral_text = st.text(
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF)
    | st.sampled_from("a\uffff\x00\x1f\x7f\u2028\ud7ff\ue000"),
    max_size=4,
)
"""Strings weighted to the places encoders disagree: astral-plane characters (JCS sorts keys by
UTF-16 code units), the top of the BMP, control characters and separators."""

keys = text | astral_text
values = json_values(max_leaves=12, keys=keys)


@given(value=values)
@example(value={"\uffff": 1, "\U00010000": 2})
@example(value={"a": 1e-7, "b": -0.0, "c": 1e21, "d": 2**53 - 1, "e": "\x00\u2028\U0001f600"})
@example(value=[5.0, 0.1, 1e300, -(2**53) + 1])
def test_fast_path_equals_the_rfc8785_reference(value: Any) -> None:
    """For every JSON value the ledger accepts (safe integers, finite floats, any Unicode text
    including astral-plane and control characters, nested objects and arrays), the encoder's
    output is byte-identical to the rfc8785 reference."""
    assert canonical_bytes(value) == reference_canonical_bytes(value)


@given(value=values)
def test_canonical_bytes_are_a_fixed_point_of_parse_and_encode(value: Any) -> None:
    """Parsing canonical bytes and encoding the result gives the same bytes: anything sealed into
    the ledger can be folded and re-encoded from its own bytes."""
    encoded = canonical_bytes(value)
    assert canonical_bytes(orjson.loads(encoded)) == encoded


def test_astral_plane_keys_sort_by_utf16_code_units() -> None:
    """JCS orders object keys by UTF-16 code units, so an astral-plane key (a surrogate pair,
    0xD800...) sorts before U+FFFF even though its code point is larger."""
    assert canonical_bytes({"\uffff": 1, "\U00010000": 2}) == '{"\U00010000":2,"\uffff":1}'.encode()


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        {"nested": [1, {"x": math.nan}]},
        SAFE_INT + 1,
        -(SAFE_INT + 1),
        2**64,
        {"big": 10**30},
        [-(2**63)],
    ],
    ids=["nan", "inf", "-inf", "nested-nan", "2**53", "-2**53", "2**64", "1e30-int", "-2**63"],
)
def test_values_with_no_canonical_form_raise(value: Any) -> None:
    """NaN, infinities and integers beyond the IEEE-754 safe range (anywhere in the value) raise
    NotCanonicalizable instead of being written as something else."""
    with pytest.raises(NotCanonicalizable):
        canonical_bytes(value)


@given(
    magnitude=st.floats(min_value=2.0**53, max_value=1e21, exclude_max=True),
    negative=st.booleans(),
)
@example(magnitude=1e16, negative=False)
@example(magnitude=2.0**53, negative=True)
def test_floats_written_as_unsafe_integers_raise(magnitude: float, negative: bool) -> None:
    """A float from 2**53 up to 1e21 in magnitude is written by JCS as integer digits that parse
    back as an integer beyond the safe range; it is refused, so a ledger never holds a number it
    could not re-encode."""
    value = -magnitude if negative else magnitude
    with pytest.raises(NotCanonicalizable):
        canonical_bytes({"n": [value]})


@given(value=safe_floats)
def test_accepted_floats_read_back_to_the_same_bytes(value: float) -> None:
    """Every float outside the refused band is encoded as the reference does and reads back to a
    number that encodes to the same bytes."""
    encoded = canonical_bytes(value)
    assert encoded == reference_canonical_bytes(value)
    assert canonical_bytes(orjson.loads(encoded)) == encoded


@pytest.mark.parametrize(
    "value",
    [{1: "a"}, {"a": b"bytes"}, {"a": {1, 2}}, object(), {"a": 1j}],
    ids=["int-key", "bytes", "set", "object", "complex"],
)
def test_non_json_types_raise(value: Any) -> None:
    """Values that are not JSON (non-string keys, bytes, sets, arbitrary objects) raise
    NotCanonicalizable."""
    with pytest.raises(NotCanonicalizable):
        canonical_bytes(value)


def test_strings_that_look_like_numbers_stay_on_the_fast_path_shape() -> None:
    """Digits and dots inside strings (times, versions) are strings, not floats: the output is
    the plain sorted JSON, identical to the reference."""
    value = {"time": "2026-01-01T00:00:00.000001Z", "v": "1.2.3", "odd": ":1.5,", "e": "1e+5]"}
    assert canonical_bytes(value) == reference_canonical_bytes(value)
    assert canonical_bytes(value) == orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
