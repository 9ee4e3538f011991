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

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from ._body import schema_components
from ._caller import current_caller
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
            built[guarded] = finish(generate(), app, guarded=guarded)
            app.openapi_schema = built[guarded]
        return built[guarded]

    app.openapi = openapi  # type: ignore[method-assign]


def finish(document: dict[str, Any], app: FastAPI, *, guarded: bool) -> dict[str, Any]:
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
    callers = _caller_operations(app)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            _add_errors(responses, EVERY_REQUEST)
            needs_caller = (path, method.upper()) in callers
            if needs_caller:
                _add_errors(responses, WITH_CALLER)
            if "requestBody" in operation:
                _add_errors(responses, WITH_BODY)
            operation.pop("security", None)
            if guarded and needs_caller:
                operation["security"] = [{SECURITY_SCHEME: []}]
    return document


def _add_errors(responses: dict[str, Any], errors: dict[int, str]) -> None:
    for status, description in errors.items():
        responses.setdefault(
            str(status),
            {
                "description": description,
                "content": {"application/json": {"schema": _ERROR_SCHEMA}},
            },
        )


def _caller_operations(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of every route that depends on `current_caller`."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, APIRoute) and _depends_on(route.dependant, current_caller):
            found.update((route.path, method) for method in route.methods or ())
    return found


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(dep.call is call or _depends_on(dep, call) for dep in dependant.dependencies)
