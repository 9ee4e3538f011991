"""The compiler: a pure function from an intent and the run's authority to a decision, with
ordered stages whose first refusal decides."""

from __future__ import annotations

from typing import Any

import pytest

from thymos.core import Budget, Intent, Usage
from thymos.governance import (
    COMPILER_VERSION,
    Authority,
    Rejected,
    RejectionReason,
    Staged,
    ToolCatalog,
    compile_intent,
)
from thymos.governance._compiler import ARG_ERRORS_MAX
from thymos.tools import builtin_tools

CATALOG = ToolCatalog(builtin_tools().specs())
ALL_TOOLS = frozenset(CATALOG.names())


def decide(
    tool: str,
    args: dict[str, Any],
    *,
    tools: frozenset[str] = ALL_TOOLS,
    tool_calls: int | None = None,
    used: int = 0,
) -> Rejected | Staged:
    return compile_intent(
        Intent(tool, args, "call"),
        catalog=CATALOG,
        authority=Authority(tools, Budget(tool_calls=tool_calls)),
        usage=Usage(tool_calls=used),
    )


def reason_of(decision: Rejected | Staged) -> RejectionReason:
    assert isinstance(decision, Rejected), decision
    return decision.reason


def test_a_valid_in_scope_intent_is_staged_with_its_tool() -> None:
    """An intent for a known tool in scope, within budget and with valid arguments is staged."""
    decision = decide("kv_set", {"key": "a", "value": [1, 2]}, tool_calls=5, used=4)
    assert isinstance(decision, Staged)
    assert decision.tool.name == "kv_set"
    assert COMPILER_VERSION.startswith("thymos-compiler/")


def test_an_unknown_tool_is_rejected_as_unknown_tool() -> None:
    """A tool name nobody registered is rejected with reason unknown_tool, naming the tool."""
    decision = decide("rm_rf", {})
    assert reason_of(decision) is RejectionReason.UNKNOWN_TOOL
    assert isinstance(decision, Rejected)
    assert decision.details == {"tool": "rm_rf"}
    assert decision.as_body()["reason"] == "unknown_tool"


def test_a_registered_tool_outside_the_scopes_is_rejected_as_out_of_scope() -> None:
    """A registered tool the run was not given is rejected with reason out_of_scope, listing the
    run's tools."""
    decision = decide("kv_set", {"key": "a", "value": 1}, tools=frozenset({"kv_get"}))
    assert reason_of(decision) is RejectionReason.OUT_OF_SCOPE
    assert isinstance(decision, Rejected)
    assert decision.details["scopes"] == ["kv_get"]


@pytest.mark.parametrize(("limit", "used"), [(0, 0), (3, 3), (3, 7)])
def test_a_spent_tool_call_budget_is_rejected_as_budget_exhausted(limit: int, used: int) -> None:
    """Once the tool calls used reach the budget, further intents are rejected with reason
    budget_exhausted and the limit and usage in the details."""
    decision = decide("kv_get", {"key": "a"}, tool_calls=limit, used=used)
    assert reason_of(decision) is RejectionReason.BUDGET_EXHAUSTED
    assert isinstance(decision, Rejected)
    assert decision.details == {"budget": "tool_calls", "limit": limit, "used": used}


@pytest.mark.parametrize(
    "args",
    [{}, {"key": ""}, {"key": 3}, {"key": "a", "extra": 1}, {"key": "x" * 257}],
    ids=["missing", "empty", "not-a-string", "extra-property", "too-long"],
)
def test_arguments_that_break_the_schema_are_rejected_as_invalid_arguments(
    args: dict[str, Any],
) -> None:
    """Arguments that do not validate against the tool's JSON Schema are rejected with reason
    invalid_arguments and the schema errors (path and message) in the details."""
    decision = decide("kv_get", args)
    assert reason_of(decision) is RejectionReason.INVALID_ARGUMENTS
    assert isinstance(decision, Rejected)
    errors = decision.details["errors"]
    assert errors
    assert all(set(e) == {"path", "message"} for e in errors)


def test_schema_errors_are_capped_and_carry_their_paths() -> None:
    """Many schema errors are reported as a bounded list, each with its JSON pointer path."""
    decision = decide(
        "fs_read", {"path": 1, "offset": 0, "limit": 0, "a": 1, "b": 2, "c": 3, "d": 4}
    )
    assert isinstance(decision, Rejected)
    errors = decision.details["errors"]
    assert 1 <= len(errors) <= ARG_ERRORS_MAX
    assert all(e["path"].startswith("/") for e in errors)
    assert any(e["path"] == "/path" for e in errors)


@pytest.mark.parametrize(
    ("tool", "args", "tools", "limit", "expected"),
    [
        # An unknown tool is unknown even when it is "in scope" and the budget is spent.
        ("nope", {}, frozenset({"nope"}), 0, RejectionReason.UNKNOWN_TOOL),
        # Out of scope beats a spent budget and bad arguments.
        ("kv_set", {}, frozenset({"kv_get"}), 0, RejectionReason.OUT_OF_SCOPE),
        # A spent budget beats bad arguments.
        ("kv_set", {}, ALL_TOOLS, 0, RejectionReason.BUDGET_EXHAUSTED),
        ("kv_set", {}, ALL_TOOLS, None, RejectionReason.INVALID_ARGUMENTS),
    ],
    ids=["unknown-first", "scope-before-budget", "budget-before-arguments", "arguments-last"],
)
def test_stages_run_in_order_and_the_first_refusal_decides(
    tool: str,
    args: dict[str, Any],
    tools: frozenset[str],
    limit: int | None,
    expected: RejectionReason,
) -> None:
    """Stage order is fixed: tool known, in scope, budget, arguments; when several would refuse,
    the earliest stage's reason is the one recorded."""
    assert reason_of(decide(tool, args, tools=tools, tool_calls=limit)) is expected


def test_compiling_is_pure() -> None:
    """The same inputs give equal decisions every time (replay relies on it)."""
    first = decide("kv_get", {"key": 1})
    second = decide("kv_get", {"key": 1})
    assert first == second
