"""JSON request bodies, parsed strictly whatever the Content-Type says.

`orjson` refuses what JSON does not allow (NaN, Infinity, trailing commas, invalid UTF-8); the
model refuses unknown fields and wrong types. Malformed JSON is 400; invalid content is 422.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from thymos.core import ErrorCode, ThymosError

M = TypeVar("M", bound=BaseModel)
SCHEMA_REF = "#/components/schemas/{model}"


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    if not raw.strip():
        raise ThymosError(ErrorCode.MALFORMED_JSON, "the request needs a JSON body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ThymosError(
            ErrorCode.MALFORMED_JSON, f"the request body is not valid JSON: {exc}"
        ) from None
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


def request_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` describing a JSON body of `model` (its definitions are added by the app)."""
    return {
        "requestBody": {
            "required": True,
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
