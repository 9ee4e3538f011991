"""The vocabulary of a run: statuses, effects, intents, usage and budgets, tool specifications."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    """One enum, the same on the run record, the execution session and every stream."""

    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)

    @property
    def resumable(self) -> bool:
        """A run that failed (an error, `max_steps`, a budget, an interruption) or was
        cancelled may be resumed; a completed run is final."""
        return self in (RunStatus.FAILED, RunStatus.CANCELLED)


class TerminatedBy(StrEnum):
    """Why a run stopped."""

    FINAL_ANSWER = "final_answer"
    MAX_STEPS = "max_steps"
    BUDGET_EXHAUSTED = "budget_exhausted"
    WRIT_EXPIRED = "writ_expired"
    CANCELLED = "cancelled"
    ERROR = "error"
    INTERRUPTED = "interrupted"

    @property
    def status(self) -> RunStatus:
        if self is TerminatedBy.FINAL_ANSWER:
            return RunStatus.COMPLETED
        if self is TerminatedBy.CANCELLED:
            return RunStatus.CANCELLED
        return RunStatus.FAILED


class Effect(StrEnum):
    """How far a tool's effect reaches, in increasing order."""

    READ = "read"
    WRITE = "write"
    EXTERNAL = "external"
    IRREVERSIBLE = "irreversible"

    @property
    def rank(self) -> int:
        return _EFFECT_ORDER.index(self)


_EFFECT_ORDER = [Effect.READ, Effect.WRITE, Effect.EXTERNAL, Effect.IRREVERSIBLE]


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class ToolSource(StrEnum):
    BUILTIN = "builtin"
    MANIFEST = "manifest"
    MCP = "mcp"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """The one contract every capability presents, whatever its source."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    effect: Effect
    risk: Risk
    idempotent: bool
    compensable: bool
    source: ToolSource = ToolSource.BUILTIN

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source.value,
            "effect": self.effect.value,
            "risk": self.risk.value,
            "idempotent": self.idempotent,
            "compensable": self.compensable,
            "input_schema": self.input_schema,
        }


def match_scope(names: Iterable[str], scope: str) -> list[str]:
    """The tool names a scope covers: the exact name, else every name the glob (`fs_*`)
    matches, sorted. The one rule for run scopes (the registry) and delegated scopes (the
    compiler), so a scope means the same wherever it is read."""
    pool = list(names)
    if scope in pool:
        return [scope]
    return sorted(name for name in pool if fnmatch.fnmatchcase(name, scope))


@dataclass(frozen=True, slots=True)
class Intent:
    """What cognition proposes: one tool call with its arguments. It has no power by itself."""

    tool: str
    args: Mapping[str, Any]
    call_id: str
    args_error: str | None = None
    """Why the proposed arguments could not be taken (not a JSON object, no canonical form):
    then `args` is empty and the call is rejected `invalid_arguments`."""

    @staticmethod
    def from_body(body: Mapping[str, Any], call_id: str) -> Intent:
        """The intent an `intent` entry recorded (`call_id` when the body has none)."""
        error = body.get("args_error")
        return Intent(
            str(body.get("tool")),
            body.get("args", {}),
            str(body.get("call_id", call_id)),
            str(error) if error is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Usage:
    """What a run has spent so far."""

    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    usd_millicents: int = 0

    def plus(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.tool_calls + other.tool_calls,
            self.usd_millicents + other.usd_millicents,
        )

    def with_tool_call(self) -> Usage:
        return Usage(
            self.input_tokens, self.output_tokens, self.tool_calls + 1, self.usd_millicents
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tool_calls": self.tool_calls,
            "usd_millicents": self.usd_millicents,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Usage:
        """The usage `as_dict` wrote (a missing count is 0)."""
        return Usage(
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
            int(data.get("tool_calls", 0)),
            int(data.get("usd_millicents", 0)),
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """Ceilings on a run's spending; `None` means no ceiling of that kind."""

    tokens: int | None = None
    tool_calls: int | None = None
    usd_millicents: int | None = None
    wall_clock_ms: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "tokens": self.tokens,
            "tool_calls": self.tool_calls,
            "usd_millicents": self.usd_millicents,
            "wall_clock_ms": self.wall_clock_ms,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Budget:
        return Budget(
            data.get("tokens"),
            data.get("tool_calls"),
            data.get("usd_millicents"),
            data.get("wall_clock_ms"),
        )


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything a run was started with; recorded in full in its `run_started` entry."""

    task: str
    max_steps: int
    tool_scopes: tuple[str, ...]
    tools: tuple[str, ...]
    provider: str
    model: str | None
    script: tuple[Mapping[str, Any], ...] | None
    budget: Budget
    tenant: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    base_url: str | None = None
    stream: bool = True
    """Whether the model's turns are streamed (`cognition.stream`)."""
    context_tokens: int | None = None
    """The model's context window, when the run names it (`cognition.context_tokens`)."""

    def as_body(self) -> dict[str, Any]:
        cognition: dict[str, Any] = {"provider": self.provider, "model": self.model}
        if self.script is not None:
            cognition["script"] = list(self.script)
        if self.base_url is not None:
            cognition["base_url"] = self.base_url
        if not self.stream:
            cognition["stream"] = False
        if self.context_tokens is not None:
            cognition["context_tokens"] = self.context_tokens
        return {
            "task": self.task,
            "max_steps": self.max_steps,
            "tool_scopes": list(self.tool_scopes),
            "tools": list(self.tools),
            "cognition": cognition,
            "budget": self.budget.as_dict(),
            "tenant": self.tenant,
            **self.extra,
        }

    @staticmethod
    def from_body(body: Mapping[str, Any]) -> RunSpec:
        cognition = body["cognition"]
        script = cognition.get("script")
        known = {"task", "max_steps", "tool_scopes", "tools", "cognition", "budget", "tenant"}
        return RunSpec(
            task=body["task"],
            max_steps=body["max_steps"],
            tool_scopes=tuple(body["tool_scopes"]),
            tools=tuple(body["tools"]),
            provider=cognition["provider"],
            model=cognition.get("model"),
            script=tuple(script) if script is not None else None,
            budget=Budget.from_dict(body.get("budget") or {}),
            tenant=body["tenant"],
            extra={k: v for k, v in body.items() if k not in known},
            base_url=cognition.get("base_url"),
            stream=cognition.get("stream", True) is not False,
            context_tokens=cognition.get("context_tokens"),
        )
