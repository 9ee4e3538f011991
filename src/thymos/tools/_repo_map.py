"""`repo_map`: the files of the workspace (or a folder of it), with sizes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from thymos.core import Effect, Risk, ToolFailureCode, ToolSpec

from ._contract import ToolContext, ToolFailure, ToolOutcome

REPO_MAP_ENTRIES_MAX = 2000


class RepoMap:
    spec = ToolSpec(
        name="repo_map",
        description="List the files under a workspace folder (default: the whole workspace) with their sizes.",
        input_schema={
            "type": "object",
            "properties": {
                "path": {"type": "string", "minLength": 1, "maxLength": 4096},
                "max_entries": {"type": "integer", "minimum": 1, "maximum": REPO_MAP_ENTRIES_MAX},
            },
            "additionalProperties": False,
        },
        effect=Effect.READ,
        risk=Risk.LOW,
        idempotent=True,
        compensable=False,
    )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        return await ctx.pool.run(self._map, args, ctx)

    def _map(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        workspace = ctx.workspace
        root = workspace.confine(args.get("path", "."))
        if not root.is_dir():
            raise ToolFailure(
                ToolFailureCode.NOT_A_DIRECTORY, f"{args.get('path', '.')!r} is not a folder"
            )
        limit = int(args.get("max_entries", 500))
        files: list[dict[str, Any]] = []
        truncated = False
        for full, info in workspace.walk(root, workspace.protected_files()):
            if len(files) >= limit:
                truncated = True
                break
            files.append({"path": workspace.relative_name(full), "bytes": info.st_size})
        return ToolOutcome(
            {"root": workspace.relative_name(root), "files": files, "truncated": truncated}
        )
