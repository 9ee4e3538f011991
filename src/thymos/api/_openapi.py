"""The OpenAPI document: generated from the routes, then finished with what FastAPI cannot see.

FastAPI knows each route's parameters and declared responses. It cannot know what the edge
answers before a route runs (the request guard's 400 and 403, the connection limits' 408, 429 and
431, the body checks' 413, 415 and 422), which routes need a caller (401 once keys exist), or the
bodies that `parse_body` reads. This module adds them, so the document describes every answer
the server gives. The document also follows the gateway: while no API key exists the server is
open and no operation requires a key; once one exists every operation but `/health` and `/ready`
does (it is rebuilt when that changes).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

from ._body import schema_components
from ._models import ApprovalBody, CreateRunBody, ErrorEnvelope, RevokeBody

SECURITY_SCHEME = "bearer"
_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorEnvelope"}

EVERY_REQUEST = {
    400: "Malformed request: bad JSON, a bad query value, a repeated header, a host this server "
    "does not serve",
    403: "A browser origin that is not allowed",
    408: "The client took too long to send its headers or body",
    429: "Rate, capacity or connection limit (see Retry-After)",
    431: "Request line and headers too large",
}
"""What the edge may answer to any request, before a route runs."""

WITH_CALLER = {
    401: "No API key, or one that is not valid (only once keys exist)",
    403: "Authenticated, but the key's role may not do this, or a browser origin is not allowed",
}
WITH_BODY = {
    413: "Body too large",
    415: "The body is not sent as application/json",
    422: "Well-formed but invalid: nesting too deep, a number out of range, a field's value",
}


def install(app: FastAPI) -> None:
    """Serve the finished document at `/openapi.json`, one version per gateway state."""
    generate = app.openapi
    built: dict[bool, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        gateway = getattr(app.state, "gateway", None)
        guarded = bool(gateway is not None and gateway.enabled)
        if guarded not in built:
            app.openapi_schema = None  # FastAPI caches its own output; build afresh
            built[guarded] = finish(generate(), guarded=guarded)
            app.openapi_schema = built[guarded]
        return built[guarded]

    app.openapi = openapi  # type: ignore[method-assign]


def finish(document: dict[str, Any], *, guarded: bool) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(schema_components(CreateRunBody, ApprovalBody, RevokeBody, ErrorEnvelope))
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`thymos keys create` or THYMOS_API_KEYS). Required by "
            "every operation but /health and /ready once any key exists; while none does the "
            "server is open and this document requires none.",
        }
    }
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            _add_errors(responses, EVERY_REQUEST)
            needs_caller = (path, method.upper()) not in PUBLIC_OPERATIONS
            if needs_caller:
                _add_errors(responses, WITH_CALLER)
            if "requestBody" in operation:
                _add_errors(responses, WITH_BODY)
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _absent_not_null(parameter.get("schema", {}))
            operation.pop("security", None)
            if guarded and needs_caller:
                operation["security"] = [{SECURITY_SCHEME: []}]
    return document


def _absent_not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter is left out, never sent as null: `anyOf: [X, null]` becomes X (with
    the outer keywords kept)."""
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    kept = [option for option in options if option != {"type": "null"}]
    if len(kept) != 1 or len(kept) == len(options):
        return schema
    outer = {key: value for key, value in schema.items() if key != "anyOf"}
    return {**kept[0], **outer}


def _add_errors(responses: dict[str, Any], errors: dict[int, str]) -> None:
    for status, description in errors.items():
        responses.setdefault(
            str(status),
            {
                "description": description,
                "content": {"application/json": {"schema": _ERROR_SCHEMA}},
            },
        )


PUBLIC_OPERATIONS = frozenset({("/health", "GET"), ("/ready", "GET")})
"""The operations that never need a key; every other one depends on `current_caller` (the
black-box tests check both directions on a server with keys)."""


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the document lists at a concrete `path` (HEAD wherever GET), for `Allow`."""
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            methods.update(method.upper() for method in operations)
    if not methods:
        methods.add("GET")  # the document's own routes: /openapi.json, /docs
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)
