"""`repo_map`: the files of the workspace (or a folder of it), with sizes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from thymos.core import Effect, Risk, ToolSpec

from ._contract import ToolContext, ToolFailure, ToolOutcome
from ._workspace import SKIPPED_DIRS, confine, relative_name

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
        return await asyncio.to_thread(self._map, args, ctx)

    def _map(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        root = confine(ctx.workspace, args.get("path", "."))
        if not root.is_dir():
            raise ToolFailure("not_a_directory", f"{args.get('path', '.')!r} is not a folder")
        limit = int(args.get("max_entries", 500))
        files: list[dict[str, Any]] = []
        truncated = False
        for folder, dirs, names in os.walk(root):
            # Walk in a stable order and never into skipped folders or out through symlinks.
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in sorted(names):
                full = os.path.join(folder, name)
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                if len(files) >= limit:
                    truncated = True
                    break
                files.append(
                    {
                        "path": relative_name(
                            ctx.workspace,
                            confine(ctx.workspace, os.path.relpath(full, ctx.workspace.resolve())),
                        ),
                        "bytes": os.path.getsize(full),
                    }
                )
            if truncated:
                break
        return ToolOutcome(
            {"root": relative_name(ctx.workspace, root), "files": files, "truncated": truncated}
        )
