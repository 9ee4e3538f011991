"""Confinement of file tools to the run's workspace, minus the server's own secrets.

A `Workspace` is the folder file tools may reach and the protected paths inside or outside it
that no tool may ever reach: the data directory (the ledger of every tenant and the generated
root key), a root key file, the policy directory. Three checks stand between a tool and a file:

- by name: a path is resolved (symlinks followed) and must stay inside the workspace and outside
  every protected path, else it is refused before anything is opened;
- when walking: protected folders and files are never entered or listed, whatever their names;
- by identity: a file is opened without following a final symlink and without blocking, and the
  opened file must be a regular file, none of the protected files (by device and inode), and
  (where Linux names it under /proc) really inside the workspace, so a hard link, a symlink or a
  folder swapped in after the name check, or a FIFO, cannot reach a secret or hang the tool.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from thymos.core import ToolFailureCode

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

PROTECTED_ENTRIES_MAX = 10_000
"""How many files of the protected folders are identified (by inode) per tool call. The data and
policy folders hold a handful; past this the name checks alone apply."""


@dataclass(frozen=True, slots=True)
class Workspace:
    """The folder file tools may reach (`root`, resolved) and the protected paths (resolved) no
    tool may reach, wherever they lie."""

    root: Path
    protected: tuple[Path, ...] = field(default=())

    @classmethod
    def of(cls, root: Path, protected: Iterable[Path] = ()) -> Workspace:
        return cls(root.resolve(), tuple(sorted({p.resolve() for p in protected})))

    # -- names -------------------------------------------------------------------------------

    def is_protected(self, path: Path) -> bool:
        """True when `path` (resolved) is a protected path or lies inside one."""
        return any(path == p or p in path.parents for p in self.protected)

    def confine(self, relative: str) -> Path:
        """The real path of `relative` inside the workspace, or a `ToolFailure`:
        `outside_workspace` for an escape, `protected_path` for the server's own files."""
        if "\x00" in relative:
            raise ToolFailure(ToolFailureCode.INVALID_PATH, "paths cannot contain NUL bytes")
        candidate = Path(relative)
        if candidate.is_absolute():
            raise ToolFailure(
                ToolFailureCode.OUTSIDE_WORKSPACE, "paths are relative to the workspace"
            )
        resolved = (self.root / candidate).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ToolFailure(
                ToolFailureCode.OUTSIDE_WORKSPACE, f"{relative!r} is outside the workspace"
            )
        if self.is_protected(resolved):
            raise ToolFailure(
                ToolFailureCode.PROTECTED_PATH,
                f"{relative!r} belongs to the server and no tool may reach it",
            )
        return resolved

    def relative_name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def walk(
        self, start: Path, protected_files: frozenset[tuple[int, int]]
    ) -> Iterator[tuple[Path, os.stat_result]]:
        """The regular files under `start` (a confined folder) with their status, in a stable
        order, never through a symlink, into a skipped folder, into or onto a protected path, or
        onto a protected file under another name (a hard link)."""
        protected = {str(p) for p in self.protected}
        for folder, dirs, names in os.walk(start):
            dirs[:] = sorted(
                d
                for d in dirs
                if d not in SKIPPED_DIRS and os.path.join(folder, d) not in protected
            )
            for name in sorted(names):
                full = os.path.join(folder, name)
                if full in protected:
                    continue
                try:
                    info = os.lstat(full)
                except OSError:
                    continue  # removed while walking
                if not stat.S_ISREG(info.st_mode):
                    continue  # symlinks, FIFOs, devices, sockets
                if (info.st_dev, info.st_ino) in protected_files:
                    continue
                yield Path(full), info

    # -- identity ----------------------------------------------------------------------------

    def protected_files(self) -> frozenset[tuple[int, int]]:
        """(device, inode) of every protected file, read now (files in the data directory come
        and go). Compute once per tool call and pass to `open_file`."""
        found: set[tuple[int, int]] = set()
        for path in self.protected:
            for full in _files_under(path):
                try:
                    info = os.stat(full)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.add((info.st_dev, info.st_ino))
                if len(found) >= PROTECTED_ENTRIES_MAX:
                    return frozenset(found)
        return frozenset(found)

    def open_file(
        self, path: Path, protected_files: frozenset[tuple[int, int]], shown: str
    ) -> BinaryIO:
        """Open a confined path for reading: refused unless what was opened is a regular file
        that is none of `protected_files`. Never blocks (a FIFO is refused, not waited on)."""
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ToolFailure(ToolFailureCode.NOT_FOUND, f"{shown!r} does not exist") from None
        except OSError as exc:
            raise ToolFailure(
                ToolFailureCode.UNREADABLE, f"{shown!r} cannot be opened: {exc.strerror}"
            ) from None
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                raise ToolFailure(ToolFailureCode.NOT_A_FILE, f"{shown!r} is not a regular file")
            if (info.st_dev, info.st_ino) in protected_files:
                raise ToolFailure(
                    ToolFailureCode.PROTECTED_PATH,
                    f"{shown!r} belongs to the server and no tool may reach it",
                )
            self._check_opened(descriptor, shown)
            os.set_blocking(descriptor, True)
            return os.fdopen(descriptor, "rb")
        except BaseException:
            os.close(descriptor)
            raise

    def write_file(self, path: Path, data: bytes, shown: str) -> bool:
        """Replace (or create) the confined file `path` with `data`, atomically; True if it was
        created. The folders from the workspace down are opened one by one without following
        symlinks (created as needed), and the file is written under a temporary name in its
        folder, then renamed over it: a symlink or folder swapped in after the name check cannot
        lead the write out of the workspace, and no reader sees half a file."""
        parts = path.relative_to(self.root).parts
        if not parts:
            raise ToolFailure(ToolFailureCode.NOT_A_FILE, f"{shown!r} is the workspace itself")
        folder = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=folder)
                try:
                    inner = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder
                    )
                except OSError:
                    raise ToolFailure(
                        ToolFailureCode.OUTSIDE_WORKSPACE,
                        f"{shown!r} passes through {part!r}, which is not a folder of the workspace",
                    ) from None
                os.close(folder)
                folder = inner
            self._check_opened(folder, shown)
            name = parts[-1]
            try:
                existing = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None and not stat.S_ISREG(existing.st_mode):
                raise ToolFailure(ToolFailureCode.NOT_A_FILE, f"{shown!r} is not a regular file")
            if (
                existing is not None
                and (existing.st_dev, existing.st_ino) in self.protected_files()
            ):
                raise ToolFailure(
                    ToolFailureCode.PROTECTED_PATH,
                    f"{shown!r} belongs to the server and no tool may reach it",
                )
            temporary = f".{name}.thymos-{os.getpid()}-{id(data):x}.tmp"
            descriptor = os.open(
                temporary,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                0o644 if existing is None else stat.S_IMODE(existing.st_mode),
                dir_fd=folder,
            )
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(data)
                os.rename(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=folder)
                raise
            return existing is None
        except OSError as exc:
            raise ToolFailure(
                ToolFailureCode.UNREADABLE, f"{shown!r} cannot be written: {exc.strerror}"
            ) from None
        finally:
            os.close(folder)

    def _check_opened(self, descriptor: int, shown: str) -> None:
        """Where the opened file really is (Linux names it under /proc): inside the workspace and
        outside every protected path, so a folder on the path swapped for a symlink after the
        name check cannot lead out. Where /proc is absent the name and identity checks stand."""
        try:
            real = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        except OSError:
            return
        if real != self.root and self.root not in real.parents:
            raise ToolFailure(
                ToolFailureCode.OUTSIDE_WORKSPACE, f"{shown!r} is outside the workspace"
            )
        if self.is_protected(real):
            raise ToolFailure(
                ToolFailureCode.PROTECTED_PATH,
                f"{shown!r} belongs to the server and no tool may reach it",
            )


def _files_under(path: Path) -> Iterator[str]:
    if not path.is_dir():
        yield str(path)
        return
    seen = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            seen += 1
            if seen > PROTECTED_ENTRIES_MAX:
                return
            yield os.path.join(folder, name)
