"""One error envelope for every error, whatever produced it.

`{"error": {"code": "...", "message": "...", "details": {...}?}}`. Codes map to statuses here and
only here; a 500 is only ever a bug (and is logged as one).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from thymos.core import ErrorCode, ThymosError

from ._openapi import allowed_methods

log = logging.getLogger("thymos.api")

STATUS_OF: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED_JSON: 400,
    ErrorCode.MALFORMED_REQUEST: 400,
    ErrorCode.INVALID_QUERY: 400,
    ErrorCode.SEQ_OUT_OF_RANGE: 400,
    ErrorCode.INVALID_CURSOR: 400,
    ErrorCode.DUPLICATE_KEY: 400,
    ErrorCode.DUPLICATE_HEADER: 400,
    ErrorCode.HOST_NOT_ALLOWED: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.ORIGIN_NOT_ALLOWED: 403,
    ErrorCode.PUBLISHER_NOT_TRUSTED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RUN_NOT_FOUND: 404,
    ErrorCode.APPROVAL_NOT_FOUND: 404,
    ErrorCode.WRIT_NOT_FOUND: 404,
    ErrorCode.PACKAGE_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.SEQ_CONFLICT: 409,
    ErrorCode.LEDGER_CORRUPT: 409,
    ErrorCode.RUN_NOT_ACTIVE: 409,
    ErrorCode.RUN_NOT_RESUMABLE: 409,
    ErrorCode.DUPLICATE_APPROVAL: 409,
    ErrorCode.PROPOSAL_AMBIGUOUS: 409,
    ErrorCode.PROPOSAL_DECIDED: 409,
    ErrorCode.PUBLISHER_EXISTS: 409,
    ErrorCode.PACKAGE_VERSION_EXISTS: 409,
    ErrorCode.PACKAGE_NOT_INSTALLED: 409,
    ErrorCode.TOOL_NAME_TAKEN: 409,
    ErrorCode.POLICY_CONFLICT: 409,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.UNKNOWN_TOOL_SCOPE: 422,
    ErrorCode.UNKNOWN_PROVIDER: 422,
    ErrorCode.PROVIDER_UNAVAILABLE: 422,
    ErrorCode.INVALID_SCRIPT: 422,
    ErrorCode.INVALID_EFFECT_CEILING: 422,
    ErrorCode.COMMIT_NOT_IN_RUN: 422,
    ErrorCode.JSON_TOO_DEEP: 422,
    ErrorCode.NUMBER_OUT_OF_RANGE: 422,
    ErrorCode.INVALID_PUBLISH_BODY: 422,
    ErrorCode.INVALID_PACKAGE_NAME: 422,
    ErrorCode.INVALID_VERSION: 422,
    ErrorCode.INVALID_PACKAGE_KIND: 422,
    ErrorCode.INVALID_PACKAGE_CONTENT: 422,
    ErrorCode.CONTENT_HASH_MISMATCH: 422,
    ErrorCode.INVALID_PUBLISHER_KEY: 422,
    ErrorCode.INVALID_SIGNATURE: 422,
    ErrorCode.INVALID_PACKAGE_REFERENCE: 422,
    ErrorCode.SKILL_NOT_FOUND: 422,
    ErrorCode.NOT_A_SKILL: 422,
    ErrorCode.WRONG_PACKAGE_KIND: 422,
    ErrorCode.MCP_SERVER_UNAVAILABLE: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.CAPACITY_EXHAUSTED: 429,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.NOT_READY: 503,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


def error_response(
    code: ErrorCode,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error: dict[str, Any] = {"code": code.value, "message": message}
    if details:
        error["details"] = details
    status = STATUS_OF[code]
    out_headers = dict(headers or {})
    if status in (429, 503) and "Retry-After" not in out_headers:
        retry = (details or {}).get("retry_after_s", 1)
        out_headers["Retry-After"] = str(retry)
    return Response(
        orjson.dumps({"error": error}),
        status_code=status,
        media_type="application/json",
        headers=out_headers,
    )


def _validation_details(exc: RequestValidationError) -> tuple[ErrorCode, str, dict[str, Any]]:
    errors = exc.errors()
    shown = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "message": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors[:20]
    ]
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ())]
    if first.get("type") == "json_invalid":
        return ErrorCode.MALFORMED_JSON, "the request body is not valid JSON", {"errors": shown}
    if loc and loc[0] in ("query", "header", "path"):
        where = ".".join(loc[1:])
        return (
            ErrorCode.INVALID_QUERY,
            f"parameter {where!r}: {first.get('msg')}",
            {"errors": shown},
        )
    where = ".".join(loc[1:]) if loc and loc[0] == "body" else ".".join(loc)
    message = f"{where or 'body'}: {first.get('msg')}" if first else "the request is invalid"
    if first.get("type") == "model_attributes_type" or (
        first.get("type") == "dict_type" and len(loc) <= 1
    ):
        return (
            ErrorCode.MALFORMED_REQUEST,
            "the request body must be a JSON object",
            {"errors": shown},
        )
    return ErrorCode.INVALID_REQUEST, message, {"errors": shown}


def install(app: FastAPI) -> None:
    async def on_thymos(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ThymosError)
        # RFC 9110: a 401 names the scheme the client should use.
        headers = {"WWW-Authenticate": "Bearer"} if exc.code is ErrorCode.UNAUTHENTICATED else None
        return error_response(exc.code, exc.message, exc.details or None, headers)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        code, message, details = _validation_details(exc)
        return error_response(code, message, details)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(ErrorCode.NOT_FOUND, "there is no such route")
        if exc.status_code == 405:
            allowed = allowed_methods(request.app, request.url.path)
            return error_response(
                ErrorCode.METHOD_NOT_ALLOWED,
                f"this route takes {', '.join(allowed)}",
                {"allowed": allowed},
                headers={"Allow": ", ".join(allowed)},
            )
        if exc.status_code == 400:
            return error_response(ErrorCode.MALFORMED_REQUEST, str(exc.detail))
        log.error("unmapped HTTP exception %s: %s", exc.status_code, exc.detail)
        return error_response(ErrorCode.INTERNAL, "an internal error occurred")

    async def on_disconnect(_: Request, exc: Exception) -> Response:
        # The client went away mid-request: nobody will read an answer, and it is not a bug.
        return error_response(ErrorCode.MALFORMED_REQUEST, "the client went away")

    async def on_bug(request: Request, exc: Exception) -> Response:
        log.exception(
            "bug: unhandled error on %s %s", request.method, request.url.path, exc_info=exc
        )
        return error_response(ErrorCode.INTERNAL, "an internal error occurred; it has been logged")

    app.add_exception_handler(ThymosError, on_thymos)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_bug)
