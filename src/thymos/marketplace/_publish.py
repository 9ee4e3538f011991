"""The publish body: its content hash, the bytes a publisher signs, signing, and verification.

    {"name", "version", "kind", "description"?, "content", "content_hash", "publisher_key",
     "signature"}

`content_hash` is the hex BLAKE3 of the RFC 8785 bytes of `content`; `signature` is the hex
Ed25519 signature, by `publisher_key`, over the RFC 8785 bytes of the body without `signature`.
Every field is signed, `description` included, so nothing a reader sees can be changed after
signing. A body has no other fields: an unknown one is refused rather than carried unsigned or
dropped. Whether a publisher is trusted is the caller's question (the registry's list); this
module only proves that the body is what that key signed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature

from thymos.core import NotCanonicalizable, blake3_hex, canonical_bytes

from ._content import PackageKind, check_content, check_kind
from ._errors import PackageError, PackageErrorCode
from ._keys import private_key, public_key, signature_bytes
from ._names import PackageRef, check_name
from ._version import Version

DESCRIPTION_CHARS_MAX = 2_000
"""A paragraph or two for a listing; the content carries the substance."""

PUBLISH_FIELDS = (
    "name",
    "version",
    "kind",
    "description",
    "content",
    "content_hash",
    "publisher_key",
    "signature",
)
_STRING_FIELDS = ("name", "version", "kind", "content_hash", "publisher_key", "signature")


@dataclass(frozen=True, slots=True)
class Package:
    """A verified package version: every field of its publish body, parsed.

    `description` is None when the body had none; `as_dict()` then leaves it out, so
    `verify_publish(package.as_dict())` verifies again: it is the body that was signed."""

    name: str
    version: Version
    kind: PackageKind
    description: str | None
    content: dict[str, Any]
    content_hash: str
    publisher_key: str
    signature: str

    @property
    def reference(self) -> PackageRef:
        """This version as a run names it (`str()` gives `name@version`)."""
        return PackageRef(self.name, self.version)

    def as_dict(self) -> dict[str, Any]:
        """The publish body (a fresh copy; changing it does not change the package)."""
        body: dict[str, Any] = {
            "name": self.name,
            "version": str(self.version),
            "kind": self.kind.value,
        }
        if self.description is not None:
            body["description"] = self.description
        body["content"] = copy.deepcopy(self.content)
        body["content_hash"] = self.content_hash
        body["publisher_key"] = self.publisher_key
        body["signature"] = self.signature
        return body


def content_hash(content: Any) -> str:
    """The hex BLAKE3 of the RFC 8785 bytes of `content`; `PackageError(invalid_package_content)`
    when it has no canonical form (NaN, an integer beyond 2**53, a non-JSON value)."""
    try:
        return blake3_hex(canonical_bytes(content))
    except NotCanonicalizable as exc:
        raise PackageError(PackageErrorCode.INVALID_PACKAGE_CONTENT, str(exc), "content") from None


def signing_bytes(body: Mapping[str, Any]) -> bytes:
    """The RFC 8785 bytes of `body` without `signature`: what the publisher signs."""
    unsigned = {key: value for key, value in body.items() if key != "signature"}
    try:
        return canonical_bytes(unsigned)
    except NotCanonicalizable as exc:
        raise PackageError(PackageErrorCode.INVALID_PUBLISH_BODY, str(exc), "(body)") from None


def publish_body(
    *, name: str, version: str, kind: str, content: Any, description: str | None = None
) -> dict[str, Any]:
    """An unsigned publish body with its `content_hash` and a copy of `content` (not checked:
    `verify_publish` does that once it is signed)."""
    body: dict[str, Any] = {"name": name, "version": version, "kind": kind}
    if description is not None:
        body["description"] = description
    body["content"] = copy.deepcopy(content)
    body["content_hash"] = content_hash(content)
    return body


def sign(body: Mapping[str, Any], private: str) -> dict[str, Any]:
    """A copy of `body` with `publisher_key` set to the public key of `private` (hex seed) and
    `signature` over the rest; a `signature` already there is replaced. Ed25519 signatures are
    deterministic: the same body and key give the same signature."""
    key = private_key(private)
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    unsigned["publisher_key"] = key.public_key().public_bytes_raw().hex()
    return {**unsigned, "signature": key.sign(signing_bytes(unsigned)).hex()}


def _body_error(message: str, field: str) -> PackageError:
    return PackageError(PackageErrorCode.INVALID_PUBLISH_BODY, message, field)


def _check_fields(body: Any) -> None:
    if not isinstance(body, Mapping):
        raise _body_error("the publish body must be a JSON object", "(body)")
    for key in body:
        if key not in PUBLISH_FIELDS:
            raise _body_error(
                f"is not a field of a publish body (fields: {', '.join(PUBLISH_FIELDS)})",
                str(key),
            )
    for key in (*_STRING_FIELDS, "content"):
        if key not in body:
            raise _body_error("is missing", key)
    for key in _STRING_FIELDS:
        if not isinstance(body[key], str):
            raise _body_error("must be a string", key)
    if "description" in body:
        description = body["description"]
        if not isinstance(description, str):
            raise _body_error("must be a string when given", "description")
        if len(description) > DESCRIPTION_CHARS_MAX:
            raise _body_error(f"is over {DESCRIPTION_CHARS_MAX} characters", "description")


def verify_publish(body: Mapping[str, Any]) -> Package:
    """The package a publish body holds, checked in this order (the first failure is raised as
    a `PackageError`): every field present with its type and no other field
    (`invalid_publish_body`; `content` is typed by the content check), the name
    (`invalid_package_name`), the version (`invalid_version`), the kind
    (`invalid_package_kind`), the content against its kind (`invalid_package_content`), the
    content hash (`content_hash_mismatch`), the publisher key (`invalid_publisher_key`), and the
    signature over the body (`invalid_signature`). Pure: no IO, no clock."""
    _check_fields(body)
    name = check_name(body["name"])
    version = Version.parse(body["version"])
    kind = check_kind(body["kind"])
    encoded = check_content(kind, body["content"])
    actual = blake3_hex(encoded)
    if body["content_hash"] != actual:
        raise PackageError(
            PackageErrorCode.CONTENT_HASH_MISMATCH,
            f"is not the BLAKE3 of the content's RFC 8785 bytes ({actual})",
            "content_hash",
        )
    key = public_key(body["publisher_key"])
    signature = signature_bytes(body["signature"])
    signed = signing_bytes(body)
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        raise PackageError(
            PackageErrorCode.INVALID_SIGNATURE,
            "is not publisher_key's signature of this body (RFC 8785 bytes without signature)",
            "signature",
        ) from None
    package = Package(
        name=name,
        version=version,
        kind=kind,
        description=body.get("description"),
        content=copy.deepcopy(body["content"]),
        content_hash=actual,
        publisher_key=body["publisher_key"],
        signature=body["signature"],
    )
    # The pair of the signature check: the package's own body is the one that was signed.
    assert signing_bytes(package.as_dict()) == signed, "a package must give back its signed body"
    return package
