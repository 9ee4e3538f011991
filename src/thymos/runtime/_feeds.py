"""In-process fan-out to observers (SSE streams, the console) without polling.

A `Feed` is an append-only window of numbered items. Publishing is O(1) whatever the number of
followers: it appends and wakes everyone waiting on one shared event. A follower that falls out
of the window gets `FellBehind` and catches up from durable storage (for ledger entries) or just
continues from what the window still holds (for cognition events, which are not kept).
A `Cell` holds only the latest value (the execution snapshot) with a version.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

FEED_WINDOW = 4096
"""Items a feed keeps for followers that are a little behind; older ones come from storage."""


class FellBehind(Exception):
    """The follower's next item has already left the feed's window."""


class Feed(Generic[T]):
    def __init__(self, *, first_id: int = 0, window: int = FEED_WINDOW) -> None:
        self._items: deque[tuple[int, T]] = deque(maxlen=window)
        self._next_id = first_id
        self._changed = asyncio.Event()
        self._waiters = 0
        self.closed = False

    @property
    def next_id(self) -> int:
        return self._next_id

    def publish(self, item: T, item_id: int | None = None) -> int:
        ident = self._next_id if item_id is None else item_id
        assert ident >= self._next_id, "feed ids only grow"
        self._items.append((ident, item))
        self._next_id = ident + 1
        self._wake()
        return ident

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        # Only an event someone waits on needs setting (and replacing); publishing to a feed
        # nobody follows costs nothing.
        if self._waiters:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def available_after(self, after_id: int, *, strict: bool) -> list[tuple[int, T]]:
        """Items with id > after_id. With `strict`, raise `FellBehind` if some were dropped."""
        if not self._items or self._items[-1][0] <= after_id:
            return []
        first_id = self._items[0][0]
        if strict and first_id > after_id + 1:
            raise FellBehind
        if first_id > after_id:
            return list(self._items)
        return [item for item in self._items if item[0] > after_id]

    async def follow(
        self, after_id: int, *, timeout_s: float, strict: bool
    ) -> AsyncIterator[list[tuple[int, T]]]:
        """Batches of new items; an empty batch means `timeout_s` passed with nothing new."""
        while True:
            batch = self.available_after(after_id, strict=strict)
            if batch:
                after_id = batch[-1][0]
                yield batch
                continue
            if self.closed:
                return
            changed = self._changed
            self._waiters += 1
            try:
                await asyncio.wait_for(changed.wait(), timeout_s)
            except TimeoutError:
                yield []
            finally:
                self._waiters -= 1


class Cell(Generic[T]):
    """A value rebuilt lazily from its source, with a version that grows on every change.

    `touch` is O(1) (a run calls it on every entry and phase change); the value is rebuilt only
    when someone reads it after a change, so an unwatched run pays nothing for its snapshots."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: T | None = None
        self._built_version = -1
        self.version = 0
        self._changed = asyncio.Event()
        self._waiters = 0
        self.closed = False

    @property
    def value(self) -> T:
        if self._built_version != self.version or self._value is None:
            self._value = self._build()
            self._built_version = self.version
        return self._value

    def touch(self) -> None:
        self.version += 1
        if self._waiters:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def close(self) -> None:
        self.closed = True
        self.touch()

    async def wait_change(self, version: int, timeout_s: float) -> bool:
        """True once the version differs from `version`; False on timeout."""
        if self.version != version or self.closed:
            return True
        changed = self._changed
        self._waiters += 1
        try:
            await asyncio.wait_for(changed.wait(), timeout_s)
        except TimeoutError:
            return False
        finally:
            self._waiters -= 1
        return True
