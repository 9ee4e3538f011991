"""What callers ask of the runtime, as plain data (the HTTP layer converts from pydantic)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from thymos.core import Budget

TASK_CHARS_MAX = 20_000
"""A task is an instruction, not a document; tools read documents."""

MAX_STEPS_MAX = 1000
"""The default bound on `max_steps` (`THYMOS_MAX_STEPS_MAX`): a run longer than this is usually
a loop, not a task, and resume can extend a run that needs more. An operator who runs
long-lived agents raises it, up to `MAX_STEPS_LIMIT`."""
MAX_STEPS_LIMIT = 10_000_000
"""What any request may name at all (the operator's setting is checked when the run starts)."""

MAX_STEPS_DEFAULT = 24

SKILLS_PER_RUN_MAX = 16
"""How many skills one run may bind (each narrows it further)."""


@dataclass(frozen=True, slots=True)
class StartRun:
    task: str
    max_steps: int = MAX_STEPS_DEFAULT
    tool_scopes: Sequence[str] | None = None
    provider: str | None = None
    """None: the server's default provider."""
    model: str | None = None
    base_url: str | None = None
    stream: bool = True
    context_tokens: int | None = None
    script: Sequence[Mapping[str, Any]] | None = None
    budget: Budget = field(default_factory=Budget)
    effect_ceiling: str | None = None
    skills: Sequence[str] = ()
    """Skills to bind (`name@version` each): their instructions join the task, their scopes and
    ceilings narrow the run's writ."""
