"""How an observer follows a run: what is durable first, then what is live, with no gap and no
duplicate. The HTTP layer only formats what these yield as Server-Sent Events.

Each follower yields `KEEPALIVE` when nothing happened for `keepalive_s` (the stream sends a
comment then), and ends once its run has ended and everything was yielded, or when the server
stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from thymos.cognition import CognitionEvent
from thymos.core import CorruptEntry, Entry, RunStatus, parse_envelope

from ._feeds import FellBehind

if TYPE_CHECKING:
    from ._service import Runtime

PAGE_ROWS = 500
"""Stored entries read per query while a follower catches up."""


class KeepAlive:
    """Nothing happened for the keep-alive interval."""


KEEPALIVE: Final = KeepAlive()


@dataclass(frozen=True, slots=True)
class Damaged:
    """A stored entry that does not parse: the stream reports it and ends."""

    seq: int
    message: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    ident: str
    """`<head seq>.<version>` while the run is active, `<head seq>.final` once it has ended."""
    session: dict[str, Any]


class Streams:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def entries(
        self, run_id: str, last: int, keepalive_s: float
    ) -> AsyncIterator[Entry | Damaged | KeepAlive]:
        """The run's entries after seq `last`: stored ones first (a reconnect or a late
        subscriber catches up from storage), then live ones from the run's feed. A follower
        that falls out of the feed's window reads storage again."""
        runtime = self._runtime
        cluster = runtime.cluster
        while True:
            active = runtime.active(run_id)
            with cluster.watch(run_id) as appended:
                # Watched before reading: an append stored after the read is not missed.
                while True:
                    rows = await runtime.store.read_rows(run_id, after_seq=last, limit=PAGE_ROWS)
                    for row in rows:
                        try:
                            entry = parse_envelope(row.raw, run_id=run_id, seq=row.seq)
                        except CorruptEntry as exc:
                            yield Damaged(row.seq, exc.message)
                            return
                        yield entry
                        last = entry.seq
                    if len(rows) < PAGE_ROWS:
                        break
                if runtime.closed.is_set():
                    return
                if active is None:
                    if await self._ended(run_id, last) or not await self._followable(run_id):
                        return
                    # Another node drives the run, or it waits parked: its appends (a vote
                    # wakes it) are announced by notices.
                    if not await _changed(appended, keepalive_s):
                        yield KEEPALIVE
                    continue
            try:
                async for batch in active.entries.follow(last, timeout_s=keepalive_s, strict=True):
                    if not batch:
                        if runtime.closed.is_set():
                            return
                        yield KEEPALIVE
                        continue
                    for seq, live in batch:
                        yield live
                        last = seq
            except FellBehind:
                continue

    async def _followable(self, run_id: str) -> bool:
        """Whether a run with no actor here may still change: on shared storage any run
        (another node may drive it), else one parked waiting for votes."""
        if self._runtime.cluster.shared:
            return True
        record = await self._runtime.store.get_run(run_id)
        return record is not None and record.status == RunStatus.WAITING_APPROVAL.value

    async def _ended(self, run_id: str, last: int) -> bool:
        """True when the run (driven by another node, or by none) has ended and its last entry
        is at or before `last`. Its row's status changes with its end, in one transaction."""
        record = await self._runtime.store.get_run(run_id)
        if record is None or not RunStatus(record.status).terminal:
            return False
        head = int(record.summary.get("head_seq", -1))
        return last >= head

    async def snapshots(
        self, run_id: str, tenant: str | None, last_id: str | None, keepalive_s: float
    ) -> AsyncIterator[Snapshot | KeepAlive]:
        """The execution session each time it changes (a client that saw `last_id` gets only
        what is newer), ending with the run's final session."""
        runtime = self._runtime
        while True:
            active = runtime.active(run_id)
            if active is None:
                with runtime.cluster.watch(run_id) as appended:
                    session = await runtime.execution(run_id, tenant)
                    ended = session["status"] in ("completed", "failed", "cancelled")
                    followable = runtime.cluster.shared or session["status"] == "waiting_approval"
                    if ended or not followable or runtime.closed.is_set():
                        ident = f"{session['head_seq']}.final"
                        if ident != last_id:
                            yield Snapshot(ident, session)
                        return
                    # Another node drives the run: a new session on each of its appends.
                    ident = f"{session['head_seq']}.0"
                    if ident != last_id:
                        yield Snapshot(ident, session)
                        last_id = ident
                    if not await _changed(appended, keepalive_s):
                        yield KEEPALIVE
                continue
            cell = active.snapshot
            version = cell.version
            session = cell.value
            ident = f"{session['head_seq']}.{version}"
            if ident != last_id:
                yield Snapshot(ident, session)
                last_id = ident
                if session["status"] in ("completed", "failed", "cancelled"):
                    return
            if cell.closed:
                if runtime.active(run_id) is active:
                    return  # closed while still active: the server is stopping
                continue  # the run just ended: its final session comes next
            if not await cell.wait_change(version, keepalive_s):
                if runtime.closed.is_set():
                    return
                yield KEEPALIVE

    async def cognition(
        self, run_id: str, last: int, keepalive_s: float
    ) -> AsyncIterator[tuple[int, CognitionEvent] | KeepAlive]:
        """The run's raw cognition events after `last` (events of a finished run are not
        kept: a follower of one ends at once)."""
        runtime = self._runtime
        active = runtime.active(run_id)
        if active is None:
            return
        async for batch in active.cognition.follow(last, timeout_s=keepalive_s, strict=False):
            if not batch:
                if runtime.closed.is_set():
                    return
                yield KEEPALIVE
                continue
            for item in batch:
                yield item


async def _changed(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `event` up to `timeout_s`: False when the time ran out."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True
