"""Writs can only narrow: attenuation never widens authority, revocation follows lineage, and
only tokens signed by the root key (and untouched) parse.

The property test draws a parent writ's terms and a child's terms that may try to widen them
(more tools, a higher ceiling, bigger budgets, a longer window), then random calls: whatever the
child allows, the parent allows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thymos.core import Budget, Effect
from thymos.governance import WritError
from thymos.governance._writ import (
    WritFacts,
    WritStage,
    WritTerms,
    attenuate,
    authorize,
    mint,
    new_root_key,
    parse,
    revoked,
)

ROOT = new_root_key()
OTHER_ROOT = new_root_key()
BASE = datetime(2030, 1, 1, tzinfo=UTC)
TOOLS = ("fs_read", "fs_write", "kv_get", "kv_set", "grep")
SCOPES = (*TOOLS, "fs_*", "kv_*", "*", "k?_get", "nope")
TENANTS = ("acme", "other")
PROPERTY_EXAMPLES = 2500

T = TypeVar("T")


def sometimes(values: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    """A value about a third of the time, else None (no limit of that kind).

    Unlimited terms are drawn often so that a good share of calls pass both writs: the property
    is about the calls a child allows, so many draws must allow some."""
    return st.tuples(st.integers(min_value=0, max_value=2), values).map(
        lambda pair: pair[1] if pair[0] == 0 else None
    )


def seconds(low: int, high: int) -> st.SearchStrategy[datetime]:
    return st.integers(min_value=low, max_value=high).map(lambda s: BASE + timedelta(seconds=s))


limits = sometimes(st.integers(min_value=0, max_value=5))
terms_strategy = st.builds(
    WritTerms,
    tenant=sometimes(st.sampled_from(TENANTS)),
    tools=sometimes(
        st.lists(st.sampled_from(SCOPES), min_size=1, max_size=4, unique=True).map(tuple)
    ),
    effect_ceiling=sometimes(st.sampled_from(list(Effect))),
    budget=st.builds(Budget, tokens=limits, tool_calls=limits, usd_millicents=limits),
    not_before=sometimes(seconds(-20, 5)),
    expires=sometimes(seconds(-5, 20)),
)
usage = st.integers(min_value=0, max_value=4)
facts_strategy = st.builds(
    WritFacts,
    tenant=st.sampled_from(("acme", "acme", "acme", "other")),
    tool=st.sampled_from(TOOLS),
    effect=st.sampled_from(list(Effect)),
    now=seconds(-25, 25),
    tool_calls=usage,
    tokens=usage,
    usd_millicents=usage,
)
OPEN = WritTerms(None, None, None, Budget(), None, None)
ALLOWED = WritFacts("acme", "kv_get", Effect.READ, BASE, 0, 0, 0)


@settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)
@given(
    parent_terms=terms_strategy,
    child_terms=terms_strategy,
    calls=st.lists(facts_strategy, min_size=2, max_size=6),
)
def test_attenuation_never_widens_what_a_writ_allows(
    parent_terms: WritTerms, child_terms: WritTerms, calls: list[WritFacts]
) -> None:
    """For any parent terms, any child terms (including ones that try to widen: more tools, a
    higher ceiling, bigger budgets, a longer window) and any call, if the attenuated child
    allows the call then the parent allows it too."""
    parent = mint(ROOT.private_key, parent_terms)
    child = attenuate(parent.token, ROOT.public_key, child_terms)
    parent_token = parse(parent.token, ROOT.public_key)
    child_token = parse(child.token, ROOT.public_key)
    for facts in calls:
        if authorize(child_token, facts) is None:
            assert authorize(parent_token, facts) is None, (parent_terms, child_terms, facts)


def test_a_child_that_asks_for_more_gets_only_the_parents_authority() -> None:
    """A child asking for every tool, the highest ceiling, no budget and no window still cannot
    call outside the parent's scope, above its ceiling, past its budget or after its expiry."""
    parent_terms = WritTerms(
        "acme", ("kv_get",), Effect.READ, Budget(tool_calls=2), BASE, BASE + timedelta(hours=1)
    )
    parent = mint(ROOT.private_key, parent_terms)
    child = attenuate(
        parent.token,
        ROOT.public_key,
        WritTerms(None, ("*",), Effect.IRREVERSIBLE, Budget(), None, BASE + timedelta(days=30)),
    )
    token = parse(child.token, ROOT.public_key)
    assert authorize(token, ALLOWED) is None
    refusals = {
        "out_of_scope": WritFacts("acme", "kv_set", Effect.READ, BASE, 0, 0, 0),
        "effect_above_ceiling": WritFacts("acme", "kv_get", Effect.WRITE, BASE, 0, 0, 0),
        "budget_exhausted": WritFacts("acme", "kv_get", Effect.READ, BASE, 2, 0, 0),
        "expired": WritFacts("acme", "kv_get", Effect.READ, BASE + timedelta(days=2), 0, 0, 0),
        "not_yet_valid": WritFacts("acme", "kv_get", Effect.READ, BASE - timedelta(1), 0, 0, 0),
    }
    for stage, facts in refusals.items():
        refusal = authorize(token, facts)
        assert refusal is not None and refusal.stage is WritStage(stage), (stage, refusal)


def test_a_childs_lineage_extends_its_parents() -> None:
    """An attenuated writ's lineage is its parent's lineage plus one new id, which is the
    child's id; a grandchild extends the child's in turn."""
    parent = mint(ROOT.private_key, OPEN)
    child = attenuate(parent.token, ROOT.public_key, OPEN)
    grandchild = attenuate(child.token, ROOT.public_key, OPEN)
    assert parent.lineage == (parent.id,)
    assert child.lineage[: len(parent.lineage)] == parent.lineage
    assert child.lineage[-1] == child.id != parent.id
    assert grandchild.lineage[: len(child.lineage)] == child.lineage
    assert len(grandchild.lineage) == 3


def test_revoking_a_parent_voids_its_children_but_revoking_a_child_spares_the_parent() -> None:
    """Revocation by id applies to every writ whose lineage holds it: revoking the parent's id
    voids the child; revoking the child's id does not void the parent."""
    parent = mint(ROOT.private_key, OPEN)
    child = attenuate(
        parent.token, ROOT.public_key, WritTerms("acme", None, None, Budget(), None, None)
    )
    assert revoked(child.lineage, frozenset({parent.id})) == parent.id
    assert revoked(parent.lineage, frozenset({parent.id})) == parent.id
    assert revoked(child.lineage, frozenset({child.id})) == child.id
    assert revoked(parent.lineage, frozenset({child.id})) is None
    assert revoked(child.lineage, frozenset()) is None


def test_a_writ_signed_by_another_root_key_does_not_parse() -> None:
    """A well-formed writ minted by a different root key fails parse() with WritError, and so
    does attenuating it under our key."""
    foreign = mint(OTHER_ROOT.private_key, OPEN)
    assert parse(foreign.token, OTHER_ROOT.public_key) is not None
    with pytest.raises(WritError):
        parse(foreign.token, ROOT.public_key)
    with pytest.raises(WritError):
        attenuate(foreign.token, ROOT.public_key, OPEN)


TAMPER_TARGET = mint(
    ROOT.private_key,
    WritTerms("acme", ("kv_get",), Effect.READ, Budget(tool_calls=3), BASE, None),
).token


@settings(max_examples=200, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(TAMPER_TARGET) - 4),
    replacement=st.sampled_from("AQgw_-9z"),
)
def test_a_tampered_writ_does_not_parse(position: int, replacement: str) -> None:
    """Changing any one character of a writ's base64 either makes parse() fail with WritError
    or leaves its authority untouched: every block and revocation id is signed, and only the
    trailing proof (the secret for appending a next block, which Biscuit checks when a block is
    appended) is not covered by a signature."""
    original = TAMPER_TARGET[position]
    if original == replacement:
        replacement = "B" if original != "B" else "C"
    tampered = TAMPER_TARGET[:position] + replacement + TAMPER_TARGET[position + 1 :]
    try:
        token = parse(tampered, ROOT.public_key)
    except WritError:
        return
    genuine = parse(TAMPER_TARGET, ROOT.public_key)
    assert token.block_count() == genuine.block_count()
    assert [token.block_source(i) for i in range(token.block_count())] == [
        genuine.block_source(i) for i in range(genuine.block_count())
    ]
    assert token.revocation_ids == genuine.revocation_ids


def test_invalid_names_cannot_enter_a_writ() -> None:
    """A tenant or tool scope with characters outside the writ alphabet is refused with
    WritError rather than spliced into Datalog."""
    with pytest.raises(WritError):
        mint(
            ROOT.private_key,
            WritTerms('acme"); check if true; ("', None, None, Budget(), None, None),
        )
    with pytest.raises(WritError):
        mint(ROOT.private_key, WritTerms(None, ("kv_*(",), None, Budget(), None, None))
