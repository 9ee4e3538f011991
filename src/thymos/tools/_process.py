"""Child processes for tools: bounded in time and output, killed as a whole process group.

A child runs in a session of its own (`start_new_session`), so a timeout, an output cap or the
run's cancellation kills it and everything it started (`killpg`), and the caller never waits on
a grandchild that kept a pipe open. Output beyond the cap is not read: the group is killed and
the result says `truncated`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

OUTPUT_BYTES_MAX = 256 * 1024
"""Per stream: what a tool's observation keeps of a child's stdout and stderr."""

KILL_WAIT_S = 5.0
"""After SIGKILL to the group, how long to wait for the child to be reaped."""


@dataclass(frozen=True, slots=True)
class ProcessResult:
    exit_code: int | None
    """None when the child was killed (timeout, output cap or cancellation)."""
    stdout: bytes
    stderr: bytes
    truncated: bool
    timed_out: bool


class _Capture:
    """What was read of one stream, kept as it arrives (so a reader cut short loses nothing)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.cut = False

    async def drain(self, stream: asyncio.StreamReader, over: asyncio.Event) -> None:
        """Read until EOF or the cap; on the cap, set `over` (the caller kills the group)."""
        while chunk := await stream.read(64 * 1024):
            if self.size + len(chunk) > self.cap:
                self.chunks.append(chunk[: self.cap - self.size])
                self.size, self.cut = self.cap, True
                over.set()
                return
            self.chunks.append(chunk)
            self.size += len(chunk)

    def bytes(self) -> bytes:
        return b"".join(self.chunks)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    output_max: int = OUTPUT_BYTES_MAX,
    stdin: bytes | None = None,
    started: Callable[[int], None] | None = None,
) -> ProcessResult:
    """Run `argv` to completion, or kill its whole group on timeout, on an output cap, or when
    the awaiting task is cancelled (the cancellation then propagates). `started` is told the
    child's pid (its process group's id) as soon as it exists."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None
    if started is not None:
        started(process.pid)
    over = asyncio.Event()
    if stdin is not None and process.stdin is not None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(stdin)
            await process.stdin.drain()
        process.stdin.close()
    stdout, stderr = _Capture(output_max), _Capture(output_max)
    readers = {
        asyncio.ensure_future(stdout.drain(process.stdout, over)),
        asyncio.ensure_future(stderr.drain(process.stderr, over)),
    }
    waited = asyncio.ensure_future(process.wait())
    capped = asyncio.ensure_future(over.wait())
    timed_out = False
    try:
        done, _ = await asyncio.wait(
            {waited, capped}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        timed_out = not done
        # Whatever happened, nothing of the group outlives the call (a grandchild that kept a
        # pipe open included).
        _kill_group(process.pid)
        await asyncio.wait({waited}, timeout=KILL_WAIT_S)
        await asyncio.wait(readers, timeout=KILL_WAIT_S)
    except BaseException:
        # Cancelled (the run was stopped): the group dies now, and the child is reaped before
        # the cancellation goes on, so nothing of it is left when the caller sees it.
        _kill_group(process.pid)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(waited), KILL_WAIT_S)
        raise
    finally:
        for task in (*readers, waited, capped):
            task.cancel()
        # The pipes a reader stopped reading (at the cap, or cancelled) are closed now, not when
        # the garbage collector finds them.
        transport = getattr(process, "_transport", None)
        if transport is not None:
            transport.close()
    killed = timed_out or over.is_set() or process.returncode is None
    return ProcessResult(
        None if killed else process.returncode,
        stdout.bytes(),
        stderr.bytes(),
        stdout.cut or stderr.cut,
        timed_out,
    )
