"""A run's trajectory: the one writer of its ledger (invariant 8).

`append` seals entries with consecutive seqs and parent links, folds them into the run's state,
writes them with the updated run row (and a world checkpoint when one is due) in one atomic
append, then publishes them to observers. Only the run's actor holds a `Trajectory`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from thymos.core import Entry, EntryKind, rfc3339_from_us, seal
from thymos.storage import Checkpoint, LedgerStore, RunUpdate

from ._clock import Clock
from ._feeds import Feed
from ._state import RunState


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
    ) -> None:
        self.run_id = run_id
        self.state = state
        self._store = store
        self._clock = clock
        self._entries = entries
        self._on_change = on_change

    @property
    def head_seq(self) -> int:
        return self.state.summary.head_seq

    async def append(self, items: Sequence[tuple[EntryKind, Mapping[str, Any]]]) -> list[Entry]:
        """Seal, fold, write atomically, publish. Returns the sealed entries."""
        time = rfc3339_from_us(self._clock.now_us())
        summary = self.state.summary
        seq, parent = summary.head_seq + 1, summary.head_id
        sealed: list[Entry] = []
        for kind, body in items:
            entry = seal(
                run_id=self.run_id, seq=seq, parent=parent, kind=kind, time=time, body=body
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
        update = RunUpdate(self.state.summary.status.value, time, self.state.summary.as_dict())
        write = asyncio.ensure_future(self._store.append(self.run_id, sealed, update, checkpoint))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # Cancellation must not leave our head out of step with storage: let the write finish
            # (it is already queued), then re-raise.
            await write
            self._publish(sealed)
            raise
        self._publish(sealed)
        return sealed

    def _publish(self, sealed: list[Entry]) -> None:
        for entry in sealed:
            self._entries.publish(entry, entry.seq)
        self._on_change()
