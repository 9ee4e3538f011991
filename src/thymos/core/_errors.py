"""One root error type with stable codes.

Every operating error (bad input, a refusal, a missing run) is a `ThymosError` carrying a code from
`ErrorCode`; the HTTP layer maps codes to statuses and the one JSON envelope. A broken invariant is
not a `ThymosError`: it is a bug and raises `AssertionError` loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable, snake_case codes clients may match on. Never renamed once published."""

    # 400: the request does not parse.
    MALFORMED_JSON = "malformed_json"
    MALFORMED_REQUEST = "malformed_request"
    INVALID_QUERY = "invalid_query"
    SEQ_OUT_OF_RANGE = "seq_out_of_range"
    INVALID_CURSOR = "invalid_cursor"
    DUPLICATE_KEY = "duplicate_key"
    DUPLICATE_HEADER = "duplicate_header"
    HOST_NOT_ALLOWED = "host_not_allowed"
    # 401/403: identity and permission.
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    PUBLISHER_NOT_TRUSTED = "publisher_not_trusted"
    # 404/405.
    NOT_FOUND = "not_found"
    RUN_NOT_FOUND = "run_not_found"
    APPROVAL_NOT_FOUND = "approval_not_found"
    WRIT_NOT_FOUND = "writ_not_found"
    PACKAGE_NOT_FOUND = "package_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # 408: the client was too slow to send its request.
    REQUEST_TIMEOUT = "request_timeout"
    # 409: conflicts with the current state.
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    SEQ_CONFLICT = "seq_conflict"
    LEDGER_CORRUPT = "ledger_corrupt"
    RUN_NOT_ACTIVE = "run_not_active"
    RUN_NOT_RESUMABLE = "run_not_resumable"
    DUPLICATE_APPROVAL = "duplicate_approval"
    PROPOSAL_AMBIGUOUS = "proposal_ambiguous"
    PROPOSAL_DECIDED = "proposal_decided"
    PUBLISHER_EXISTS = "publisher_exists"
    PACKAGE_VERSION_EXISTS = "package_version_exists"
    PACKAGE_NOT_INSTALLED = "package_not_installed"
    TOOL_NAME_TAKEN = "tool_name_taken"
    POLICY_CONFLICT = "policy_conflict"
    # 413, 415.
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    # 422: well-formed but invalid.
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_TOOL_SCOPE = "unknown_tool_scope"
    UNKNOWN_PROVIDER = "unknown_provider"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    INVALID_SCRIPT = "invalid_script"
    INVALID_EFFECT_CEILING = "invalid_effect_ceiling"
    COMMIT_NOT_IN_RUN = "commit_not_in_run"
    JSON_TOO_DEEP = "json_too_deep"
    NUMBER_OUT_OF_RANGE = "number_out_of_range"
    # 422 from the marketplace's checks (`thymos.marketplace.PackageErrorCode`, same values).
    INVALID_PUBLISH_BODY = "invalid_publish_body"
    INVALID_PACKAGE_NAME = "invalid_package_name"
    INVALID_VERSION = "invalid_version"
    INVALID_PACKAGE_KIND = "invalid_package_kind"
    INVALID_PACKAGE_CONTENT = "invalid_package_content"
    CONTENT_HASH_MISMATCH = "content_hash_mismatch"
    INVALID_PUBLISHER_KEY = "invalid_publisher_key"
    INVALID_SIGNATURE = "invalid_signature"
    INVALID_PACKAGE_REFERENCE = "invalid_package_reference"
    # 422 from binding a run's skills (`POST /runs` `skills`).
    SKILL_NOT_FOUND = "skill_not_found"
    NOT_A_SKILL = "not_a_skill"
    # 422 from installing or activating a package.
    WRONG_PACKAGE_KIND = "wrong_package_kind"
    MCP_SERVER_UNAVAILABLE = "mcp_server_unavailable"
    # 429.
    RATE_LIMITED = "rate_limited"
    CAPACITY_EXHAUSTED = "capacity_exhausted"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    # 431.
    HEADERS_TOO_LARGE = "headers_too_large"
    # 503.
    SHUTTING_DOWN = "shutting_down"
    NOT_READY = "not_ready"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    # 500: only ever a bug.
    INTERNAL = "internal_error"


class ThymosError(Exception):
    """An operating error with a stable code, a sentence for a person, and optional details."""

    def __init__(
        self, code: ErrorCode, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __repr__(self) -> str:
        return f"ThymosError({self.code.value!r}, {self.message!r})"
