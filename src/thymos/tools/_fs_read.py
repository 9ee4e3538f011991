"""`fs_read`: read a text file inside the workspace, by lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from thymos.core import Effect, Risk, ToolFailureCode, ToolSpec

from ._contract import ToolContext, ToolFailure, ToolOutcome

FS_READ_BYTES_MAX = 256 * 1024
"""A file read returns at most this much text; the ledger keeps every output."""

FS_READ_LINES_MAX = 2000


class FsRead:
    spec = ToolSpec(
        name="fs_read",
        description="Read a UTF-8 text file in the workspace, optionally from a 1-based line for a number of lines.",
        input_schema={
            "type": "object",
            "properties": {
                "path": {"type": "string", "minLength": 1, "maxLength": 4096},
                "offset": {"type": "integer", "minimum": 1},
                "limit": {"type": "integer", "minimum": 1, "maximum": FS_READ_LINES_MAX},
            },
            "required": ["path"],
            "additionalProperties": False,
        },
        effect=Effect.READ,
        risk=Risk.LOW,
        idempotent=True,
        compensable=False,
    )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        return await ctx.pool.run(self._read, args, ctx)

    def _read(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        workspace = ctx.workspace
        path = workspace.confine(args["path"])
        with workspace.open_file(path, workspace.protected_files(), args["path"]) as handle:
            data = handle.read(FS_READ_BYTES_MAX * 4)
        if b"\x00" in data[:8192]:
            raise ToolFailure(ToolFailureCode.BINARY_FILE, f"{args['path']!r} looks binary")
        text = data.decode("utf-8", errors="replace")
        lines = text.splitlines(keepends=True)
        start = int(args.get("offset", 1)) - 1
        count = int(args.get("limit", FS_READ_LINES_MAX))
        chosen = "".join(lines[start : start + count])
        truncated = len(chosen.encode()) > FS_READ_BYTES_MAX or start + count < len(lines)
        content = chosen.encode()[:FS_READ_BYTES_MAX].decode("utf-8", errors="ignore")
        return ToolOutcome(
            {
                "path": workspace.relative_name(path),
                "content": content,
                "first_line": start + 1,
                "total_lines": len(lines),
                "truncated": truncated,
            }
        )
