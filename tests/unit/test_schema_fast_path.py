"""The compiler's fast schema acceptor never accepts what jsonschema rejects."""

from __future__ import annotations

from typing import Any

import jsonschema
from hypothesis import given
from hypothesis import strategies as st

from thymos.governance._schema import fast_acceptor
from thymos.tools import builtin_tools

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5000)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)

TOOL_SCHEMAS = [spec.input_schema for spec in builtin_tools().specs().values()]


def _argument_candidates(schema: Any) -> st.SearchStrategy[Any]:
    """Objects built from the schema's own property names, so valid and near-valid inputs occur."""
    names = [*sorted((schema.get("properties") or {}).keys()), "other"]
    return st.dictionaries(st.sampled_from(names), json_values, max_size=len(names)) | json_values


@given(data=st.data())
def test_fast_acceptor_accepts_only_what_jsonschema_accepts(data: st.DataObject) -> None:
    """For every built-in tool schema and generated arguments, a True from the fast path implies
    jsonschema finds no error; a False is always allowed (jsonschema then decides)."""
    schema = data.draw(st.sampled_from(TOOL_SCHEMAS))
    acceptor = fast_acceptor(schema)
    assert acceptor is not None, "every built-in tool schema is in the fast subset"
    args = data.draw(_argument_candidates(schema))
    if acceptor(args):
        assert jsonschema.Draft202012Validator(schema).is_valid(args), args


def test_fast_acceptor_agrees_on_typical_valid_arguments() -> None:
    """The fast path does accept ordinary valid arguments (otherwise it would save nothing)."""
    specs = builtin_tools().specs()
    cases = {
        "kv_set": {"key": "k", "value": {"a": [1, 2.5]}},
        "kv_get": {"key": "k"},
        "fs_read": {"path": "README.md", "offset": 1, "limit": 10},
        "grep": {"pattern": "x", "ignore_case": True},
        "repo_map": {},
    }
    for name, args in cases.items():
        acceptor = fast_acceptor(specs[name].input_schema)
        assert acceptor is not None
        assert acceptor(args), name


def test_fast_acceptor_declines_schemas_outside_its_subset() -> None:
    """A schema with keywords the subset does not know gets no fast path at all."""
    assert fast_acceptor({"type": "string", "pattern": "^a"}) is None
    assert fast_acceptor({"type": "object", "properties": {"a": {"anyOf": [{}]}}}) is None
    assert fast_acceptor({"type": "object", "additionalProperties": {"type": "number"}}) is None
    assert fast_acceptor({"type": "string", "enum": ["a", 1]}) is None
