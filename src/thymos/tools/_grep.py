"""`grep`: search the workspace's text files for a regular expression."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from typing import Any

from thymos.core import Effect, Risk, ToolFailureCode, ToolSpec

from ._contract import ToolContext, ToolFailure, ToolOutcome

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
            raise ToolFailure(
                ToolFailureCode.INVALID_PATTERN, f"the pattern does not compile: {exc}"
            ) from exc
        workspace = ctx.workspace
        root = workspace.confine(args.get("path", "."))
        protected = workspace.protected_files()
        limit = int(args.get("max_matches", 100))
        matches: list[dict[str, Any]] = []
        scanned = 0
        files = [root] if root.is_file() else (f for f, _ in workspace.walk(root, protected))
        for full in files:
            if scanned >= GREP_FILES_MAX:
                return ToolOutcome(
                    {"matches": matches, "truncated": True, "files_scanned": scanned}
                )
            rel = workspace.relative_name(full)
            try:
                with workspace.open_file(full, protected, rel) as handle:
                    if os.fstat(handle.fileno()).st_size > GREP_FILE_BYTES_MAX:
                        continue
                    data = handle.read(GREP_FILE_BYTES_MAX + 1)
            except ToolFailure:
                if full == root:
                    raise
                continue  # walking: a file that vanished, is not regular or is protected
            if len(data) > GREP_FILE_BYTES_MAX:
                continue
            scanned += 1
            if b"\x00" in data[:8192]:
                continue
            for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                if regex.search(line):
                    matches.append(
                        {"path": rel, "line": number, "text": line[:GREP_LINE_CHARS_MAX]}
                    )
                    if len(matches) >= limit:
                        return ToolOutcome(
                            {"matches": matches, "truncated": True, "files_scanned": scanned}
                        )
        return ToolOutcome({"matches": matches, "truncated": False, "files_scanned": scanned})
