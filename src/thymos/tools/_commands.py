"""`shell` and `test_run`: commands in the workspace, always inside the sandbox.

Both observe `{exit_code, stdout, stderr, truncated, timed_out}` (`exit_code` is null when the
command was killed: timeout or output cap). `shell` (effect `external`) may write the workspace
and use the network; `test_run` (effect `write`) may write the workspace and has no network.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from thymos.core import Effect, Risk, ToolFailureCode, ToolSpec

from ._contract import ToolContext, ToolFailure, ToolOutcome
from ._process import OUTPUT_BYTES_MAX, ProcessResult

SHELL_TIMEOUT_S_DEFAULT = 60
SHELL_TIMEOUT_S_MAX = 600
TEST_RUN_TIMEOUT_S = 600
COMMAND_CHARS_MAX = 20_000


def observed(done: ProcessResult) -> dict[str, Any]:
    return {
        "exit_code": done.exit_code,
        "stdout": done.stdout.decode("utf-8", "replace"),
        "stderr": done.stderr.decode("utf-8", "replace"),
        "truncated": done.truncated,
        "timed_out": done.timed_out,
    }


class Shell:
    spec = ToolSpec(
        name="shell",
        description=(
            "Run a command with `bash -c` in the workspace, in a sandbox (the workspace is its "
            "only writable folder). Observes exit code, stdout and stderr (capped)."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "command": {"type": "string", "minLength": 1, "maxLength": COMMAND_CHARS_MAX},
                "timeout_secs": {"type": "integer", "minimum": 1, "maximum": SHELL_TIMEOUT_S_MAX},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
        effect=Effect.EXTERNAL,
        risk=Risk.HIGH,
        idempotent=False,
        compensable=False,
    )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        done = await ctx.sandbox.run(
            ["bash", "-c", str(args["command"])],
            write=True,
            network=True,
            timeout_s=float(args.get("timeout_secs", SHELL_TIMEOUT_S_DEFAULT)),
            output_max=OUTPUT_BYTES_MAX,
        )
        return ToolOutcome(observed(done))


def detect_test_command(root: Path) -> list[str] | None:
    """The workspace's test command, from what it holds: pytest for a Python project (its own
    `.venv` interpreter when it has one), `npm test`, `cargo test`, `go test ./...`, or
    `make test`."""
    python = root / ".venv" / "bin" / "python"
    if (
        any(
            (root / name).exists()
            for name in ("pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini")
        )
        or (root / "tests").is_dir()
    ):
        return [str(python) if python.exists() else "python3", "-m", "pytest", "-q"]
    package = root / "package.json"
    if package.is_file():
        try:
            scripts = json.loads(package.read_text()).get("scripts") or {}
        except (ValueError, OSError):
            scripts = {}
        if "test" in scripts:
            return ["npm", "test", "--silent"]
    if (root / "Cargo.toml").is_file():
        return ["cargo", "test"]
    if (root / "go.mod").is_file():
        return ["go", "test", "./..."]
    makefile = root / "Makefile"
    if makefile.is_file() and "\ntest:" in "\n" + makefile.read_text(errors="replace"):
        return ["make", "test"]
    return None


class TestRun:
    __test__ = False  # a tool, not a test class (for pytest's collection)

    spec = ToolSpec(
        name="test_run",
        description=(
            "Run the workspace's test command (configured, or detected: pytest, npm test, cargo "
            "test, go test, make test) with optional extra arguments, in a sandbox without "
            "network."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "args": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 1000},
                    "maxItems": 64,
                }
            },
            "additionalProperties": False,
        },
        effect=Effect.WRITE,
        risk=Risk.MEDIUM,
        idempotent=False,
        compensable=False,
    )

    def __init__(self, command: Sequence[str] | None = None) -> None:
        self.command = list(command) if command else None
        """`THYMOS_TEST_COMMAND`, split as a shell would (None: detect per call)."""

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        command = self.command or detect_test_command(ctx.workspace.root)
        if command is None:
            raise ToolFailure(
                ToolFailureCode.UNAVAILABLE,
                "no test command: set THYMOS_TEST_COMMAND, or add tests the detection knows",
            )
        argv = [*command, *(str(a) for a in args.get("args", []))]
        done = await ctx.sandbox.run(
            argv,
            write=True,
            network=False,
            timeout_s=TEST_RUN_TIMEOUT_S,
            output_max=OUTPUT_BYTES_MAX,
        )
        return ToolOutcome(
            {"command": shlex.join(argv), **observed(done), "passed": done.exit_code == 0}
        )
