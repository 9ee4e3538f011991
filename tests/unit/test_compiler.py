"""The compiler: a pure function from an intent and the run's authority to a decision, with
ordered stages whose first refusal decides."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from thymos.core import Budget, Effect, Intent, Usage
from thymos.governance import (
    COMPILER_VERSION,
    Authority,
    Decision,
    DelegationBounds,
    PolicyFile,
    PolicySet,
    Rejected,
    RejectionReason,
    Staged,
    Suspended,
    ToolCatalog,
    WritTerms,
    compile_intent,
    default_policy_files,
    lineage_of,
    mint,
    new_root_key,
    parse,
)
from thymos.governance._compiler import ARG_ERRORS_MAX
from thymos.tools import builtin_tools

CATALOG = ToolCatalog(builtin_tools().specs())
ROOT = new_root_key()
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SPECS = list(builtin_tools().specs().values())


def authority(
    *,
    tools: tuple[str, ...] = ("*",),
    ceiling: Effect = Effect.IRREVERSIBLE,
    budget: Budget | None = None,
    not_before: datetime | None = None,
    expires: datetime | None = None,
    policy: PolicySet | None = None,
) -> Authority:
    terms = WritTerms(
        tenant="acme",
        tools=tools,
        effect_ceiling=ceiling,
        budget=budget or Budget(),
        not_before=not_before or NOW - timedelta(minutes=1),
        expires=expires or NOW + timedelta(hours=1),
    )
    token = parse(mint(ROOT.private_key, terms).token, ROOT.public_key)
    chosen = policy or PolicySet(default_policy_files())
    return Authority(
        run_id="run-1",
        tenant="acme",
        writ=token,
        lineage=lineage_of(token),
        policy=chosen,
        entities=chosen.entities(run_id="run-1", tenant="acme", task="t", tools=SPECS),
    )


def decide(
    tool: str,
    args: dict[str, Any],
    *,
    auth: Authority | None = None,
    used: int = 0,
    now: datetime = NOW,
    revocations: frozenset[str] = frozenset(),
) -> Decision:
    return compile_intent(
        Intent(tool, args, "call"),
        catalog=CATALOG,
        authority=auth or authority(),
        usage=Usage(tool_calls=used),
        now=now,
        revocations=revocations,
    )


def reason_of(decision: Decision) -> RejectionReason:
    assert isinstance(decision, Rejected), decision
    return decision.reason


def test_a_valid_in_scope_intent_is_staged_with_its_tool_and_basis() -> None:
    """An intent for a known tool in scope, within budget, with valid arguments and permitted by
    policy is staged, with the time, usage and policy hash it was decided on."""
    auth = authority(budget=Budget(tool_calls=5))
    decision = decide("kv_set", {"key": "a", "value": [1, 2]}, auth=auth, used=4)
    assert isinstance(decision, Staged)
    assert decision.tool.name == "kv_set"
    assert decision.basis.tool_calls == 4
    assert decision.basis.policy_hash == auth.policy.hash
    assert decision.basis.policies == ("default-permit",)
    assert COMPILER_VERSION.startswith("thymos-compiler/")


def test_an_unknown_tool_is_rejected_as_unknown_tool() -> None:
    """A tool name nobody registered is rejected with reason unknown_tool, naming the tool."""
    decision = decide("rm_rf", {})
    assert reason_of(decision) is RejectionReason.UNKNOWN_TOOL
    assert isinstance(decision, Rejected)
    assert decision.details == {"tool": "rm_rf"}
    assert decision.as_body()["reason"] == "unknown_tool"


def test_a_revoked_writ_is_rejected_as_revoked() -> None:
    """A writ whose id (or any ancestor's id) is revoked refuses every call."""
    auth = authority()
    decision = decide("kv_get", {"key": "a"}, auth=auth, revocations=frozenset({auth.lineage[0]}))
    assert reason_of(decision) is RejectionReason.REVOKED


def test_a_writ_outside_its_window_is_rejected_as_expired_or_not_yet_valid() -> None:
    """Before the window opens the reason is not_yet_valid; after it closes, expired."""
    auth = authority()
    assert reason_of(decide("kv_get", {"key": "a"}, auth=auth, now=NOW - timedelta(hours=1))) is (
        RejectionReason.NOT_YET_VALID
    )
    assert reason_of(decide("kv_get", {"key": "a"}, auth=auth, now=NOW + timedelta(hours=2))) is (
        RejectionReason.EXPIRED
    )


def test_a_registered_tool_outside_the_scopes_is_rejected_as_out_of_scope() -> None:
    """A registered tool the writ does not cover is rejected with reason out_of_scope."""
    decision = decide("kv_set", {"key": "a", "value": 1}, auth=authority(tools=("kv_get", "fs_*")))
    assert reason_of(decision) is RejectionReason.OUT_OF_SCOPE


def test_a_tool_above_the_effect_ceiling_is_rejected_as_effect_above_ceiling() -> None:
    """A write tool under a read-only ceiling is refused."""
    decision = decide("kv_set", {"key": "a", "value": 1}, auth=authority(ceiling=Effect.READ))
    assert reason_of(decision) is RejectionReason.EFFECT_ABOVE_CEILING


@pytest.mark.parametrize(("limit", "used"), [(0, 0), (3, 3), (3, 7)])
def test_a_spent_tool_call_budget_is_rejected_as_budget_exhausted(limit: int, used: int) -> None:
    """Once the tool calls used reach the writ's budget, further intents are refused."""
    decision = decide(
        "kv_get", {"key": "a"}, auth=authority(budget=Budget(tool_calls=limit)), used=used
    )
    assert reason_of(decision) is RejectionReason.BUDGET_EXHAUSTED


@pytest.mark.parametrize(
    "args",
    [{}, {"key": ""}, {"key": 3}, {"key": "a", "extra": 1}, {"key": "x" * 257}],
    ids=["missing", "empty", "not-a-string", "extra-property", "too-long"],
)
def test_arguments_that_break_the_schema_are_rejected_as_invalid_arguments(
    args: dict[str, Any],
) -> None:
    """Arguments that do not validate against the tool's JSON Schema are rejected with the schema
    errors (path and message) in the details."""
    decision = decide("kv_get", args)
    assert reason_of(decision) is RejectionReason.INVALID_ARGUMENTS
    assert isinstance(decision, Rejected)
    errors = decision.details["errors"]
    assert errors
    assert all(set(e) == {"path", "message"} for e in errors)


def test_arguments_that_could_not_be_read_are_rejected_even_where_empty_ones_pass() -> None:
    """A call whose arguments were not a JSON object is recorded with `args` empty and
    `args_error`; it is rejected with that reason even for a tool whose schema accepts `{}`
    (here `repo_map`, all of whose arguments are optional)."""
    assert not isinstance(decide("repo_map", {}), Rejected)
    decision = compile_intent(
        Intent("repo_map", {}, "call", "the arguments are not valid JSON: {"),
        catalog=CATALOG,
        authority=authority(),
        usage=Usage(),
        now=NOW,
        revocations=frozenset(),
    )
    assert reason_of(decision) is RejectionReason.INVALID_ARGUMENTS
    assert isinstance(decision, Rejected)
    assert decision.details == {"errors": [{"message": "the arguments are not valid JSON: {"}]}


def test_schema_errors_are_capped_and_carry_their_paths() -> None:
    """Many schema errors are reported as a bounded list, each with its JSON pointer path."""
    decision = decide(
        "fs_read", {"path": 1, "offset": 0, "limit": 0, "a": 1, "b": 2, "c": 3, "d": 4}
    )
    assert isinstance(decision, Rejected)
    errors = decision.details["errors"]
    assert 1 <= len(errors) <= ARG_ERRORS_MAX
    assert any(e["path"] == "/path" for e in errors)


def test_a_forbid_policy_rejects_as_policy_denied_naming_the_policy() -> None:
    """A satisfied forbid policy refuses the call and is named as the determining policy."""
    policy = PolicySet(
        [
            PolicyFile("base.cedar", "permit(principal, action, resource);"),
            PolicyFile(
                "no-kv.cedar",
                '@id("no-kv-writes") forbid(principal, action, resource) when { resource.name == "kv_set" };',
            ),
        ]
    )
    decision = decide("kv_set", {"key": "a", "value": 1}, auth=authority(policy=policy))
    assert reason_of(decision) is RejectionReason.POLICY_DENIED
    assert isinstance(decision, Rejected)
    assert decision.basis.policies == ("no-kv-writes",)
    assert decision.basis.policy_hash == policy.hash
    assert isinstance(decide("kv_get", {"key": "a"}, auth=authority(policy=policy)), Staged)


def test_an_approval_permit_suspends_on_its_channel_with_its_quorum() -> None:
    """A satisfied permit with @approval and @quorum suspends the proposal there."""
    policy = PolicySet(
        [
            PolicyFile(
                "ops.cedar", '@approval("ops") @quorum("2") permit(principal, action, resource);'
            )
        ]
    )
    decision = decide("kv_get", {"key": "a"}, auth=authority(policy=policy))
    assert isinstance(decision, Suspended)
    assert (decision.channel, decision.quorum) == ("ops", 2)
    assert decision.basis.policies == ("ops.cedar#1",)


@pytest.mark.parametrize(
    ("tool", "args", "kwargs", "expected"),
    [
        ("nope", {}, {"revoked": True}, RejectionReason.UNKNOWN_TOOL),
        ("kv_set", {}, {"revoked": True, "late": True}, RejectionReason.REVOKED),
        ("kv_set", {}, {"late": True, "scopes": ("kv_get",)}, RejectionReason.EXPIRED),
        (
            "kv_set",
            {},
            {"scopes": ("kv_get",), "ceiling": Effect.READ},
            RejectionReason.OUT_OF_SCOPE,
        ),
        ("kv_set", {}, {"ceiling": Effect.READ, "budget": 0}, RejectionReason.EFFECT_ABOVE_CEILING),
        ("kv_set", {}, {"budget": 0}, RejectionReason.BUDGET_EXHAUSTED),
        ("kv_set", {}, {}, RejectionReason.INVALID_ARGUMENTS),
    ],
    ids=["unknown", "revoked", "expired", "scope", "ceiling", "budget", "arguments"],
)
def test_stages_run_in_order_and_the_first_refusal_decides(
    tool: str, args: dict[str, Any], kwargs: dict[str, Any], expected: RejectionReason
) -> None:
    """When several stages would refuse, the earliest stage's reason is the one recorded."""
    auth = authority(
        tools=kwargs.get("scopes", ("*",)),
        ceiling=kwargs.get("ceiling", Effect.IRREVERSIBLE),
        budget=Budget(tool_calls=kwargs.get("budget")),
    )
    revocations = frozenset(auth.lineage) if kwargs.get("revoked") else frozenset()
    now = NOW + timedelta(hours=2) if kwargs.get("late") else NOW
    assert reason_of(decide(tool, args, auth=auth, now=now, revocations=revocations)) is expected


def test_compiling_is_pure() -> None:
    """The same inputs give equal decisions every time (replay relies on it)."""
    auth = authority()
    first = decide("kv_get", {"key": 1}, auth=auth)
    second = decide("kv_get", {"key": 1}, auth=auth)
    assert first == second


# -- stage 9: delegation narrows the run's authority ---------------------------------------


def delegating(
    *,
    tools: tuple[str, ...] = ("kv_get", "kv_set", "fs_read", "delegate"),
    ceiling: Effect = Effect.WRITE,
    budget: Budget | None = None,
    depth: int = 0,
    max_depth: int = 4,
    expires: datetime | None = None,
) -> Authority:
    """An authority whose run may delegate within the given bounds."""
    spent = budget or Budget()
    until = expires or NOW + timedelta(hours=1)
    bounds = DelegationBounds(frozenset(tools), ceiling, spent, until, depth, max_depth)
    return replace(authority(budget=spent, expires=until), delegation=bounds)


def delegate(scopes: list[str], **more: Any) -> dict[str, Any]:
    return {"task": "sub-task", "tool_scopes": scopes, **more}


def test_a_delegation_within_the_runs_authority_is_staged() -> None:
    """Scopes covering only the run's tools, a budget within what it has left and a depth within
    the bound: the `delegate` call is staged like any call."""
    auth = delegating(budget=Budget(tool_calls=5, tokens=1000))
    args = delegate(["kv_*", "fs_read"], budget={"tool_calls": 2, "tokens": 1000})
    decision = decide("delegate", args, auth=auth, used=2)
    assert isinstance(decision, Staged), decision


def test_a_scope_beyond_the_runs_tools_is_refused_naming_what_it_adds() -> None:
    """A scope covering a registered tool the run does not have (`shell`, or `kv_*` for a run
    holding only kv_get) is rejected `delegation_exceeds_authority` with those tools."""
    decision = decide("delegate", delegate(["kv_get", "shell"]), auth=delegating())
    assert reason_of(decision) is RejectionReason.DELEGATION_EXCEEDS_AUTHORITY
    assert isinstance(decision, Rejected)
    assert decision.details["scope"] == "shell" and decision.details["tools"] == ["shell"]
    narrow = delegating(tools=("kv_get", "delegate"))
    decision = decide("delegate", delegate(["kv_*"]), auth=narrow)
    assert isinstance(decision, Rejected)
    assert decision.reason is RejectionReason.DELEGATION_EXCEEDS_AUTHORITY
    assert decision.details["tools"] == ["kv_set"]
    assert "kv_set" in decision.message


def test_a_scope_matching_no_tool_or_a_blank_task_is_invalid_arguments() -> None:
    """A scope that covers no registered tool (`nothing_*`, `kv get`) grants nothing, and a
    blank task asks nothing: `invalid_arguments`, naming the argument."""
    for scopes in (["kv_get", "nothing_*"], ["kv_get", "kv get"]):
        decision = decide("delegate", delegate(scopes), auth=delegating())
        assert reason_of(decision) is RejectionReason.INVALID_ARGUMENTS
        assert isinstance(decision, Rejected)
        assert decision.details["errors"][0]["path"] == "/tool_scopes/1"
    blank = decide("delegate", {"task": " \n", "tool_scopes": ["kv_get"]}, auth=delegating())
    assert isinstance(blank, Rejected)
    assert blank.reason is RejectionReason.INVALID_ARGUMENTS
    assert blank.details["errors"][0]["path"] == "/task"


def test_a_budget_beyond_what_the_run_has_left_is_refused() -> None:
    """Per dimension the run limits: its limit less its usage (tool calls less the delegating
    call too). Asking exactly what is left is allowed; one more is refused, naming the
    dimension, the ask and what is left. A dimension the run does not limit is not checked."""
    auth = delegating(budget=Budget(tool_calls=5))
    staged = decide("delegate", delegate(["kv_get"], budget={"tool_calls": 2}), auth=auth, used=2)
    assert isinstance(staged, Staged)
    refused = decide("delegate", delegate(["kv_get"], budget={"tool_calls": 3}), auth=auth, used=2)
    assert isinstance(refused, Rejected)
    assert refused.reason is RejectionReason.DELEGATION_EXCEEDS_AUTHORITY
    assert refused.details == {"budget": "tool_calls", "asked": 3, "left": 2}
    free = decide("delegate", delegate(["kv_get"], budget={"tokens": 10**9}), auth=auth, used=2)
    assert isinstance(free, Staged)
    tokens = delegating(budget=Budget(tokens=100))
    over = compile_intent(
        Intent("delegate", delegate(["kv_get"], budget={"tokens": 61}), "call"),
        catalog=CATALOG,
        authority=tokens,
        usage=Usage(input_tokens=30, output_tokens=10),
        now=NOW,
        revocations=frozenset(),
    )
    assert isinstance(over, Rejected)
    assert over.details == {"budget": "tokens", "asked": 61, "left": 60}


def test_a_wall_clock_beyond_the_runs_writ_is_refused_at_whole_seconds() -> None:
    """A child's wall clock must end with the run's writ; the time is read at the writ's
    one-second precision (replay decides on the recorded second), so the fraction of a second
    never changes the answer."""
    auth = delegating(expires=NOW + timedelta(seconds=60))
    late = NOW + timedelta(milliseconds=700)
    fits = decide(
        "delegate", delegate(["kv_get"], budget={"wall_clock_ms": 60_000}), auth=auth, now=late
    )
    assert isinstance(fits, Staged)
    beyond = decide(
        "delegate", delegate(["kv_get"], budget={"wall_clock_ms": 60_001}), auth=auth, now=late
    )
    assert reason_of(beyond) is RejectionReason.DELEGATION_EXCEEDS_AUTHORITY


def test_a_delegation_beyond_the_depth_bound_is_too_deep() -> None:
    """A run at the bound's depth cannot delegate: `delegation_too_deep` with the depth the
    child would have and the bound; depth is checked before scopes."""
    decision = decide("delegate", delegate(["shell"]), auth=delegating(depth=2, max_depth=2))
    assert reason_of(decision) is RejectionReason.DELEGATION_TOO_DEEP
    assert isinstance(decision, Rejected)
    assert decision.details == {"depth": 3, "max_depth": 2}
    nested = decide("delegate", delegate(["kv_get"]), auth=delegating(depth=1, max_depth=2))
    assert isinstance(nested, Staged)


def test_a_run_without_delegation_bounds_cannot_delegate_and_other_tools_are_untouched() -> None:
    """An authority that says nothing of delegation refuses every `delegate` call; the stage
    applies to `delegate` only, after the earlier stages (a policy denial stays one)."""
    decision = decide("delegate", delegate(["kv_get"]))
    assert reason_of(decision) is RejectionReason.DELEGATION_EXCEEDS_AUTHORITY
    assert isinstance(decide("kv_set", {"key": "a", "value": 1}, auth=delegating()), Staged)
    forbid = PolicySet((PolicyFile("deny.cedar", "forbid(principal, action, resource);"),))
    denied = decide("delegate", delegate(["shell"]), auth=replace(delegating(), policy=forbid))
    assert reason_of(denied) is RejectionReason.POLICY_DENIED
