"""`grep`: search the workspace's text files for a regular expression, with ripgrep.

ripgrep's regular expressions run in linear time (no backtracking: `(a+)+$` cannot stall it),
and it runs as a child process in its own process group: a timeout, an output cap or the run's
cancellation kills it, and it never holds the interpreter's lock. It does not follow symlinks,
skips hidden and ignored files as a developer's search does, and the protected paths are
excluded by glob; a match in a file that is a protected file under another name (a hard link) is
dropped before anything is returned. What was not searched or shown is always reported:
`truncated` (the match limit or the output cap was reached) and `timed_out`.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from thymos.core import Effect, Risk, ToolFailureCode, ToolSpec

from ._contract import ToolContext, ToolFailure, ToolOutcome
from ._process import run_process
from ._workspace import SKIPPED_DIRS, Workspace

GREP_MATCHES_MAX = 500
GREP_FILE_BYTES_MAX = 2 * 1024 * 1024
"""Larger files are skipped: they are data, not code."""
GREP_LINE_CHARS_MAX = 400
GREP_TIMEOUT_S = 30.0
GREP_OUTPUT_BYTES_MAX = 8 * 1024 * 1024
"""ripgrep's JSON stream read at most: far more than `GREP_MATCHES_MAX` lines need."""


def ripgrep_path() -> str | None:
    """The `rg` the `ripgrep` package installed beside this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "rg"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("rg")


class Grep:
    spec = ToolSpec(
        name="grep",
        description=(
            "Search text files under a workspace folder for a regular expression (Rust regex "
            "syntax, as ripgrep). Hidden, ignored and binary files and files over 2 MB are "
            "skipped; `glob` narrows the files searched (e.g. `*.py`)."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "minLength": 1, "maxLength": 1000},
                "path": {"type": "string", "minLength": 1, "maxLength": 4096},
                "glob": {"type": "string", "minLength": 1, "maxLength": 256},
                "max_results": {"type": "integer", "minimum": 1, "maximum": GREP_MATCHES_MAX},
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
        rg = ripgrep_path()
        if rg is None:
            raise ToolFailure(ToolFailureCode.UNAVAILABLE, "ripgrep (rg) is not installed")
        workspace = ctx.workspace
        target = workspace.confine(args.get("path", "."))
        protected = workspace.protected_files()
        try:
            info = os.stat(target)
        except OSError:
            raise ToolFailure(
                ToolFailureCode.NOT_FOUND, f"{args.get('path', '.')!r} does not exist"
            ) from None
        if (info.st_dev, info.st_ino) in protected:
            raise ToolFailure(
                ToolFailureCode.PROTECTED_PATH,
                f"{args.get('path')!r} belongs to the server and no tool may reach it",
            )
        limit = int(args.get("max_results", args.get("max_matches", 100)))
        argv = [
            rg,
            "--json",
            "--no-config",
            "--no-follow",
            "--max-filesize",
            str(GREP_FILE_BYTES_MAX),
            "--max-columns",
            str(GREP_LINE_CHARS_MAX * 4),
        ]
        if args.get("ignore_case"):
            argv.append("--ignore-case")
        if "glob" in args:
            argv += ["--glob", str(args["glob"])]
        for skipped in sorted(SKIPPED_DIRS):
            argv += ["--glob", f"!**/{skipped}/**"]
        for inside in workspace.protected:
            if workspace.root in inside.parents:
                argv += ["--glob", f"!/{workspace.relative_name(inside)}/**"]
                argv += ["--glob", f"!/{workspace.relative_name(inside)}"]
        argv += ["--regexp", str(args["pattern"]), "--", workspace.relative_name(target)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        done = await run_process(
            argv,
            cwd=workspace.root,
            env=env,
            timeout_s=GREP_TIMEOUT_S,
            output_max=GREP_OUTPUT_BYTES_MAX,
        )
        if done.exit_code == 2 and b"regex parse error" in done.stderr:
            message = done.stderr.decode("utf-8", "replace").strip()[:600]
            raise ToolFailure(
                ToolFailureCode.INVALID_PATTERN, f"the pattern does not compile: {message}"
            )
        matches, searched, cut = self._matches(done.stdout, limit, workspace, protected)
        return ToolOutcome(
            {
                "matches": matches,
                "truncated": cut or done.truncated or done.timed_out,
                "timed_out": done.timed_out,
                "files_searched": searched,
            }
        )

    @staticmethod
    def _matches(
        stream: bytes, limit: int, workspace: Workspace, protected: frozenset[tuple[int, int]]
    ) -> tuple[list[dict[str, Any]], int, bool]:
        matches: list[dict[str, Any]] = []
        searched = 0
        cut = False
        identities: dict[str, bool] = {}
        for line in stream.splitlines():
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # the last line, cut by the output cap
            kind = event.get("type")
            data = event.get("data") or {}
            if kind == "end":
                searched += 1
            if kind != "match":
                continue
            path = (data.get("path") or {}).get("text")
            text = (data.get("lines") or {}).get("text")
            if not isinstance(path, str) or not isinstance(text, str):
                continue  # a file name or line that is not UTF-8
            allowed = identities.get(path)
            if allowed is None:
                try:
                    info = os.stat(workspace.root / path, follow_symlinks=False)
                    allowed = (info.st_dev, info.st_ino) not in protected
                except OSError:
                    allowed = False
                identities[path] = allowed
            if not allowed:
                continue
            if len(matches) >= limit:
                cut = True
                continue
            matches.append(
                {
                    "path": Path(path).as_posix().removeprefix("./"),
                    "line": data.get("line_number"),
                    "text": text.rstrip("\r\n")[:GREP_LINE_CHARS_MAX],
                }
            )
        return matches, searched, cut
