"""Hypothesis strategies shared by the unit tests: JSON values the ledger accepts."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

SAFE_INT = 2**53 - 1

safe_ints = st.integers(min_value=-SAFE_INT, max_value=SAFE_INT)
safe_floats = (
    st.floats(min_value=-(2.0**53), max_value=2.0**53, exclude_min=True, exclude_max=True)
    | st.floats(min_value=1e21, allow_infinity=False)
    | st.floats(max_value=-1e21, allow_infinity=False)
)
"""Finite floats whose canonical form reads back as a number that re-encodes to the same bytes.
(JCS writes a double of magnitude 2**53 up to 1e21 as integer digits, which a JSON reader parses
as an integer beyond the safe range; see test_canonical.)"""

text = st.text(st.characters(codec="utf-8"), max_size=10)
"""Any Unicode scalar value: control characters, the BMP and the astral planes (no surrogates,
which UTF-8 cannot carry)."""


def json_values(max_leaves: int = 8, keys: st.SearchStrategy[str] = text) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | safe_ints | safe_floats | text
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=max_leaves,
    )
