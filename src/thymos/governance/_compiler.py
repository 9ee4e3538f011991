"""The compiler: a pure function from an intent and the run's authority to a decision.

Stages run in a fixed order and the first that refuses decides; each refusal has a typed reason
that is recorded in the ledger and shown to cognition on its next turn. Approving a suspended
proposal (a later issue) re-runs every stage at execution time, so nothing is rescued by an old
decision.

Stages today: tool known, in the run's scopes, tool-call budget, arguments valid against the
tool's JSON Schema. Writ stages (revoked, validity window, effect ceiling) and policy slot in
between scope and arguments without changing callers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

from thymos.core import Budget, Intent, ToolSpec, Usage

from ._schema import Acceptor, fast_acceptor

COMPILER_VERSION = "thymos-compiler/1"
"""Recorded with every decision; replay can require a version (`require_compiler`)."""

ARG_ERRORS_MAX = 5
"""Cognition gets the first few schema errors; more would drown the useful one."""


class RejectionReason(StrEnum):
    UNKNOWN_TOOL = "unknown_tool"
    OUT_OF_SCOPE = "out_of_scope"
    BUDGET_EXHAUSTED = "budget_exhausted"
    INVALID_ARGUMENTS = "invalid_arguments"


@dataclass(frozen=True, slots=True)
class Staged:
    """The intent may execute."""

    tool: ToolSpec


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectionReason
    message: str
    details: Mapping[str, Any]

    def as_body(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "message": self.message, "details": dict(self.details)}


Decision = Staged | Rejected


@dataclass(frozen=True, slots=True)
class Authority:
    """What a run may do: the tools it is scoped to and its budget."""

    tools: frozenset[str]
    budget: Budget


class ToolCatalog:
    """The registered tool specs with their compiled argument validators (built once)."""

    def __init__(self, specs: Mapping[str, ToolSpec]) -> None:
        self._specs = dict(specs)
        self._validators: dict[str, Validator] = {}
        self._acceptors: dict[str, Acceptor | None] = {}
        for name, spec in self._specs.items():
            cls = jsonschema.validators.validator_for(spec.input_schema)
            cls.check_schema(dict(spec.input_schema))
            self._validators[name] = cls(spec.input_schema)
            self._acceptors[name] = fast_acceptor(spec.input_schema)

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def argument_errors(self, name: str, args: Any) -> list[dict[str, str]]:
        """Schema errors of `args` for tool `name` (empty when valid), most specific first."""
        acceptor = self._acceptors[name]
        if acceptor is not None and acceptor(args):
            return []
        errors = sorted(self._validators[name].iter_errors(args), key=lambda e: list(e.path))
        return [
            {"path": "/" + "/".join(str(p) for p in error.path), "message": error.message}
            for error in errors[:ARG_ERRORS_MAX]
        ]


def compile_intent(
    intent: Intent, *, catalog: ToolCatalog, authority: Authority, usage: Usage
) -> Decision:
    """Decide one intent. Pure: the same inputs always give the same decision."""
    spec = catalog.get(intent.tool)
    if spec is None:
        return Rejected(
            RejectionReason.UNKNOWN_TOOL,
            f"there is no tool named {intent.tool!r}",
            {"tool": intent.tool},
        )
    if intent.tool not in authority.tools:
        return Rejected(
            RejectionReason.OUT_OF_SCOPE,
            f"tool {intent.tool!r} is not in this run's scopes",
            {"tool": intent.tool, "scopes": sorted(authority.tools)},
        )
    limit = authority.budget.tool_calls
    if limit is not None and usage.tool_calls >= limit:
        return Rejected(
            RejectionReason.BUDGET_EXHAUSTED,
            f"the run's tool-call budget of {limit} is spent",
            {"budget": "tool_calls", "limit": limit, "used": usage.tool_calls},
        )
    shown = catalog.argument_errors(intent.tool, intent.args)
    if shown:
        return Rejected(
            RejectionReason.INVALID_ARGUMENTS,
            f"arguments for {intent.tool!r} do not match its schema: {shown[0]['message']}",
            {"errors": shown},
        )
    return Staged(spec)
