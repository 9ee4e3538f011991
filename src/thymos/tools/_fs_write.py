"""`fs_write` and `fs_patch`: change a file of the workspace, and commit it to the world.

Both commit a delta on a resource of kind `file` (id: the path relative to the workspace;
value: the new content's size and BLAKE3), so the world shows what the run changed and replay
reproduces it without touching the disk. Writes are atomic and confined (`Workspace.write_file`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thymos.core import Delta, Effect, Risk, ToolFailureCode, ToolSpec, blake3_hex

from ._contract import ToolContext, ToolFailure, ToolOutcome, WorldView
from ._workspace import Workspace

FILE_KIND = "file"
FS_WRITE_BYTES_MAX = 512 * 1024
"""A file written or patched is at most this large (the content also travels in the ledger)."""

_PATH = {"type": "string", "minLength": 1, "maxLength": 4096}


def _committed(
    workspace: Workspace, world: WorldView, path: Path, data: bytes, created: bool
) -> ToolOutcome:
    name = workspace.relative_name(path)
    value = {"size": len(data), "blake3": blake3_hex(data)}
    current = world.get(FILE_KIND, name)
    delta = (
        Delta("create", FILE_KIND, name, value)
        if current is None
        else Delta("replace", FILE_KIND, name, value, expected_version=current.version)
    )
    return ToolOutcome({"path": name, **value, "created": created}, (delta,))


class FsWrite:
    spec = ToolSpec(
        name="fs_write",
        description=(
            "Write a UTF-8 text file in the workspace, replacing it if it exists and creating "
            "its folders if needed."
        ),
        input_schema={
            "type": "object",
            "properties": {"path": _PATH, "content": {"type": "string"}},
            "required": ["path", "content"],
            "additionalProperties": False,
        },
        effect=Effect.WRITE,
        risk=Risk.MEDIUM,
        idempotent=True,
        compensable=False,
    )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        return await ctx.pool.run(self._write, args, ctx)

    @staticmethod
    def _write(args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        data = str(args["content"]).encode()
        if len(data) > FS_WRITE_BYTES_MAX:
            raise ToolFailure(
                ToolFailureCode.TOO_LARGE, f"the content is over {FS_WRITE_BYTES_MAX} bytes"
            )
        workspace = ctx.workspace
        path = workspace.confine(args["path"])
        created = workspace.write_file(path, data, args["path"])
        return _committed(workspace, ctx.world, path, data, created)


class FsPatch:
    spec = ToolSpec(
        name="fs_patch",
        description=(
            "Replace the one occurrence of `anchor` in a UTF-8 text file of the workspace with "
            "`replacement`; fails if the anchor occurs zero or several times."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "path": _PATH,
                "anchor": {"type": "string", "minLength": 1},
                "replacement": {"type": "string"},
            },
            "required": ["path", "anchor", "replacement"],
            "additionalProperties": False,
        },
        effect=Effect.WRITE,
        risk=Risk.MEDIUM,
        idempotent=False,
        compensable=False,
    )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        return await ctx.pool.run(self._patch, args, ctx)

    @staticmethod
    def _patch(args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        workspace = ctx.workspace
        shown = args["path"]
        path = workspace.confine(shown)
        with workspace.open_file(path, workspace.protected_files(), shown) as handle:
            raw = handle.read(FS_WRITE_BYTES_MAX + 1)
        if len(raw) > FS_WRITE_BYTES_MAX:
            raise ToolFailure(
                ToolFailureCode.TOO_LARGE, f"{shown!r} is over {FS_WRITE_BYTES_MAX} bytes"
            )
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise ToolFailure(ToolFailureCode.NOT_TEXT, f"{shown!r} is not UTF-8 text") from None
        anchor = str(args["anchor"])
        found = text.count(anchor)
        if found == 0:
            raise ToolFailure(
                ToolFailureCode.ANCHOR_NOT_FOUND, f"the anchor does not occur in {shown!r}"
            )
        if found > 1:
            raise ToolFailure(
                ToolFailureCode.ANCHOR_NOT_UNIQUE,
                f"the anchor occurs {found} times in {shown!r}; give more context to make it unique",
            )
        data = text.replace(anchor, str(args["replacement"]), 1).encode()
        if len(data) > FS_WRITE_BYTES_MAX:
            raise ToolFailure(
                ToolFailureCode.TOO_LARGE,
                f"the patched file would be over {FS_WRITE_BYTES_MAX} bytes",
            )
        created = workspace.write_file(path, data, shown)
        return _committed(workspace, ctx.world, path, data, created)
