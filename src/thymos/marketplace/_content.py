"""Package kinds and the check of each kind's content. No IO: content is JSON already parsed.

- `tool_manifest`: one tool manifest, checked by the same code that loads manifest files
  (`thymos.tools`' `parse_manifest`), so a package installs exactly when the file would load.
- `mcp_server`: one `mcpServers` entry with its name, `{"NAME": {"command": ..., "args": [...],
  "env": {...}}}` or `{"NAME": {"url": ...}}` (each optionally with `effect`, `risk`,
  `timeout_secs`), checked by the code that reads `THYMOS_MCP_CONFIG` (`parse_mcp_server`).
- `policy`: `{"cedar": "..."}`, validated against Thymos's Cedar schema as one policy file
  would be at start-up (`PolicySet`), so an activated package cannot stop the next start.
- `skill`: `{"instructions": "...", "tool_scopes": ["fs_read", "fs_*"], "effect_ceiling"?:
  "read"}`; `effect_ceiling` is one of `pure`, `read`, `write`, `external`, `irreversible`
  (`pure` is governed as `read`, as in manifests). Scopes are tool names or globs with `*` and
  `?` (bracket classes are not accepted).

`policy` and `skill` refuse keys they do not define; a manifest and an MCP entry accept the keys
their loaders ignore, so files written for other clients publish unchanged.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from thymos.core import NotCanonicalizable, canonical_bytes
from thymos.governance import PolicyError, PolicyFile, PolicySet
from thymos.tools import ManifestError
from thymos.tools._manifests import parse_manifest
from thymos.tools._mcp import parse_mcp_server

from ._errors import PackageError, PackageErrorCode

CONTENT_BYTES_MAX = 256 * 1024
"""Canonical bytes of one package's content: a manifest file's own bound (`MANIFEST_BYTES_MAX`);
a policy or a skill is text a person wrote and reads, far below it."""
POLICY_CHARS_MAX = 64 * 1024
SKILL_INSTRUCTIONS_CHARS_MAX = 8_000
"""A skill's instructions join the run's task in the model's context (the task itself is bounded
at 20,000); a few pages is plenty, and several skills bound to one run must still fit."""
SKILL_TOOL_SCOPES_MAX = 256
"""As many scopes as `POST /runs` accepts."""
SKILL_EFFECT_CEILINGS = ("pure", "read", "write", "external", "irreversible")
_SCOPE = re.compile(r"[A-Za-z0-9_.\-*?]{1,128}")
_SOURCE = Path("(package content)")
"""How a manifest or MCP check names its source (a name only: nothing is read); a refusal keeps
the check's `field` and `reason`."""


class PackageKind(StrEnum):
    SKILL = "skill"
    TOOL_MANIFEST = "tool_manifest"
    MCP_SERVER = "mcp_server"
    POLICY = "policy"


def check_kind(kind: str) -> PackageKind:
    """The kind `kind` names, else `PackageError(invalid_package_kind)`."""
    try:
        return PackageKind(kind)
    except ValueError:
        raise PackageError(
            PackageErrorCode.INVALID_PACKAGE_KIND,
            f"{kind!r} is not one of {', '.join(k.value for k in PackageKind)}",
            "kind",
        ) from None


def _refuse(message: str, field: str = "content") -> PackageError:
    return PackageError(PackageErrorCode.INVALID_PACKAGE_CONTENT, message, field)


def content_bytes(content: Any) -> bytes:
    """The RFC 8785 bytes of `content`, bounded; `PackageError(invalid_package_content)` when it
    has no canonical form or is too large."""
    try:
        encoded = canonical_bytes(content)
    except NotCanonicalizable as exc:
        raise _refuse(str(exc)) from None
    if len(encoded) > CONTENT_BYTES_MAX:
        raise _refuse(f"is over {CONTENT_BYTES_MAX} bytes (canonical JSON)")
    return encoded


def _only_keys(content: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(content) - allowed)
    if extra:
        raise _refuse(
            f"is not a field of this kind (fields: {', '.join(sorted(allowed))})",
            f"content.{extra[0]}",
        )


def _tool_manifest(content: dict[str, Any]) -> None:
    try:
        parse_manifest(content, _SOURCE)
    except ManifestError as exc:
        raise _refuse(exc.reason, f"content.{exc.field}") from None


def _mcp_server(content: dict[str, Any]) -> None:
    if len(content) != 1:
        raise _refuse('must be one server by name, {"NAME": {"command": ...} or {"url": ...}}')
    ((name, entry),) = content.items()
    try:
        parse_mcp_server(name, entry, _SOURCE, f"content.{name}")
    except ManifestError as exc:
        raise _refuse(exc.reason, exc.field) from None


def _policy(content: dict[str, Any]) -> None:
    _only_keys(content, {"cedar"})
    text = content.get("cedar")
    if not isinstance(text, str):
        raise _refuse("must be the policy text, a string", "content.cedar")
    if len(text) > POLICY_CHARS_MAX:
        raise _refuse(f"is over {POLICY_CHARS_MAX} characters", "content.cedar")
    try:
        PolicySet([PolicyFile("content.cedar", text)])
    except PolicyError as exc:
        raise _refuse(
            f"line {exc.line}, column {exc.column}: {exc.reason}", "content.cedar"
        ) from None


def _skill(content: dict[str, Any]) -> None:
    _only_keys(content, {"instructions", "tool_scopes", "effect_ceiling"})
    instructions = content.get("instructions")
    if not isinstance(instructions, str) or not instructions.strip():
        raise _refuse("must be non-empty text", "content.instructions")
    if len(instructions) > SKILL_INSTRUCTIONS_CHARS_MAX:
        raise _refuse(f"is over {SKILL_INSTRUCTIONS_CHARS_MAX} characters", "content.instructions")
    scopes = content.get("tool_scopes")
    if not isinstance(scopes, list) or not scopes:
        raise _refuse("must be a non-empty list of tool names or globs", "content.tool_scopes")
    if len(scopes) > SKILL_TOOL_SCOPES_MAX:
        raise _refuse(f"holds more than {SKILL_TOOL_SCOPES_MAX} scopes", "content.tool_scopes")
    for index, scope in enumerate(scopes):
        if not isinstance(scope, str) or _SCOPE.fullmatch(scope) is None:
            raise _refuse(
                "a scope is a tool name or glob: 1 to 128 of A-Z a-z 0-9 _ . - * ?",
                f"content.tool_scopes.{index}",
            )
    if "effect_ceiling" in content and content["effect_ceiling"] not in SKILL_EFFECT_CEILINGS:
        raise _refuse(
            f"must be one of {', '.join(SKILL_EFFECT_CEILINGS)}", "content.effect_ceiling"
        )


_CHECKS = {
    PackageKind.SKILL: _skill,
    PackageKind.TOOL_MANIFEST: _tool_manifest,
    PackageKind.MCP_SERVER: _mcp_server,
    PackageKind.POLICY: _policy,
}


def check_content(kind: PackageKind, content: Any) -> bytes:
    """Check `content` against its kind's schema; its canonical bytes (what `content_hash`
    hashes) when it passes, else `PackageError(invalid_package_content)` naming the field."""
    if not isinstance(content, dict):
        raise _refuse("must be a JSON object")
    encoded = content_bytes(content)
    _CHECKS[kind](content)
    return encoded
