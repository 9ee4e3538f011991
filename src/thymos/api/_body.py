"""JSON request bodies, parsed strictly and with one meaning.

`parse_json` refuses what JSON does not allow and what it leaves ambiguous (repeated keys,
integers some readers would round, nesting no encoder can store); the model refuses unknown fields
and wrong types. Malformed JSON is 400; invalid content is 422. The request guard has already
refused bodies that are not `application/json`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from thymos.core import ErrorCode, ThymosError

M = TypeVar("M", bound=BaseModel)
SCHEMA_REF = "#/components/schemas/{model}"

JSON_DEPTH_MAX = 64
"""Nesting of a request body: a run request's deepest part (a script element's arguments) sits
at depth 5, so 64 leaves any real value room. Ledger entries wrap values in a few more levels,
and the encoders refuse past 254; a limit here keeps every accepted value storable."""

SAFE_INT_MAX = 2**53 - 1
"""JSON numbers are exchanged as IEEE-754 doubles (RFC 8259, I-JSON): a larger integer would be
silently rounded by some reader, so it is refused rather than stored."""


async def read_body(request: Request) -> bytes:
    """The request's body; a client that goes away mid-body is a quiet 400 nobody receives,
    never a logged traceback."""
    try:
        return await request.body()
    except ClientDisconnect:
        raise ThymosError(
            ErrorCode.MALFORMED_REQUEST, "the client went away before sending its whole body"
        ) from None


async def parse_optional_body(request: Request, model: type[M]) -> M:
    """`parse_body`, except that no body (or only white space) means the model's defaults."""
    if not (await read_body(request)).strip():
        return model()
    return await parse_body(request, model)


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await read_body(request)
    if not raw.strip():
        raise ThymosError(ErrorCode.MALFORMED_JSON, "the request needs a JSON body")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ThymosError(ErrorCode.MALFORMED_REQUEST, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": [str(p) for p in e["loc"]], "message": e["msg"], "type": e["type"]}
            for e in exc.errors()[:20]
        ]
        first = errors[0]
        where = ".".join(first["loc"]) or "body"
        raise ThymosError(
            ErrorCode.INVALID_REQUEST, f"{where}: {first['message']}", {"errors": errors}
        ) from None


def parse_json(raw: bytes) -> Any:
    """Parse a request body as strict JSON with one meaning.

    Refused: anything JSON does not allow (NaN, trailing commas, invalid UTF-8, lone surrogates:
    400 `malformed_json`), an object naming a key twice (400 `duplicate_key`: readers disagree
    on which one counts), nesting past `JSON_DEPTH_MAX` (422 `json_too_deep`), and integers
    beyond +/-2**53-1 or other numbers without an exact canonical form (422
    `number_out_of_range`). A float with an integral value (`5.0`) is the integer (`5`), as JSON
    Schema and RFC 8785 both say."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc):
            raise _too_deep() from None
        if "infinity" in str(exc):
            raise ThymosError(
                ErrorCode.NUMBER_OUT_OF_RANGE,
                "the request body holds a number too large for any JSON reader to keep",
                {"max": SAFE_INT_MAX},
            ) from None
        raise ThymosError(
            ErrorCode.MALFORMED_JSON, f"the request body is not valid JSON: {exc}"
        ) from None
    # A second, lexical pass sees what the parsed value cannot show: a repeated key (the last
    # one won above) and the digits of each integer literal (orjson turns one past 64 bits into
    # a float).
    try:
        json.loads(raw, object_pairs_hook=_unique_keys, parse_int=_safe_int)
    except _Refused as refused:
        raise refused.error from None
    except RecursionError:
        raise _too_deep() from None
    return _normalized(data)


class _Refused(Exception):
    def __init__(self, error: ThymosError) -> None:
        self.error = error


def _unique_keys(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Refused(
                ThymosError(
                    ErrorCode.DUPLICATE_KEY,
                    f"the key {key[:100]!r} appears twice in one object",
                    {"key": key[:100]},
                )
            )
        seen.add(key)


def _safe_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > 16 or int(digits) > SAFE_INT_MAX:
        raise _Refused(_out_of_range(text[:40]))
    return 0


def _too_deep() -> ThymosError:
    return ThymosError(
        ErrorCode.JSON_TOO_DEEP,
        f"the request body is nested more than {JSON_DEPTH_MAX} levels deep",
        {"depth_max": JSON_DEPTH_MAX},
    )


def _out_of_range(number: str) -> ThymosError:
    return ThymosError(
        ErrorCode.NUMBER_OUT_OF_RANGE,
        f"the number {number} is outside the range JSON carries exactly "
        f"(integers up to +/-{SAFE_INT_MAX})",
        {"number": number, "max": SAFE_INT_MAX},
    )


_EXPONENT_FLOAT_MIN = 1e21
"""Below this magnitude RFC 8785 writes a number in plain digits; a float from 2**53 up to here
would read back as an integer beyond the safe range, so it has no canonical form."""


def _normalized(value: Any) -> Any:
    """`value` with integral floats as integers, checked for depth and number range, in one
    iterative walk (containers are changed in place)."""
    if isinstance(value, float):
        return _number(value)
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > JSON_DEPTH_MAX:
            raise _too_deep()
        if not isinstance(item, dict | list):
            continue
        children = item.items() if isinstance(item, dict) else enumerate(item)
        for place, child in children:
            if isinstance(child, float):
                item[place] = _number(child)  # replacing a value keeps the keys being walked
            elif isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return value


def _number(value: float) -> float | int:
    if value.is_integer():
        if abs(value) <= SAFE_INT_MAX:
            return int(value)
        if abs(value) < _EXPONENT_FLOAT_MIN:
            raise _out_of_range(repr(value))
    return value


def request_body_schema(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` describing a JSON body of `model` (its definitions are added by the app);
    an optional body may be left out (see `parse_optional_body`)."""
    return {
        "requestBody": {
            "required": required,
            "content": {
                "application/json": {"schema": {"$ref": SCHEMA_REF.format(model=model.__name__)}}
            },
        }
    }


def schema_components(*models: type[BaseModel]) -> dict[str, Any]:
    """The component schemas for `models` and everything they reference."""
    components: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=SCHEMA_REF)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components
