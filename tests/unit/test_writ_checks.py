"""A writ made only of Thymos's own checks is answered in Python (`WritChecks`), every other writ
by Biscuit; the two answers are the same.

The ledger records each decision and replay re-runs it, so the Python checks must agree with
Biscuit's authorizer on every call: allowed, or refused at the same stage with the same message.
The property test draws a minted writ, a chain of attenuations (Thymos's own, and sometimes a
block Thymos does not write, which must send the writ to Biscuit), and calls around every edge:
tools in and out of scope (exact names, prefixes, glob patterns), each effect, usage at and
around the budgets, times at, just before and just after the window's bounds (in several time
zones, with and without fractions of a second), other tenants, and revoked lineage.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import biscuit_auth as biscuit
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import thymos.governance._writ_checks as checks_module
from thymos.core import Budget, Effect, Intent, Risk, ToolSpec, Usage
from thymos.governance import (
    Authority,
    PolicySet,
    Rejected,
    ToolCatalog,
    WritChecks,
    WritFacts,
    WritStage,
    WritTerms,
    attenuate,
    authorize,
    compile_intent,
    default_policy_files,
    lineage_of,
    mint,
    new_root_key,
    parse,
    writ_refusal,
)

ROOT = new_root_key()
THIRD_PARTY = new_root_key()
BASE = datetime(2030, 1, 1, tzinfo=UTC)
TOOLS = (
    "fs_read",
    "fs_write",
    "kv_get",
    "kv_set",
    "grep",
    "shell",
    "mcp_git.log",
    "mcp_gitXlog",
    "x1yabcz",
    "xyz",
    "a-b:c",
    "k",
)
SCOPES = (
    "fs_read",
    "kv_get",
    "a-b:c",
    "fs_*",
    "kv_*",
    "mcp_git.*",
    "*",
    "k?_get",
    "x?y*z",
    "mcp_git.l?g",
    "*_set",
    "nope",
)
TENANTS = ("acme", "other")
EXAMPLES = 600
"""Each example mints a chain of up to four blocks and asks Biscuit and the compiler about up to
six calls; this many take about seven seconds of one core and cover every stage many times."""


def sometimes(values: st.SearchStrategy[Any], one_in: int = 3) -> st.SearchStrategy[Any]:
    """A value one time in `one_in`, else None (no limit of that kind), so that many calls pass
    and the allowed answers are compared as often as the refusals."""
    return st.tuples(st.integers(min_value=1, max_value=one_in), values).map(
        lambda pair: pair[1] if pair[0] == 1 else None
    )


def moments(low: int, high: int) -> st.SearchStrategy[datetime]:
    """Times within whole seconds of BASE, sometimes a microsecond past or short of a second;
    now and then in a time zone other than `UTC` (the same instant, which Biscuit refuses to
    take: an exception that the Python checks must leave to Biscuit to raise)."""
    return st.builds(
        lambda s, us, zone: (BASE + timedelta(seconds=s, microseconds=us)).astimezone(zone),
        st.integers(min_value=low, max_value=high),
        st.sampled_from((0, 0, 1, 500_000, 999_999)),
        st.sampled_from((UTC,) * 12 + (timezone(timedelta(hours=2)), ZoneInfo("UTC"))),
    )


USAGE = st.one_of(st.integers(min_value=0, max_value=6), st.sampled_from((2**40 - 1, 2**40)))


def terms(one_in: int) -> st.SearchStrategy[WritTerms]:
    """Writ terms whose every limit is present one time in `one_in`."""
    limits = sometimes(st.one_of(st.integers(min_value=0, max_value=5), st.just(2**40)), one_in)
    return st.builds(
        WritTerms,
        tenant=sometimes(st.sampled_from(TENANTS), one_in),
        tools=sometimes(
            st.lists(st.sampled_from(SCOPES), min_size=0, max_size=5, unique=True).map(tuple),
            one_in,
        ),
        effect_ceiling=sometimes(st.sampled_from(list(Effect)), one_in),
        budget=st.builds(Budget, tokens=limits, tool_calls=limits, usd_millicents=limits),
        not_before=sometimes(moments(-4, 1), one_in),
        expires=sometimes(moments(-1, 4), one_in),
    )


TERMS = terms(3)
NARROWER = terms(5)
"""An attenuation's terms: each limit rarer, so that a chain still allows some calls."""
FACTS = st.builds(
    WritFacts,
    tenant=st.sampled_from(("acme", "acme", "acme", "acme", "other")),
    tool=st.sampled_from(TOOLS),
    effect=st.sampled_from(list(Effect)),
    now=moments(-5, 5),
    tool_calls=USAGE,
    tokens=USAGE,
    usd_millicents=USAGE,
)


def _crafted(source: str, value: str) -> biscuit.BlockBuilder:
    return biscuit.BlockBuilder(source, {"s": value})


FOREIGN: dict[str, Any] = {
    "operator": "check if tool_calls($n), $n != 7;",
    "regex": 'check if tool($t), $t.matches("^(kv|fs)_(get|read)$");',
    "fact": 'role("ops");\ncheck if role("ops");',
    "rule": 'scoped($t) <- tool($t), $t.starts_with("kv_");\ncheck if scoped($t);',
    "check all": "check all time($t), $t > 2000-01-01T00:00:00Z;",
    "reject": 'reject if tool("shell");',
    # Strings holding a quote or a line break print exactly like checks Thymos writes.
    "quote": ("check if tool($t), $t.starts_with({s});", 'kv_") || $t.starts_with("f'),
    "line break": (
        "check if request_tenant({s});",
        'acme");\ncheck if true || request_tenant("other',
    ),
    # A block signed by another key, holding only checks of Thymos's shapes.
    "third party": 'check if tool($t), $t.starts_with("kv_");',
}


def _append_foreign(token: str, kind: str) -> str:
    parent = parse(token, ROOT.public_key)
    source = FOREIGN[kind]
    if kind == "third party":
        block = parent.third_party_request().create_block(
            THIRD_PARTY.private_key, biscuit.BlockBuilder(source)
        )
        child = parent.append_third_party(THIRD_PARTY.public_key, block)
    elif isinstance(source, tuple):
        child = parent.append(_crafted(*source))
    else:
        child = parent.append(biscuit.BlockBuilder(source))
    return str(child.to_base64())


STEPS = st.lists(
    st.one_of(
        NARROWER.map(lambda narrower: ("ours", narrower)),
        NARROWER.map(lambda narrower: ("ours", narrower)),
        NARROWER.map(lambda narrower: ("ours", narrower)),
        st.sampled_from(sorted(FOREIGN)).map(lambda kind: ("foreign", kind)),
    ),
    max_size=3,
)


def _chain(minted: WritTerms, steps: list[tuple[str, Any]]) -> tuple[biscuit.Biscuit, bool]:
    """The writ minted with `minted` and attenuated by each step; whether any step was foreign."""
    token = mint(ROOT.private_key, minted).token
    foreign = False
    for kind, step in steps:
        if kind == "ours":
            token = attenuate(token, ROOT.public_key, step).token
        else:
            token = _append_foreign(token, step)
            foreign = True
    return parse(token, ROOT.public_key), foreign


CATALOG = ToolCatalog(
    {
        name: ToolSpec(
            name=name,
            description=name,
            input_schema={"type": "object"},
            effect=list(Effect)[index % len(Effect)],
            risk=Risk.LOW,
            idempotent=True,
            compensable=False,
        )
        for index, name in enumerate(TOOLS)
    }
)
POLICY = PolicySet(default_policy_files())
ENTITIES = POLICY.entities(run_id="r", tenant="acme", task="t", tools=CATALOG.specs())


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    minted=TERMS,
    steps=STEPS,
    calls=st.lists(FACTS, min_size=1, max_size=6),
    unknown=st.booleans(),
    revoked_blocks=sometimes(st.sets(st.integers(min_value=0, max_value=3), max_size=2)),
)
def test_python_checks_and_biscuit_give_the_same_answer_to_every_call(
    minted: WritTerms,
    steps: list[tuple[str, Any]],
    calls: list[WritFacts],
    unknown: bool,
    revoked_blocks: set[int] | None,
) -> None:
    """For any chain of Thymos's own attenuations, the writ's checks are read into Python
    (`WritChecks.of` is not None) and answer every call as Biscuit's `authorize` does, stage and
    message included; with any block Thymos does not write, they are not read (None) and Biscuit
    answers. The compiler's decisions (revocation, stages, message, basis) are the same whether
    it asks the Python checks or Biscuit."""
    token, foreign = _chain(minted, steps)
    checks = WritChecks.of(token)
    assert (checks is None) == foreign, [token.block_source(i) for i in range(token.block_count())]
    authority = Authority("r", "acme", token, lineage_of(token), POLICY, ENTITIES)
    assert authority.checks == checks
    lineage = lineage_of(token)
    revocations = frozenset(
        {"unrelated"} | {lineage[i] for i in revoked_blocks or () if i < len(lineage)}
    )
    for facts in calls:
        expected = _outcome(authorize, token, facts)
        assert _outcome(writ_refusal, token, checks, facts) == expected, facts
        event(
            expected
            if isinstance(expected, str)
            else "allowed"
            if expected is None
            else expected.stage.value
        )
        tool = "no_such_tool" if unknown and facts.tool == "k" else facts.tool
        intent = Intent(tool, {}, "c")
        usage = Usage(
            tool_calls=facts.tool_calls,
            input_tokens=facts.tokens,
            usd_millicents=facts.usd_millicents,
        )
        asked = {
            "catalog": CATALOG,
            "authority": authority,
            "usage": usage,
            "now": facts.now,
            "revocations": revocations,
        }
        decided = _outcome(compile_intent, intent, **asked)
        assert decided == _outcome(compile_intent, intent, **asked, authorizer=authorize)
        if isinstance(decided, Rejected):
            event(f"compiled: {decided.reason.value}")


def _outcome(call: Any, *args: Any, **kwargs: Any) -> Any:
    """What `call` returns, or the name of the exception it raises (Biscuit refuses some facts,
    a time given in another zone than UTC, with an exception rather than an answer)."""
    try:
        return call(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__


OURS = WritTerms(
    "acme",
    ("kv_*",),
    Effect.WRITE,
    Budget(tool_calls=5),
    BASE - timedelta(minutes=1),
    BASE + timedelta(hours=1),
)


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_writ_with_a_block_thymos_does_not_write_is_answered_by_biscuit(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Authority over a writ holding any foreign block (another check shape, a fact, a rule,
    a string that prints like Thymos's syntax, a third party's block) has no Python checks, and
    the compiler sends each of its calls to Biscuit's authorizer; a writ of Thymos's own checks
    never reaches Biscuit."""
    asked: list[WritFacts] = []

    def spy(token: biscuit.Biscuit, facts: WritFacts) -> Any:
        asked.append(facts)
        return authorize(token, facts)

    monkeypatch.setattr(checks_module, "authorize", spy)
    minted = mint(ROOT.private_key, OURS).token
    ours = parse(attenuate(minted, ROOT.public_key, OURS).token, ROOT.public_key)
    foreign = parse(_append_foreign(minted, kind), ROOT.public_key)
    intent = Intent("kv_set", {}, "c")
    for token, routed in ((ours, 0), (foreign, 1)):
        authority = Authority("r", "acme", token, lineage_of(token), POLICY, ENTITIES)
        assert (authority.checks is None) == bool(routed)
        compile_intent(
            intent,
            catalog=CATALOG,
            authority=authority,
            usage=Usage(tool_calls=1),
            now=BASE,
            revocations=frozenset(),
        )
        assert len(asked) == routed


def test_a_string_that_prints_like_thymos_syntax_is_not_misread() -> None:
    """Biscuit prints strings unescaped: a prefix holding a quote prints as two prefix tests, a
    wider scope than the writ grants. Read as text it would allow `fs_read`; Biscuit refuses it,
    and so does the writ's answer."""
    minted = mint(ROOT.private_key, WritTerms(None, None, None, Budget(), None, None)).token
    token = parse(_append_foreign(minted, "quote"), ROOT.public_key)
    assert 'starts_with("kv_") || $t.starts_with("f")' in token.block_source(1)
    assert WritChecks.of(token) is None
    call = WritFacts("acme", "fs_read", Effect.READ, BASE, 0, 0, 0)
    refused = writ_refusal(token, None, call)
    assert refused is not None and refused.stage is WritStage.OUT_OF_SCOPE


@pytest.mark.parametrize(
    ("facts", "error"),
    [
        (
            WritFacts("acme", "kv_set", Effect.WRITE, datetime(1969, 12, 31, tzinfo=UTC), 0, 0, 0),
            ValueError,
        ),
        (WritFacts("acme", "kv_set", Effect.WRITE, BASE, 2**63, 0, 0), TypeError),
    ],
)
def test_facts_biscuit_cannot_take_are_refused_by_biscuit_alike(
    facts: WritFacts, error: type[Exception]
) -> None:
    """A time before the epoch or usage past 64 bits is no answer in Biscuit but an error; the
    Python checks pass such calls to Biscuit rather than answer them, so both raise the same."""
    token = parse(mint(ROOT.private_key, OURS).token, ROOT.public_key)
    checks = WritChecks.of(token)
    assert checks is not None
    with pytest.raises(error):
        authorize(token, facts)
    with pytest.raises(error):
        writ_refusal(token, checks, facts)


def test_a_datalog_time_out_is_retried_not_recorded_as_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Biscuit reports a time-out like a failed check; on a loaded machine the first bound can
    pass. The call a writ allows must still be allowed, and the call it refuses still refused."""
    import thymos.governance._writ as writ_module

    monkeypatch.setattr(writ_module, "DATALOG_TIME_MAX", timedelta(0))
    terms = WritTerms(None, ("kv_*",), None, Budget(), None, None)
    token = parse(mint(ROOT.private_key, terms).token, ROOT.public_key)
    allowed = WritFacts("acme", "kv_set", Effect.WRITE, BASE, 0, 0, 0)
    assert authorize(token, allowed) is None
    refused = authorize(token, WritFacts("acme", "shell", Effect.WRITE, BASE, 0, 0, 0))
    assert refused is not None
    assert refused.stage == WritStage.OUT_OF_SCOPE

    monkeypatch.setattr(writ_module, "DATALOG_TIME_RETRY", timedelta(0))
    limited = authorize(token, allowed)
    assert limited is not None, "a writ that exceeds the limits twice is refused, never allowed"
