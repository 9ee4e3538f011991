"""The one provider protocol.

A provider receives an immutable `CognitionContext` and returns a `Turn`: text, intents and usage.
It holds no reference to tools, the ledger or the world (invariant 1): the only thing it is handed
besides the context is `emit`, a sink for raw stream events (tokens, tool-use deltas) that has no
effect on the run. `mypy --strict` holds the types to that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from thymos.core import Intent, Usage


@dataclass(frozen=True, slots=True)
class ToolView:
    """What cognition may know of a tool: its name, description and input schema."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AssistantTurn:
    step: int
    text: str
    intents: tuple[Intent, ...]


@dataclass(frozen=True, slots=True)
class Observation:
    """What came of one intent: committed (with output), rejected (with reason) or failed."""

    call_id: str
    tool: str
    outcome: Literal["committed", "rejected", "failed"]
    content: Any
    approved_by: tuple[str, ...] = ()
    """For a call policy suspended: the approvers whose quorum let it run."""


HistoryItem = AssistantTurn | Observation


@dataclass(frozen=True, slots=True)
class CognitionContext:
    run_id: str
    task: str
    step: int
    max_steps: int
    turns_taken: int
    tools: tuple[ToolView, ...]
    history: tuple[HistoryItem, ...]
    omitted: int = 0
    """History items of the run left out of `history` (the oldest), to bound its size."""


@dataclass(frozen=True, slots=True)
class Turn:
    text: str = ""
    intents: tuple[Intent, ...] = ()
    final: str | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class CognitionEvent:
    """A raw stream event: `token`, `tool_use_start`, `tool_use_delta`, `tool_use_done`,
    `turn_complete` or `error`."""

    type: str
    data: Mapping[str, Any]


Emit = Callable[[CognitionEvent], None]


class CognitionFailed(Exception):
    """The provider could not produce a turn (after any retries it makes)."""

    def __init__(self, message: str, *, code: str = "provider_error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Cognition(Protocol):
    """One run's model. Providers are created per run with the run's cognition settings."""

    @property
    def live(self) -> bool:
        """True for a real model, false for the deterministic mock."""
        ...

    async def turn(self, context: CognitionContext, emit: Emit) -> Turn: ...
