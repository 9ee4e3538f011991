"""The tools' own threads.

Blocking tool work (reading and writing files, walking folders) runs here, never on asyncio's
default executor: a slow or stuck tool then cannot starve replay, storage or another run's
stream of threads, and at most `TOOL_THREADS` tool calls block at once (the others wait their
turn, awaiting, which a cancelled run stops doing at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

TOOL_THREADS = 8
"""Blocking tool calls at once across all runs; each is bounded in bytes and entries read."""


class ToolPool:
    def __init__(self, threads: int = TOOL_THREADS) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="thymos-tool")

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: call(*args, **kwargs))

    def close(self) -> None:
        """Stop taking work; calls still queued are cancelled, running ones finish."""
        self._executor.shutdown(wait=False, cancel_futures=True)
