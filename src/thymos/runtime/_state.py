"""A run's state folded from its ledger: summary, world, cognition history, undecided intents.

The live actor folds each entry it appends; recovery and resume fold the stored ledger. It is the
same fold either way, which is what makes a run's state a pure function of its ledger.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from thymos.cognition import AssistantTurn, HistoryItem, Observation
from thymos.core import Entry, EntryKind, Intent, RunSpec, RunSummary, World, deltas_of

CONTEXT_HISTORY_MAX = 256
"""Items of history handed to cognition each turn. Providers trim further to their context
window; a bound here keeps a turn's cost flat however long the run has been going."""

CHECKPOINT_INTERVAL = 1024
"""Entries between world checkpoints at least; at most max(this, world size), so snapshot cost
stays O(1) per entry amortised and `world/at` never folds more than that many entries."""


@dataclass(slots=True)
class RunState:
    spec: RunSpec
    summary: RunSummary = field(default_factory=RunSummary)
    world: World = field(default_factory=World)
    history: deque[HistoryItem] = field(default_factory=lambda: deque(maxlen=CONTEXT_HISTORY_MAX))
    undecided: dict[str, tuple[int, Intent]] = field(default_factory=dict)
    """Intents recorded but not yet rejected, committed or failed: entry id -> (seq, intent)."""
    last_checkpoint_seq: int = -1
    open_intents: list[Intent] = field(default_factory=list)
    """Intents of the latest turn not yet attached to its history item (attached in one go,
    so a turn with k intents costs O(k), not O(k^2))."""
    turn_final: str | None = None
    """The final answer of the latest turn, if it gave one (the run ends once its intents are
    decided)."""

    def fold(self, entry: Entry) -> None:
        self.summary.fold(entry)
        body = entry.body
        kind = entry.kind
        if kind != EntryKind.INTENT and self.open_intents:
            self._attach_intents()
        if kind == EntryKind.TURN:
            final = body.get("final")
            self.turn_final = final if isinstance(final, str) else None
            self.history.append(
                AssistantTurn(int(body.get("step", 0)), str(body.get("text", "")), ())
            )
        elif kind == EntryKind.INTENT:
            intent = Intent(body["tool"], body.get("args", {}), body.get("call_id", entry.id[:12]))
            self.undecided[entry.id] = (entry.seq, intent)
            self.open_intents.append(intent)
        elif kind in (EntryKind.REJECTION, EntryKind.COMMIT, EntryKind.TOOL_FAILURE):
            ref = body.get("intent")
            decided = self.undecided.pop(ref, None) if isinstance(ref, str) else None
            call_id = decided[1].call_id if decided else str(ref)
            outcome, content = _observation(kind, body)
            self.history.append(Observation(call_id, str(body.get("tool")), outcome, content))
            if kind == EntryKind.COMMIT:
                self.world.apply_all(deltas_of(body))

    def _attach_intents(self) -> None:
        last = self.history[-1] if self.history else None
        if isinstance(last, AssistantTurn):
            self.history[-1] = AssistantTurn(
                last.step, last.text, (*last.intents, *self.open_intents)
            )
        self.open_intents.clear()

    def context_history(self) -> tuple[HistoryItem, ...]:
        """The history cognition sees, with the latest turn's intents attached."""
        if self.open_intents:
            self._attach_intents()
        return tuple(self.history)

    def checkpoint_due(self) -> bool:
        since = self.summary.head_seq - self.last_checkpoint_seq
        return since >= max(CHECKPOINT_INTERVAL, len(self.world))

    @staticmethod
    def from_entries(spec: RunSpec, entries: Iterable[Entry]) -> RunState:
        state = RunState(spec)
        for entry in entries:
            state.fold(entry)
        return state


def _observation(kind: str, body: dict[str, Any] | Any) -> tuple[Any, Any]:
    if kind == EntryKind.COMMIT:
        return "committed", body.get("output")
    if kind == EntryKind.REJECTION:
        return "rejected", {"reason": body.get("reason"), "message": body.get("message")}
    return "failed", body.get("error")
