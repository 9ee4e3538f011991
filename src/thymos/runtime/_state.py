"""A run's state folded from its ledger: summary, world, cognition history, undecided intents.

The live actor folds each entry it appends; recovery and resume fold the stored ledger. It is the
same fold either way, which is what makes a run's state a pure function of its ledger.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from thymos.cognition import AssistantTurn, HistoryItem, Observation
from thymos.core import (
    Entry,
    EntryKind,
    Intent,
    KindTable,
    RunSpec,
    RunSummary,
    World,
    apply_to_world,
    us_from_rfc3339,
)

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
    history_items: int = 0
    """Items ever appended to `history` (the deque keeps the latest)."""
    started: dict[str, str] = field(default_factory=dict)
    """Undecided intents whose `execution_started` is recorded (their outcome is unknown): intent
    id -> the id of its latest `execution_started` entry."""
    segment_started_us: int | None = None
    """When the run last started or resumed (while it is not ended)."""
    wall_spent_us: int = 0
    """Wall-clock time of the run's ended segments (from start or resumption to each end)."""
    turn_final: str | None = None
    """The final answer of the latest turn, if it gave one (the run ends once its intents are
    decided)."""
    delegations: dict[str, str] = field(default_factory=dict)
    """`delegate` intents whose `delegation` entry is recorded: intent id -> child run id (a
    resumed parent follows that child instead of starting another)."""

    def fold(self, entry: Entry) -> None:
        """Fold one entry (its summary first; `STATE` says what each kind does to the rest)."""
        self.summary.fold(entry)
        if entry.kind != EntryKind.INTENT and self.open_intents:
            self._attach_intents()
        STATE.dispatch(self, entry)

    def _remember(self, item: HistoryItem) -> None:
        self.history.append(item)
        self.history_items += 1

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
        seen: dict[str, Any] = {"reason": body.get("reason"), "message": body.get("message")}
        if body.get("reason") == "approval_denied":
            seen["details"] = body.get("details")  # who denied it and why
        return "rejected", seen
    return "failed", body.get("error")


STATE: KindTable[RunState, None] = KindTable("run state", None)
"""What each entry kind does to a run's state beyond its summary."""


@STATE.on(EntryKind.TURN)
def _turn(state: RunState, entry: Entry) -> None:
    body = entry.body
    final = body.get("final")
    state.turn_final = final if isinstance(final, str) else None
    state._remember(AssistantTurn(int(body.get("step", 0)), str(body.get("text", "")), ()))


@STATE.on(EntryKind.INTENT)
def _intent(state: RunState, entry: Entry) -> None:
    intent = Intent.from_body(entry.body, entry.id[:12])
    state.undecided[entry.id] = (entry.seq, intent)
    state.open_intents.append(intent)


@STATE.on(EntryKind.EXECUTION_STARTED)
def _execution_started(state: RunState, entry: Entry) -> None:
    state.started[str(entry.body.get("intent"))] = entry.id


@STATE.on(EntryKind.DELEGATION)
def _delegation(state: RunState, entry: Entry) -> None:
    state.delegations[str(entry.body.get("intent"))] = str(entry.body.get("child_run_id"))


@STATE.on(EntryKind.RUN_STARTED, EntryKind.RESUMPTION)
def _segment_started(state: RunState, entry: Entry) -> None:
    state.segment_started_us = us_from_rfc3339(entry.time)
    if entry.kind == EntryKind.RESUMPTION:
        state.spec = replace(state.spec, max_steps=int(entry.body["max_steps"]))
        state.turn_final = None


@STATE.on(EntryKind.RUN_ENDED)
def _run_ended(state: RunState, entry: Entry) -> None:
    if state.segment_started_us is not None:
        spent = us_from_rfc3339(entry.time) - state.segment_started_us
        state.wall_spent_us += max(spent, 0)
        state.segment_started_us = None


@STATE.on(EntryKind.REJECTION, EntryKind.COMMIT, EntryKind.TOOL_FAILURE)
def _decision(state: RunState, entry: Entry) -> None:
    body, kind = entry.body, entry.kind
    ref = body.get("intent")
    if isinstance(ref, str):
        state.started.pop(ref, None)
    decided = state.undecided.pop(ref, None) if isinstance(ref, str) else None
    call_id = decided[1].call_id if decided else str(ref)
    outcome, content = _observation(kind, body)
    approved_by = body.get("approved_by") if kind != EntryKind.REJECTION else None
    state._remember(
        Observation(
            call_id,
            str(body.get("tool")),
            outcome,
            content,
            tuple(str(a) for a in approved_by) if isinstance(approved_by, list) else (),
        )
    )
    apply_to_world(state.world, entry)


# Recorded in the summary (pending approvals, who cancelled) and nowhere else in the state.
STATE.ignore(EntryKind.SUSPENSION, EntryKind.APPROVAL, EntryKind.CANCELLATION)
