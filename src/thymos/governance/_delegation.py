"""Delegation's authority: what a run may hand on to a child run, and the one check of it.

A run that calls `delegate` asks for a child run with some tool scopes and budgets. The child's
writ is attenuated from the run's, a strict narrowing by construction; but a delegation that
asks for more than the run has is refused before anything runs, by the compiler, so the refusal
is a decision with its reason in the run's ledger, and replay re-checks it (invariant 6):

- arguments: the task is not blank (`invalid_arguments`);
- depth: the child's depth (the run's + 1) is within the bound the run recorded at its start
  (`delegation_too_deep`);
- tools: every scope the child asks covers at least one registered tool (else
  `invalid_arguments`) and only tools the run has (`delegation_exceeds_authority`);
- budget: for each dimension the run limits, what the child asks is at most what the run has
  left: its limit minus its usage so far, and for tool calls minus the delegating call itself;
  a wall-clock budget ends before the run's writ does (`delegation_exceeds_authority`).

A child's effect ceiling is the highest effect of its tools capped at the run's ceiling: never
higher, so there is nothing to refuse. Pure like the compiler: time and usage are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from thymos.core import Budget, Effect, Usage

DELEGATE_TOOL = "delegate"
"""The built-in tool whose calls this stage checks."""

MAX_DELEGATION_DEPTH_DEFAULT = 4
"""`THYMOS_MAX_DELEGATION_DEPTH` unless set; also the bound of a run that did not record one."""

MAX_DELEGATION_DEPTH_LIMIT = 16
"""The most the setting may say: every level holds an active-run slot while its child runs and
adds a block to the child's writ, which every call of the child then authorizes."""

REFUSE_TOO_DEEP = "delegation_too_deep"
REFUSE_EXCEEDS = "delegation_exceeds_authority"
REFUSE_ARGUMENTS = "invalid_arguments"

BUDGET_DIMENSIONS = ("tokens", "tool_calls", "usd_millicents", "wall_clock_ms")


@dataclass(frozen=True, slots=True)
class DelegationBounds:
    """What a run may hand on: its tools, effect ceiling, budget, the end of its writ's
    validity, its own depth and the bound on depth. Read from its `run_started` body, by the
    live runtime and by replay alike."""

    tools: frozenset[str]
    effect_ceiling: Effect
    budget: Budget
    expires: datetime | None
    depth: int = 0
    max_depth: int = MAX_DELEGATION_DEPTH_DEFAULT

    @staticmethod
    def of_run(body: Mapping[str, Any]) -> DelegationBounds:
        """The bounds a `run_started` body records; ValueError when it is malformed."""
        tools = body.get("tools")
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise ValueError("the run's tools are not a list of names")
        budget = body.get("budget") or {}
        if not isinstance(budget, dict) or not all(
            budget.get(name) is None or _count(budget.get(name)) for name in BUDGET_DIMENSIONS
        ):
            raise ValueError("the run's budget is not four optional counts")
        expires_text = (body.get("writ") or {}).get("expires")
        expires = None
        if expires_text is not None:
            if not isinstance(expires_text, str):
                raise ValueError("the writ's expiry is not a time")
            expires = datetime.fromisoformat(expires_text.replace("Z", "+00:00"))
        parent = body.get("parent") or {}
        depth = parent.get("depth", 0) if isinstance(parent, dict) else None
        max_depth = body.get("max_delegation_depth", MAX_DELEGATION_DEPTH_DEFAULT)
        if not isinstance(depth, int) or not _count(depth) or not _count(max_depth):
            raise ValueError("the run's delegation depth or its bound is not a count")
        return DelegationBounds(
            tools=frozenset(tools),
            effect_ceiling=Effect(body.get("effect_ceiling", Effect.IRREVERSIBLE.value)),
            budget=Budget.from_dict(budget),
            expires=expires,
            depth=depth,
            max_depth=max_depth,
        )


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


@dataclass(frozen=True, slots=True)
class DelegationAsk:
    """A `delegate` call's arguments (already valid against the tool's schema)."""

    task: str
    tool_scopes: tuple[str, ...]
    budget: Budget
    max_steps: int | None
    cognition: Mapping[str, Any]

    @staticmethod
    def of(args: Mapping[str, Any]) -> DelegationAsk:
        return DelegationAsk(
            task=str(args["task"]),
            tool_scopes=tuple(str(s) for s in args["tool_scopes"]),
            budget=Budget.from_dict(args.get("budget") or {}),
            max_steps=args.get("max_steps"),
            cognition=args.get("cognition") or {},
        )


@dataclass(frozen=True, slots=True)
class DelegationRefusal:
    """Why a delegation is refused: a rejection reason's value, a sentence and its facts."""

    reason: str
    message: str
    details: Mapping[str, Any]


def _whole_seconds(now: datetime) -> datetime:
    # Decisions are recorded (and replayed) at the writ's one-second precision: the live check
    # and replay's must read the same time.
    return now.replace(microsecond=0)


def remaining(bounds: DelegationBounds, usage: Usage, now: datetime) -> Budget:
    """What the run has left for a child in each dimension it limits (None where it sets no
    limit): its limit less its usage, tool calls less the delegating call itself (it counts
    against the run too), wall-clock time until its writ expires."""
    budget = bounds.budget
    tokens = usage.input_tokens + usage.output_tokens
    wall_clock = None
    if budget.wall_clock_ms is not None and bounds.expires is not None:
        wall_clock = _ms_until(bounds.expires, now)
    return Budget(
        tokens=None if budget.tokens is None else max(budget.tokens - tokens, 0),
        tool_calls=None
        if budget.tool_calls is None
        else max(budget.tool_calls - usage.tool_calls - 1, 0),
        usd_millicents=None
        if budget.usd_millicents is None
        else max(budget.usd_millicents - usage.usd_millicents, 0),
        wall_clock_ms=wall_clock,
    )


def _ms_until(moment: datetime, now: datetime) -> int:
    return max((moment - _whole_seconds(now)) // timedelta(milliseconds=1), 0)


def check_delegation(
    ask: DelegationAsk,
    bounds: DelegationBounds | None,
    match: Callable[[str], list[str]],
    usage: Usage,
    now: datetime,
) -> DelegationRefusal | None:
    """None when the delegation narrows the run's authority; otherwise the first refusal, in
    the order task, depth, tools, budget. `match` is the catalog's scope rule (`match_scope`)."""
    if not ask.task.strip():
        message = "the child's task is blank"
        return DelegationRefusal(
            REFUSE_ARGUMENTS,
            f"arguments for 'delegate' do not hold: {message}",
            {"errors": [{"path": "/task", "message": message}]},
        )
    if bounds is None:
        return DelegationRefusal(
            REFUSE_EXCEEDS, "the run's authority does not say what it may delegate", {}
        )
    depth = bounds.depth + 1
    if depth > bounds.max_depth:
        return DelegationRefusal(
            REFUSE_TOO_DEEP,
            f"a child of this run would be at delegation depth {depth}, beyond the bound of "
            f"{bounds.max_depth}",
            {"depth": depth, "max_depth": bounds.max_depth},
        )
    for index, scope in enumerate(ask.tool_scopes):
        covered = match(scope)
        if not covered:
            message = f"tool scope {scope!r} matches no registered tool"
            return DelegationRefusal(
                REFUSE_ARGUMENTS,
                f"arguments for 'delegate' do not hold: {message}",
                {"errors": [{"path": f"/tool_scopes/{index}", "message": message}]},
            )
        outside = [name for name in covered if name not in bounds.tools]
        if outside:
            return DelegationRefusal(
                REFUSE_EXCEEDS,
                f"tool scope {scope!r} covers {', '.join(outside)}, which this run does not have",
                {"scope": scope, "tools": outside, "run_tools": sorted(bounds.tools)},
            )
    left = remaining(bounds, usage, now)
    for name in BUDGET_DIMENSIONS:
        asked, has = getattr(ask.budget, name), getattr(left, name)
        if name == "wall_clock_ms" and asked is not None and bounds.expires is not None:
            has = _ms_until(bounds.expires, now)  # a child's time ends with the run's writ
        if asked is not None and has is not None and asked > has:
            return DelegationRefusal(
                REFUSE_EXCEEDS,
                f"the child asks for {asked} {name}; this run has {has} left to give",
                {"budget": name, "asked": asked, "left": has},
            )
    return None


def child_budget(
    ask: DelegationAsk, bounds: DelegationBounds, usage: Usage, now: datetime
) -> Budget:
    """The child's budget: what it asked, and in each dimension the run limits and the child
    left open, all the run has left (its spending returns to the run through its usage)."""
    left = remaining(bounds, usage, now)
    asked = ask.budget
    return Budget(
        tokens=asked.tokens if asked.tokens is not None else left.tokens,
        tool_calls=asked.tool_calls if asked.tool_calls is not None else left.tool_calls,
        usd_millicents=asked.usd_millicents
        if asked.usd_millicents is not None
        else left.usd_millicents,
        wall_clock_ms=asked.wall_clock_ms
        if asked.wall_clock_ms is not None
        else left.wall_clock_ms,
    )


def child_ceiling(effects: Iterable[Effect], ceiling: Effect) -> Effect:
    """The child's effect ceiling: the highest effect among its tools, never above the run's."""
    needed = max(effects, key=lambda e: e.rank, default=Effect.READ)
    return needed if needed.rank <= ceiling.rank else ceiling
