"""`/marketplace/*`: the package registry. Admins trust publishers' keys; operators publish
packages signed by a trusted key; every caller lists and reads them.

The registry is one per server (not per tenant): a package is code and policy anyone may choose
to install, and who may publish is decided by an admin's trust in a key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from thymos.core import ErrorCode, ThymosError
from thymos.marketplace import (
    DESCRIPTION_CHARS_MAX,
    VERSION_CHARS_MAX,
    PackageKind,
)

from ._body import parse_body, parse_json, read_body
from ._caller import Caller, Role, current_caller
from ._deps import runtime_of
from ._models import ERROR_RESPONSES, _Strict

router = APIRouter(tags=["marketplace"], responses=ERROR_RESPONSES)
CallerDep = Annotated[Caller, Depends(current_caller)]

PUBLISHER_NAME_PATTERN = "^[a-z0-9]+(-[a-z0-9]+)*$"


class PublisherBody(_Strict):
    name: str = Field(
        ...,
        min_length=2,
        max_length=64,
        pattern=PUBLISHER_NAME_PATTERN,
        description="The publisher's name: 2 to 64 of a-z 0-9 and '-' (as a package name)",
    )
    public_key: str = Field(
        ...,
        description="The publisher's Ed25519 public key, 64 lowercase hex characters; one that "
        "is not a usable key (not a curve point, or of small order) is 422 "
        "`invalid_publisher_key`",
        json_schema_extra={"pattern": "^[0-9a-f]{64}$"},
    )


PUBLISH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A signed package version. Each check that fails is 422 with its own code "
    "and `details.field`: `invalid_publish_body`, `invalid_package_name`, `invalid_version`, "
    "`invalid_package_kind`, `invalid_package_content`, `content_hash_mismatch`, "
    "`invalid_publisher_key`, `invalid_signature`.",
    "required": [
        "name",
        "version",
        "kind",
        "content",
        "content_hash",
        "publisher_key",
        "signature",
    ],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "description": "`[a-z0-9-]`, 2 to 64, or `@scope/name`"},
        "version": {
            "type": "string",
            "maxLength": VERSION_CHARS_MAX,
            "description": "SemVer 2.0.0",
        },
        "kind": {"type": "string", "enum": [kind.value for kind in PackageKind]},
        "description": {"type": "string", "maxLength": DESCRIPTION_CHARS_MAX},
        "content": {"type": "object", "description": "Checked against the kind's schema"},
        "content_hash": {
            "type": "string",
            "description": "Hex BLAKE3 of the RFC 8785 bytes of `content`",
        },
        "publisher_key": {
            "type": "string",
            "description": "Hex Ed25519 public key of a trusted publisher",
        },
        "signature": {
            "type": "string",
            "description": "Hex Ed25519 signature over the RFC 8785 bytes of the body without "
            "`signature`",
        },
    },
}


@router.post(
    "/marketplace/publishers",
    summary="Trust a publisher's key (admin)",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PublisherBody.model_json_schema()}},
        }
    },
)
async def trust_publisher(request: Request, caller: CallerDep) -> dict[str, Any]:
    caller.require(Role.ADMIN)
    body = await parse_body(request, PublisherBody)
    return await runtime_of(request).marketplace.trust(body.name, body.public_key, by=caller.key_id)


@router.get("/marketplace/publishers", summary="The trusted publishers (admin)")
async def publishers(request: Request, caller: CallerDep) -> dict[str, Any]:
    caller.require(Role.ADMIN)
    return {"publishers": await runtime_of(request).marketplace.publishers()}


@router.post(
    "/marketplace/packages",
    summary="Publish a package version signed by a trusted publisher (operator)",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PUBLISH_SCHEMA}},
        }
    },
)
async def publish(request: Request, caller: CallerDep) -> dict[str, Any]:
    caller.require(Role.OPERATOR)
    raw = await read_body(request)
    if not raw.strip():
        raise ThymosError(ErrorCode.MALFORMED_JSON, "the request needs a JSON body")
    body = parse_json(raw)
    return await runtime_of(request).marketplace.publish(body, by=caller.key_id)


@router.get(
    "/marketplace/packages",
    summary="The latest version of each package (SemVer order)",
)
async def packages(request: Request, caller: CallerDep) -> dict[str, Any]:
    return {"packages": await runtime_of(request).marketplace.latest()}


@router.get(
    "/marketplace/packages/{name:path}",
    summary="One package: its latest version and every version, newest first",
    description="Scoped names are written as they are: `/marketplace/packages/@scope/name`.",
)
async def package(name: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    return await runtime_of(request).marketplace.package(name)
