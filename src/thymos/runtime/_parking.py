"""Parked runs: runs waiting for approval that hold no actor and no capacity slot.

A run that waits for votes is parked as soon as its suspension is durable: its actor ends, its
slot is freed, and on shared storage its lease is released, so what it costs while it waits is
its stored rows. A vote or a cancel wakes it (`Supervision._wake`: the run's state is folded
from its ledger, verified as it goes, and a new actor takes the vote); so does its writ's
expiry, which it must notice to refuse what it waited for (`Parking`: one task over a heap of
deadlines, whatever the number of parked runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from thymos.governance import WritRecord

from ._clock import Clock

log = logging.getLogger("thymos.runtime")

RETRY_WAKE_US = 1_000_000
"""A deadline wake that could not take a slot is tried again this much later."""


def writ_deadline_us(writ: Any) -> int | None:
    """When a run's writ (the `writ` of its first entry) expires, in microseconds since the
    epoch; None when it is not a writ record (every call of such a run is refused anyway)."""
    try:
        expires_at = WritRecord.of(writ).expires_at
    except ValueError:
        return None
    return int(expires_at.timestamp()) * 1_000_000


class Parking:
    """The deadlines of parked runs; `wake(run_id)` is called once each is due."""

    def __init__(self, clock: Clock, wake: Callable[[str], Awaitable[bool]]) -> None:
        self._clock = clock
        self._wake = wake
        """Wake a parked run; False: not now (no free slot), try again later."""
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}
        self._proposals: dict[str, int] = {}
        """Every parked run (with or without a deadline): how many proposals it waits on."""
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._proposals)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._proposals

    @property
    def proposals(self) -> int:
        """Proposals the parked runs wait on."""
        return sum(self._proposals.values())

    def park(self, run_id: str, deadline_us: int | None, proposals: int = 1) -> None:
        """The run waits (on `proposals` proposals) with no actor; wake it at `deadline_us`
        (never, when None)."""
        self._proposals[run_id] = proposals
        if deadline_us is None:
            return
        self._due[run_id] = deadline_us
        heapq.heappush(self._heap, (deadline_us, run_id))
        if self._heap[0] == (deadline_us, run_id):
            self._changed.set()

    def unpark(self, run_id: str) -> None:
        """The run has an actor again (its heap item is dropped when it comes up)."""
        self._due.pop(run_id, None)
        self._proposals.pop(run_id, None)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="thymos-parking")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            heap = self._heap
            while heap and self._due.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)  # woken or parked again since
            now = self._clock.now_us()
            if heap and heap[0][0] <= now:
                _, run_id = heapq.heappop(heap)
                del self._due[run_id]
                proposals = self._proposals.pop(run_id, 1)
                try:
                    woken = await self._wake(run_id)
                except Exception:
                    log.exception("parked run %s could not be woken at its deadline", run_id)
                    woken = True  # its next vote or cancel tries again
                if not woken:
                    self.park(run_id, self._clock.now_us() + RETRY_WAKE_US, proposals)
                continue
            timeout = None if not heap else (heap[0][0] - now) / 1_000_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
