"""Delegation's pure pieces: a run's bounds read from its first entry, the child's carve-out and
ceiling, the `delegate` tool's contract, the usage a commit hands back, one scope rule."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from thymos.api._models import BUDGET_MAX, TOOL_SCOPES_MAX, WALL_CLOCK_MS_MAX
from thymos.cognition import SCRIPT_ELEMENTS_MAX
from thymos.core import (
    Budget,
    Effect,
    Entry,
    EntryKind,
    RunSummary,
    ToolFailureCode,
    Usage,
    match_scope,
    seal,
)
from thymos.governance import (
    MAX_DELEGATION_DEPTH_DEFAULT,
    DelegationAsk,
    DelegationBounds,
    ToolCatalog,
    child_budget,
    child_ceiling,
)
from thymos.runtime import MAX_STEPS_MAX, TASK_CHARS_MAX
from thymos.tools import Delegate, ToolContext, ToolFailure, builtin_tools
from thymos.tools._delegate import (
    DELEGATE_BUDGET_MAX,
    DELEGATE_MAX_STEPS_MAX,
    DELEGATE_SCRIPT_ELEMENTS_MAX,
    DELEGATE_TASK_CHARS_MAX,
    DELEGATE_TOOL_SCOPES_MAX,
    DELEGATE_WALL_CLOCK_MS_MAX,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _started(**extra: Any) -> dict[str, Any]:
    return {
        "tools": ["delegate", "kv_get", "kv_set"],
        "budget": {"tokens": 100, "tool_calls": 5, "usd_millicents": None, "wall_clock_ms": 60_000},
        "effect_ceiling": "write",
        "writ": {"expires": "2026-06-01T12:01:00Z"},
        **extra,
    }


def test_a_runs_bounds_are_read_from_its_first_entry() -> None:
    """Tools, ceiling, budget and the writ's expiry come from `run_started`; a child's depth from
    its `parent` link; the bound from `max_delegation_depth`, 4 when a run recorded none."""
    top = DelegationBounds.of_run(_started())
    assert top.tools == frozenset({"delegate", "kv_get", "kv_set"})
    assert (top.effect_ceiling, top.depth, top.max_depth) == (Effect.WRITE, 0, 4)
    assert top.expires == NOW + timedelta(minutes=1)
    assert MAX_DELEGATION_DEPTH_DEFAULT == 4
    child = DelegationBounds.of_run(_started(parent={"depth": 2}, max_delegation_depth=3))
    assert (child.depth, child.max_depth) == (2, 3)
    for broken in (
        _started(tools="kv_get"),
        _started(budget={"tokens": -1}),
        _started(parent={"depth": "2"}),
        _started(max_delegation_depth=True),
    ):
        with pytest.raises(ValueError, match=r"the (run's|writ's)"):
            DelegationBounds.of_run(broken)


def test_a_child_gets_what_it_asks_and_the_rest_of_each_limit_it_leaves_open() -> None:
    """Asked dimensions are kept; dimensions the run limits and the child omits get all the run
    has left (tool calls less the delegating call, wall clock until the writ ends); dimensions
    the run does not limit stay unlimited."""
    bounds = DelegationBounds.of_run(_started())
    ask = DelegationAsk.of({"task": "t", "tool_scopes": ["kv_get"], "budget": {"tokens": 10}})
    used = Usage(input_tokens=20, output_tokens=5, tool_calls=2)
    budget = child_budget(ask, bounds, used, NOW + timedelta(seconds=15, microseconds=900))
    assert budget == Budget(tokens=10, tool_calls=2, usd_millicents=None, wall_clock_ms=45_000)
    everything = DelegationAsk.of({"task": "t", "tool_scopes": ["kv_get"]})
    assert child_budget(everything, bounds, used, NOW).tokens == 75


def test_a_childs_ceiling_is_its_tools_highest_effect_never_above_its_parents() -> None:
    """The highest effect among the child's tools, capped at the run's ceiling."""
    assert child_ceiling([Effect.READ], Effect.WRITE) is Effect.READ
    assert child_ceiling([Effect.READ, Effect.EXTERNAL], Effect.WRITE) is Effect.WRITE
    assert child_ceiling([], Effect.IRREVERSIBLE) is Effect.READ


def test_the_delegate_tool_is_a_medium_risk_write_bounded_like_post_runs() -> None:
    """`delegate` is built in, effect write, risk medium, not idempotent; its arguments are
    bounded exactly as `POST /runs` bounds a run; without the runtime's hook it fails."""
    spec = builtin_tools().specs()["delegate"]
    assert (spec.effect, spec.risk.value, spec.idempotent) == (Effect.WRITE, "medium", False)
    assert set(spec.input_schema["required"]) == {"task", "tool_scopes"}
    assert DELEGATE_TASK_CHARS_MAX == TASK_CHARS_MAX
    assert DELEGATE_MAX_STEPS_MAX == MAX_STEPS_MAX
    assert DELEGATE_TOOL_SCOPES_MAX == TOOL_SCOPES_MAX
    assert DELEGATE_BUDGET_MAX == BUDGET_MAX
    assert DELEGATE_WALL_CLOCK_MS_MAX == WALL_CLOCK_MS_MAX
    assert DELEGATE_SCRIPT_ELEMENTS_MAX == SCRIPT_ELEMENTS_MAX
    catalog = ToolCatalog(builtin_tools().specs())
    assert catalog.argument_errors("delegate", {"task": "t", "tool_scopes": ["kv_get"]}) == []
    for bad in (
        {"task": "t", "tool_scopes": []},
        {"task": "", "tool_scopes": ["kv_get"]},
        {"task": "t", "tool_scopes": [""]},
        {"task": "t", "tool_scopes": ["kv_get"], "budget": {"tool_calls": -1}},
        {"task": "t", "tool_scopes": ["kv_get"], "cognition": {"key": "x"}},
    ):
        assert catalog.argument_errors("delegate", bad), bad
    context = ToolContext("run", None, None, None, None)  # type: ignore[arg-type]
    with pytest.raises(ToolFailure) as failure:
        asyncio.run(Delegate().run({"task": "t", "tool_scopes": ["kv_get"]}, context))
    assert failure.value.code is ToolFailureCode.UNAVAILABLE


def _entry(seq: int, kind: EntryKind, body: dict[str, Any], parent: str | None) -> Entry:
    return seal(
        run_id="run", seq=seq, parent=parent, kind=kind, time="2026-06-01T12:00:00Z", body=body
    )


def test_a_delegate_commit_adds_what_the_child_spent_to_the_runs_usage() -> None:
    """The summary fold adds a commit's `delegated_usage` to the call itself; a malformed one
    adds nothing (replay names it)."""
    summary = RunSummary()
    first = _entry(0, EntryKind.RUN_STARTED, {"task": "t", "max_steps": 3}, None)
    spent = {"input_tokens": 7, "output_tokens": 3, "tool_calls": 2, "usd_millicents": 1}
    commit = _entry(1, EntryKind.COMMIT, {"tool": "delegate", "delegated_usage": spent}, first.id)
    broken = _entry(
        2, EntryKind.COMMIT, {"tool": "delegate", "delegated_usage": {"tool_calls": -5}}, commit.id
    )
    for entry in (first, commit, broken):
        summary.fold(entry)
    assert summary.usage == Usage(7, 3, 4, 1)


def test_one_scope_rule_for_runs_and_delegations() -> None:
    """The registry and the catalog cover a scope alike: an exact name, else the glob's
    matches."""
    registry = builtin_tools()
    catalog = ToolCatalog(registry.specs())
    for scope in ("kv_*", "fs_read", "*", "nothing*", "fs_?ead", "delegate"):
        assert registry.match(scope) == catalog.match(scope) == match_scope(catalog.names(), scope)
