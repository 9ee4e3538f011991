"""`grep`: search the workspace's text files for a regular expression."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from typing import Any

from thymos.core import Effect, Risk, ToolSpec

from ._contract import ToolContext, ToolFailure, ToolOutcome
from ._workspace import SKIPPED_DIRS, confine, relative_name

GREP_MATCHES_MAX = 500
GREP_FILE_BYTES_MAX = 2 * 1024 * 1024
"""Larger files are skipped: they are data, not code, and would stall the search."""
GREP_LINE_CHARS_MAX = 400
GREP_FILES_MAX = 20_000


class Grep:
    spec = ToolSpec(
        name="grep",
        description="Search text files under a workspace folder for a regular expression (Python syntax).",
        input_schema={
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "minLength": 1, "maxLength": 1000},
                "path": {"type": "string", "minLength": 1, "maxLength": 4096},
                "max_matches": {"type": "integer", "minimum": 1, "maximum": GREP_MATCHES_MAX},
                "ignore_case": {"type": "boolean"},
            },
            "required": ["pattern"],
            "additionalProperties": False,
        },
        effect=Effect.READ,
        risk=Risk.LOW,
        idempotent=True,
        compensable=False,
    )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        return await asyncio.to_thread(self._grep, args, ctx)

    def _grep(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        try:
            regex = re.compile(args["pattern"], re.IGNORECASE if args.get("ignore_case") else 0)
        except re.error as exc:
            raise ToolFailure("invalid_pattern", f"the pattern does not compile: {exc}") from exc
        root = confine(ctx.workspace, args.get("path", "."))
        limit = int(args.get("max_matches", 100))
        matches: list[dict[str, Any]] = []
        scanned = 0
        targets = [str(root)] if root.is_file() else None
        walk = ((str(root.parent), [], [root.name]),) if targets else os.walk(root)
        for folder, dirs, names in walk:
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in sorted(names):
                full = os.path.join(folder, name)
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                if os.path.getsize(full) > GREP_FILE_BYTES_MAX or scanned >= GREP_FILES_MAX:
                    continue
                scanned += 1
                with open(full, "rb") as handle:
                    data = handle.read()
                if b"\x00" in data[:8192]:
                    continue
                rel = relative_name(
                    ctx.workspace,
                    confine(ctx.workspace, os.path.relpath(full, ctx.workspace.resolve())),
                )
                for number, line in enumerate(
                    data.decode("utf-8", errors="replace").splitlines(), 1
                ):
                    if regex.search(line):
                        matches.append(
                            {"path": rel, "line": number, "text": line[:GREP_LINE_CHARS_MAX]}
                        )
                        if len(matches) >= limit:
                            return ToolOutcome(
                                {"matches": matches, "truncated": True, "files_scanned": scanned}
                            )
        return ToolOutcome({"matches": matches, "truncated": False, "files_scanned": scanned})
