"""Replay authorizes a run's commits of one tool and effect together: for writs made only of
Thymos's own checks, two authorizations at the extremes decide exactly what authorizing every
call would decide."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import biscuit_auth as biscuit
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thymos.core import Budget, Effect
from thymos.governance import (
    SpanAuthorizer,
    WritFacts,
    WritStage,
    WritTerms,
    attenuate,
    authorize,
    authorize_span,
    is_monotone,
    mint,
    parse,
)

from .test_writ_attenuation import OPEN, ROOT, TOOLS, facts_strategy, terms_strategy

SPAN_EXAMPLES = 600


@settings(max_examples=SPAN_EXAMPLES, deadline=None)
@given(
    parent=terms_strategy,
    child=terms_strategy,
    tool=st.sampled_from(TOOLS),
    effect=st.sampled_from(list(Effect)),
    calls=st.lists(facts_strategy, min_size=1, max_size=6),
)
def test_a_span_is_allowed_exactly_when_every_call_in_it_is(
    parent: WritTerms, child: WritTerms, tool: str, effect: Effect, calls: list[WritFacts]
) -> None:
    """For a minted and attenuated writ and calls of one tool, effect and tenant, the span check
    passes if and only if every call passes on its own."""
    minted = mint(ROOT.private_key, parent)
    token = parse(attenuate(minted.token, ROOT.public_key, child).token, ROOT.public_key)
    assert is_monotone(token)
    same = [
        WritFacts("acme", tool, effect, c.now, c.tool_calls, c.tokens, c.usd_millicents)
        for c in calls
    ]
    each = all(authorize(token, call) is None for call in same)
    span = authorize_span(
        token,
        tenant="acme",
        tool=tool,
        effect=effect,
        earliest=min(c.now for c in same),
        latest=max(c.now for c in same),
        tool_calls=max(c.tool_calls for c in same),
        tokens=max(c.tokens for c in same),
        usd_millicents=max(c.usd_millicents for c in same),
    )
    assert (span is None) == each


def test_a_hand_made_block_is_not_treated_as_monotone() -> None:
    """A block with any check Thymos does not write (here an equality on usage, which is not
    monotone) makes replay authorize call by call."""
    minted = mint(ROOT.private_key, OPEN)
    token = parse(minted.token, ROOT.public_key)
    assert is_monotone(token)
    odd = token.append(biscuit.BlockBuilder("check if tool($t), tool_calls($n), $n == 5;"))
    assert not is_monotone(odd)


@settings(max_examples=SPAN_EXAMPLES, deadline=None)
@given(
    parent=terms_strategy,
    child=terms_strategy,
    calls=st.lists(
        st.tuples(st.sampled_from(TOOLS), st.sampled_from(list(Effect)), facts_strategy),
        min_size=1,
        max_size=12,
    ),
    odd=st.booleans(),
)
def test_the_span_authorizer_answers_every_call_exactly_as_authorize(
    parent: WritTerms,
    child: WritTerms,
    calls: list[tuple[str, Effect, WritFacts]],
    odd: bool,
) -> None:
    """Replay's `SpanAuthorizer` answers from boxes it proved ahead of the calls; for any writ
    (monotone, or with a hand-made check) and any sequence of calls, its answer to each (allowed,
    or the refusing stage and message) is the one `authorize` gives."""
    minted = mint(ROOT.private_key, parent)
    token = parse(attenuate(minted.token, ROOT.public_key, child).token, ROOT.public_key)
    if odd:
        token = token.append(biscuit.BlockBuilder("check if tool_calls($n), $n != 7;"))
    spans = SpanAuthorizer()
    for tool, effect, c in calls:
        call = WritFacts("acme", tool, effect, c.now, c.tool_calls, c.tokens, c.usd_millicents)
        assert spans(token, call) == authorize(token, call)


def test_a_datalog_time_out_is_retried_not_recorded_as_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Biscuit reports a time-out like a failed check; on a loaded machine the first bound can
    pass. The call a writ allows must still be allowed, and the call it refuses still refused."""
    import thymos.governance._writ as writ_module

    monkeypatch.setattr(writ_module, "DATALOG_TIME_MAX", timedelta(0))
    terms = WritTerms(None, ("kv_*",), None, Budget(), None, None)
    token = parse(mint(ROOT.private_key, terms).token, ROOT.public_key)
    now = datetime.now(UTC)
    allowed = WritFacts("acme", "kv_set", Effect.WRITE, now, 0, 0, 0)
    assert authorize(token, allowed) is None
    refused = authorize(token, WritFacts("acme", "shell", Effect.WRITE, now, 0, 0, 0))
    assert refused is not None
    assert refused.stage == WritStage.OUT_OF_SCOPE

    monkeypatch.setattr(writ_module, "DATALOG_TIME_RETRY", timedelta(0))
    limited = authorize(token, allowed)
    assert limited is not None, "a writ that exceeds the limits twice is refused, never allowed"


def test_calls_nearing_a_budget_cost_a_few_proofs_not_one_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run whose calls climb towards its tool-call budget is answered from boxes widened as
    far as they prove (the margin halved near the limit), not call by call once doubling
    overshoots the limit; every answer is still `authorize`'s, the refusal at the limit
    included."""
    import thymos.governance._writ as writ_module

    limit = 3000
    terms = WritTerms(None, ("kv_*",), None, Budget(tool_calls=limit), None, None)
    token = parse(mint(ROOT.private_key, terms).token, ROOT.public_key)
    asked = {"authorize": 0, "span": 0}
    authorize_exactly, prove = writ_module.authorize, writ_module.authorize_span

    def counted_authorize(*args: object, **kwargs: object) -> object:
        asked["authorize"] += 1
        return authorize_exactly(*args, **kwargs)  # type: ignore[arg-type]

    def counted_span(*args: object, **kwargs: object) -> object:
        asked["span"] += 1
        return prove(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(writ_module, "authorize", counted_authorize)
    monkeypatch.setattr(writ_module, "authorize_span", counted_span)
    spans = SpanAuthorizer()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    answers = []
    for calls in range(limit + 2):
        call = WritFacts("acme", "kv_set", Effect.WRITE, now, calls, 0, 0)
        answers.append(spans(token, call) is None)
    assert answers == [calls < limit for calls in range(limit + 2)]
    # Doubling alone proves boxes up to 2047 calls, then authorizes each of the last 953.
    assert asked["authorize"] < 200, asked
