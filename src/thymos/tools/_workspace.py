"""Confinement of file tools to the run's workspace.

Paths are resolved (symlinks followed) and must stay inside the resolved workspace root; a path
that escapes, through `..` or a symlink, is refused before anything is opened.
"""

from __future__ import annotations

from pathlib import Path

from ._contract import ToolFailure

SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "node_modules",
        "__pycache__",
        ".thymos",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
    }
)
"""Directories no agent wants walked: version-control internals, environments and caches."""


def confine(workspace: Path, relative: str) -> Path:
    """The real path of `relative` inside `workspace`, or `ToolFailure('outside_workspace')`."""
    if "\x00" in relative:
        raise ToolFailure("invalid_path", "paths cannot contain NUL bytes")
    root = workspace.resolve()
    candidate = Path(relative)
    if candidate.is_absolute():
        raise ToolFailure("outside_workspace", "paths are relative to the workspace")
    resolved = (root / candidate).resolve()
    if resolved != root and root not in resolved.parents:
        raise ToolFailure("outside_workspace", f"{relative!r} is outside the workspace")
    return resolved


def relative_name(workspace: Path, path: Path) -> str:
    return path.relative_to(workspace.resolve()).as_posix() or "."
