"""A fast acceptance check for the simple JSON Schemas tools use.

`jsonschema` walks a schema with general machinery costing tens of microseconds per call; most
tool schemas are a flat object of typed properties. `fast_acceptor` compiles such a schema into a
predicate that answers True only when the arguments are certainly valid. Anything it does not
understand, and every False, goes to `jsonschema`, which stays the authority (and the source of
error messages). A property test holds "fast says valid" to imply "jsonschema says valid".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Acceptor = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment"})


def fast_acceptor(schema: Any) -> Acceptor | None:
    """A predicate that is True only for instances valid against `schema`, or None when the
    schema uses anything this subset does not cover."""
    if schema is True or schema == {}:
        return lambda _: True
    if not isinstance(schema, Mapping):
        return None
    keys = set(schema) - _ANNOTATIONS
    kind = schema.get("type")
    if kind == "object":
        return _object(schema, keys)
    if kind == "string" and keys <= {"type", "minLength", "maxLength", "enum"}:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        choices = schema.get("enum")
        if choices is not None and not all(isinstance(c, str) for c in choices):
            return None
        allowed = frozenset(choices) if choices is not None else None
        return lambda v: (
            type(v) is str
            and len(v) >= low
            and (high is None or len(v) <= high)
            and (allowed is None or v in allowed)
        )
    if kind == "integer" and keys <= {"type", "minimum", "maximum"}:
        low_i, high_i = schema.get("minimum"), schema.get("maximum")
        return lambda v: (
            type(v) is int and (low_i is None or v >= low_i) and (high_i is None or v <= high_i)
        )
    if kind == "boolean" and keys == {"type"}:
        return lambda v: type(v) is bool
    if kind == "array" and keys <= {"type", "items", "minItems", "maxItems"}:
        each = fast_acceptor(schema.get("items", True))
        if each is None:
            return None
        fewest, most = schema.get("minItems", 0), schema.get("maxItems")
        return lambda v: (
            type(v) is list
            and len(v) >= fewest
            and (most is None or len(v) <= most)
            and all(each(item) for item in v)
        )
    return None


def _object(schema: Mapping[str, Any], keys: set[str]) -> Acceptor | None:
    if not keys <= {"type", "properties", "required", "additionalProperties"}:
        return None
    extra = schema.get("additionalProperties", True)
    others: Acceptor | None = None
    if extra not in (True, False):
        others = fast_acceptor(extra)
        if others is None:
            return None
    properties: dict[str, Acceptor] = {}
    for name, sub in (schema.get("properties") or {}).items():
        acceptor = fast_acceptor(sub)
        if acceptor is None:
            return None
        properties[name] = acceptor
    required = tuple(schema.get("required") or ())
    closed = extra is False

    def accept(value: Any) -> bool:
        if type(value) is not dict:
            return False
        for name in required:
            if name not in value:
                return False
        for name, item in value.items():
            check = properties.get(name, others)
            if check is None:
                if closed:
                    return False
            elif not check(item):
                return False
        return True

    return accept
