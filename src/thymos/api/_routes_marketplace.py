"""`/marketplace/*`: the package registry. Admins trust publishers' keys; operators publish
packages signed by a trusted key; every caller lists and reads them; admins install tool
packages and activate policy packages for their tenant.

The registry is one per server (not per tenant): a package is code and policy anyone may choose
to install, and who may publish is decided by an admin's trust in a key. Installing and
activating are per tenant. Every action is recorded in the acting key's tenant's registry
ledger, with the key (`/audit/entries` lists it).
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
from thymos.runtime import KeyRef

from ._body import parse_body, parse_json, read_body
from ._caller import Caller, Role, current_caller
from ._deps import runtime_of
from ._models import ERROR_RESPONSES, _Strict

router = APIRouter(tags=["marketplace"], responses=ERROR_RESPONSES)
CallerDep = Annotated[Caller, Depends(current_caller)]

PUBLISHER_NAME_PATTERN = "^[a-z0-9]+(-[a-z0-9]+)*$"


def _who(caller: Caller) -> KeyRef:
    return KeyRef(caller.tenant, caller.key_id, caller.name)


class VersionBody(_Strict):
    version: str | None = Field(
        None,
        max_length=VERSION_CHARS_MAX,
        description="The version to install or activate (SemVer); the newest when omitted",
    )


async def _version_body(request: Request) -> str | None:
    """The optional `{"version"}` body (an empty body means the newest version)."""
    raw = await read_body(request)
    if not raw.strip():
        return None
    return (await parse_body(request, VersionBody)).version


_VERSION_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": VersionBody.model_json_schema()}},
    }
}


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
    return await runtime_of(request).marketplace.trust(body.name, body.public_key, who=_who(caller))


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
    return await runtime_of(request).marketplace.publish(body, who=_who(caller))


@router.get(
    "/marketplace/packages",
    summary="The latest version of each package (SemVer order)",
)
async def packages(request: Request, caller: CallerDep) -> dict[str, Any]:
    return {"packages": await runtime_of(request).marketplace.latest()}


@router.get(
    "/marketplace/installed",
    summary="The caller's tenant's installed tool packages and active policy packages",
)
async def installed(request: Request, caller: CallerDep) -> dict[str, Any]:
    return await runtime_of(request).marketplace.installed(caller.tenant)


@router.post(
    "/marketplace/packages/{name:path}/install",
    summary="Install a tool_manifest or mcp_server package for the tenant's runs (admin)",
    description="Its tools join what the tenant's runs may scope. Recorded in the tenant's "
    "registry ledger with the package's hash and the key. The newest version unless "
    "`version` is given; installing the installed version again changes nothing.",
    openapi_extra=_VERSION_BODY,
)
async def install(name: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    caller.require(Role.ADMIN)
    version = await _version_body(request)
    return await runtime_of(request).marketplace.install(name, version, who=_who(caller))


@router.post(
    "/marketplace/packages/{name:path}/uninstall",
    summary="Take an installed package's tools away from the tenant's runs (admin)",
)
async def uninstall(name: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    caller.require(Role.ADMIN)
    return await runtime_of(request).marketplace.uninstall(name, who=_who(caller))


@router.post(
    "/marketplace/packages/{name:path}/activate",
    summary="Add a policy package to the tenant's active policy set (admin)",
    description="Its policies govern the next decision of every run of the tenant, and every "
    "decision they take part in names them (`package:NAME@VERSION#ID`). Recorded in the "
    "tenant's registry ledger with the package's hash and the key.",
    openapi_extra=_VERSION_BODY,
)
async def activate(name: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    caller.require(Role.ADMIN)
    version = await _version_body(request)
    return await runtime_of(request).marketplace.activate(name, version, who=_who(caller))


@router.post(
    "/marketplace/packages/{name:path}/deactivate",
    summary="Take a policy package out of the tenant's active policy set (admin)",
)
async def deactivate(name: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    caller.require(Role.ADMIN)
    return await runtime_of(request).marketplace.deactivate(name, who=_who(caller))


@router.get(
    "/marketplace/packages/{name:path}",
    summary="One package: its latest version and every version, newest first",
    description="Scoped names are written as they are: `/marketplace/packages/@scope/name`.",
)
async def package(name: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    return await runtime_of(request).marketplace.package(name)
