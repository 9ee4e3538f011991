"""The one error type of the marketplace: a refusal with a stable code and the field it is about.

The HTTP layer answers every `PackageError` with 422 and the error envelope, the code as `code`
and the field in `details`; the CLI prints the message and exits 2.
"""

from __future__ import annotations

from enum import StrEnum


class PackageErrorCode(StrEnum):
    """Why a package (or a key, or a reference) was refused. Never renamed once published."""

    INVALID_PUBLISH_BODY = "invalid_publish_body"
    """A field of the publish body is missing, of the wrong type, or not a field at all."""
    INVALID_PACKAGE_NAME = "invalid_package_name"
    INVALID_VERSION = "invalid_version"
    INVALID_PACKAGE_KIND = "invalid_package_kind"
    INVALID_PACKAGE_CONTENT = "invalid_package_content"
    CONTENT_HASH_MISMATCH = "content_hash_mismatch"
    INVALID_PUBLISHER_KEY = "invalid_publisher_key"
    INVALID_SIGNATURE = "invalid_signature"
    INVALID_PRIVATE_KEY = "invalid_private_key"
    """A signing key that is not 64 hex characters (a 32-byte Ed25519 seed)."""
    INVALID_PACKAGE_REFERENCE = "invalid_package_reference"
    """A `name@version` reference (a run's `skills`) that does not parse."""


class PackageError(ValueError):
    """A refused package: the stable code, a sentence for a person, and the field it names
    (a dotted path into the publish body, such as `content.executor.kind`)."""

    def __init__(self, code: PackageErrorCode, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.code, self.message, self.field = code, message, field

    def __repr__(self) -> str:
        return f"PackageError({self.code.value!r}, {self.message!r}, {self.field!r})"
