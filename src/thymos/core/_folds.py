"""One way every fold of the ledger says what it does with each kind of entry.

A fold (the run summary, a run's state, replay, the world) holds a `KindTable`, registers one
handler per entry kind with `@table.on(kind, ...)`, and names the kinds it has nothing to do with
(`table.ignore(...)`). `FOLDS` lists every table, and `tests/unit/test_folds.py` holds each one
complete: a new entry kind cannot land without every fold saying what it means for it.

`apply_to_world` is the one rule by which entries change a world, shared by the live state,
replay and `world/at`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._ledger import Entry, EntryKind
from ._world import World, deltas_of

F = TypeVar("F")
R = TypeVar("R")
Handler = Callable[[F, Entry], R]


class KindTable(Generic[F, R]):
    """The handlers of one fold, by entry kind; `default` is what an ignored kind returns."""

    def __init__(self, fold: str, default: R) -> None:
        self.fold = fold
        self._default = default
        self._handlers: dict[str, Callable[[F, Entry], R]] = {}
        self._ignored: set[str] = set()
        FOLDS.append(self)

    def on(self, *kinds: EntryKind) -> Callable[[Callable[[F, Entry], R]], Callable[[F, Entry], R]]:
        """Register the decorated function as this fold's handler of `kinds`."""

        def register(handler: Callable[[F, Entry], R]) -> Callable[[F, Entry], R]:
            for kind in kinds:
                assert kind not in self._handlers, f"{self.fold} handles {kind} twice"
                self._handlers[kind] = handler
            return handler

        return register

    def ignore(self, *kinds: EntryKind) -> None:
        """This fold has nothing to do with `kinds` (said, so that silence is never an
        oversight)."""
        self._ignored.update(kinds)

    def dispatch(self, fold: F, entry: Entry) -> R:
        handler = self._handlers.get(entry.kind)
        return self._default if handler is None else handler(fold, entry)

    def missing(self) -> set[str]:
        """Entry kinds this fold says nothing about."""
        return {k.value for k in EntryKind} - set(self._handlers) - self._ignored


FOLDS: list[KindTable[Any, Any]] = []
"""Every fold's table, for the completeness test."""


WORLD: KindTable[World, None] = KindTable("world", None)
"""How entries change a world: only a commit does, by its deltas."""


@WORLD.on(EntryKind.COMMIT)
def _commit(world: World, entry: Entry) -> None:
    world.apply_all(deltas_of(entry.body))


WORLD.ignore(*(kind for kind in EntryKind if kind != EntryKind.COMMIT))


def apply_to_world(world: World, entry: Entry) -> None:
    """Fold one entry into a world (raises `DeltaConflict` or `ValueError` on bad deltas)."""
    WORLD.dispatch(world, entry)
