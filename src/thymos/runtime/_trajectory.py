"""A run's trajectory: the one writer of its ledger (invariant 8).

`stage` seals entries with consecutive seqs and parent links, folds them into the run's state and
submits them (with the run row when its status changed, a world checkpoint when one is due, and
the server's signature over the new head when the run reaches a terminal or waiting state or
`SIGNED_HEAD_INTERVAL` entries have passed since the last one) as one atomic append; `flush` waits until everything staged is durable; observers get entries
only once they are durable. Only the run's actor holds a `Trajectory`.

Staging without waiting is safe for effects that stay inside the world (reads, `kv_set`): if the
process dies, those entries and their effects vanish together. The actor flushes before every
cognition turn, at the end of the run, and (with a later issue) before any effect that leaves
the process (invariant 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import time as _time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from thymos.core import (
    Entry,
    EntryKind,
    HeadSigner,
    Pending,
    RunStatus,
    SignedHead,
    rfc3339_from_us,
    seal,
)
from thymos.observability import Observer
from thymos.storage import Checkpoint, LedgerStore, RunUpdate

from ._clock import Clock
from ._feeds import Feed
from ._limits import SIGNED_HEAD_INTERVAL
from ._state import RunState

ENTRY_BYTES_MAX = 1024 * 1024
"""One entry's canonical bytes at most. Tool outputs are the large part; cognition cannot use
megabytes of output anyway, and a bound keeps streams and exports responsive."""


class EntryTooLarge(ValueError):
    """An entry would be over `ENTRY_BYTES_MAX`; nothing was appended."""


class Trajectory:
    def __init__(
        self,
        *,
        run_id: str,
        store: LedgerStore,
        state: RunState,
        clock: Clock,
        entries: Feed[Entry],
        on_change: Callable[[], None],
        signer: HeadSigner | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.run_id = run_id
        self._observer = observer
        """Told how long each append took to stage and to become durable, and which entries
        became durable (the counters of recorded facts agree with the ledger that way)."""
        self._signer = signer
        self._signed_seq = state.summary.head_seq
        """The last head signed (a loaded run counts its stored head: it was signed when the run
        reached the state it was stored in, or is within an interval of the last signature)."""
        self.state = state
        self._store = store
        self._clock = clock
        self._entries = entries
        self._on_change = on_change
        self._persisted_status = state.summary.status.value
        self.persisted_usage = state.summary.usage
        """The usage in the run row as last written (readers add what the live summary has more)."""
        self._last_write: asyncio.Future[None] | None = None
        self._batch: list[Entry] = []
        """Entries staged in this turn of the event loop with nothing else to write (no run row,
        checkpoint or signed head): submitted together as one append at the end of it."""
        self._batch_settled: list[Callable[[asyncio.Future[None]], None]] = []
        """What each batched stage does once the batch is durable, in staging order."""
        self.durable_seq = state.summary.head_seq
        """The last seq known to be in storage (readers of the ledger stop there)."""
        self.durable_id = state.summary.head_id
        self.durable_pending: dict[str, Pending] = {
            key: item.copy() for key, item in state.summary.pending.items()
        }
        self.durable_status = state.summary.status.value
        """The run's status as of `durable_seq`: a run is reported finished only once its end
        is in storage, so a client that waits for the end can then read the whole ledger."""
        self._failure: BaseException | None = None

    @property
    def head_seq(self) -> int:
        return self.state.summary.head_seq

    def stage(
        self, items: Sequence[tuple[EntryKind, Mapping[str, Any]]], *, at_us: int | None = None
    ) -> list[Entry]:
        """Seal entries, fold them into the run's state and submit their append, without waiting
        for durability. Observers see them once they are durable. Returns the sealed entries.

        Sealing happens before anything changes, so `NotCanonicalizable` or `EntryTooLarge` from
        here leaves the run's state and ledger untouched. After a failed write every later one
        fails too (storage refuses a gap), and `stage` and `flush` raise the first failure.
        `at_us` is the entries' time when the caller has already read the clock for a check that
        must hold at the very time recorded (a vote within its writ's validity)."""
        if self._failure is not None:
            raise self._failure
        started = _time.perf_counter()
        time = rfc3339_from_us(self._clock.now_us() if at_us is None else at_us)
        summary = self.state.summary
        seq, parent = summary.head_seq + 1, summary.head_id
        sealed: list[Entry] = []
        for kind, body in items:
            entry = seal(
                run_id=self.run_id, seq=seq, parent=parent, kind=kind, time=time, body=body
            )
            if len(entry.raw) > ENTRY_BYTES_MAX:
                raise EntryTooLarge(
                    f"a {kind.value} entry of {len(entry.raw)} bytes is over {ENTRY_BYTES_MAX}"
                )
            sealed.append(entry)
            seq, parent = seq + 1, entry.id
        for entry in sealed:
            self.state.fold(entry)
        checkpoint = None
        if self.state.checkpoint_due():
            checkpoint = Checkpoint(
                self.run_id, self.state.summary.head_seq, self.state.world.snapshot()
            )
            self.state.last_checkpoint_seq = self.state.summary.head_seq
        # The run row is rewritten when the status changes (and so at the end), and on every
        # append while the run waits for votes (a parked run's row is all its readers see); in
        # between, readers of an active run use its live summary, and recovery refolds the ledger.
        update = None
        status = self.state.summary.status
        if (
            status.value != self._persisted_status
            or status.terminal
            or status is RunStatus.WAITING_APPROVAL
        ):
            update = RunUpdate(status.value, time, self.state.summary.as_dict())
            self._persisted_status = status.value
            self.persisted_usage = self.state.summary.usage
        head = self._sign_if_due(sealed[-1], status, time)
        status_after = status.value
        # What observers may see once this write is durable: the status and pending approvals
        # as of its last entry (copied: the live ones keep changing).
        pending_after = {key: item.copy() for key, item in self.state.summary.pending.items()}
        submitted = _time.perf_counter()

        def settled(done: asyncio.Future[None]) -> None:
            self._settled(done, sealed, status_after, pending_after, submitted)

        if update is None and checkpoint is None and head is None:
            if not self._batch:
                asyncio.get_running_loop().call_soon(self._submit_batch)
            self._batch.extend(sealed)
            self._batch_settled.append(settled)
        else:
            self._submit_batch()  # in order: what was batched goes first
            write = asyncio.ensure_future(
                self._store.append(self.run_id, sealed, update, checkpoint, head)
            )
            write.add_done_callback(settled)
            self._last_write = write
        if self._observer is not None:
            self._observer.staged(submitted - started)
        return sealed

    def _submit_batch(self) -> None:
        """Submit the batch (if any) as one append; each of its stages settles with it, in
        order."""
        if not self._batch:
            return
        entries, callbacks = self._batch, self._batch_settled
        self._batch, self._batch_settled = [], []
        write = asyncio.ensure_future(self._store.append(self.run_id, entries, None))
        for callback in callbacks:
            write.add_done_callback(callback)
        self._last_write = write

    def _sign_if_due(self, last: Entry, status: RunStatus, time: str) -> SignedHead | None:
        if self._signer is None:
            return None
        settled = status.terminal or status is RunStatus.WAITING_APPROVAL
        if not settled and last.seq - self._signed_seq < SIGNED_HEAD_INTERVAL:
            return None
        self._signed_seq = last.seq
        return self._signer.sign(self.run_id, last.seq, last.id, time)

    def _settled(
        self,
        write: asyncio.Future[None],
        sealed: list[Entry],
        status_after: str,
        pending_after: dict[str, Pending],
        submitted: float,
    ) -> None:
        if write.cancelled():
            self._failure = self._failure or RuntimeError("a ledger write was cancelled")
            return
        error = write.exception()
        if error is not None:
            self._failure = self._failure or error
            return
        if self._observer is not None:
            self._observer.durable(sealed, _time.perf_counter() - submitted)
        for entry in sealed:
            self._entries.publish(entry, entry.seq)
        self.durable_seq, self.durable_id = sealed[-1].seq, sealed[-1].id
        self.durable_status = status_after
        self.durable_pending = pending_after
        self._on_change()

    async def flush(self) -> None:
        """Wait until everything staged is durable (raises the first write failure)."""
        self._submit_batch()
        write = self._last_write
        if write is not None:
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # Cancellation must not leave our head out of step with storage: the write is
                # already queued, so let it finish, then re-raise.
                with contextlib.suppress(Exception):
                    await write
                raise
        if self._failure is not None:
            raise self._failure

    async def append(
        self, items: Sequence[tuple[EntryKind, Mapping[str, Any]]], *, at_us: int | None = None
    ) -> list[Entry]:
        """Stage entries and wait until they (and everything before them) are durable."""
        sealed = self.stage(items, at_us=at_us)
        await self.flush()
        return sealed
