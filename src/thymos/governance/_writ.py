"""Writs: Biscuit tokens that carry a run's authority, and their authorizer.

A writ is minted by the server's root key with one authority block of Datalog checks:

    check if request_tenant("acme");                          tenant
    check if tool($t), ["fs_read"].contains($t) || $t.starts_with("kv_");   tool scopes
    check if effect_rank($r), $r <= 1;                       effect ceiling
    check if time($t), $t >= 2026-...;  check if time($t), $t < 2026-...;   validity window
    check if tool_calls($n), $n < 10;  (tokens, spend likewise)             budgets

The authorizer supplies the facts of one proposed call (tool, effect rank, time, usage so far).
Attenuation appends a block of further checks: a holder can only narrow a writ, never widen it,
because every block's checks must pass. A writ's id is BLAKE3 of the revocation id of its last
block; revoking an id voids every writ that contains that block, so revoking a writ voids all
writs derived from it. Anyone with the root public key can verify a writ offline.

`authorize` is Biscuit's answer and the reference; a run's calls are usually answered by
`_writ_checks.WritChecks`, the same checks read once and compared in Python, which gives the same
answer (stage and message) for every writ made only of the checks this module writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import biscuit_auth as biscuit

from thymos.core import Budget, Effect, blake3_hex

WRIT_FORMAT = "biscuit-v3"
DATALOG_TIME_MAX = timedelta(milliseconds=50)
"""Biscuit's default is 1 ms of Datalog per authorization, which a loaded machine can exceed;
our checks are a handful of comparisons, so this bound only stops a pathological writ."""
DATALOG_TIME_RETRY = timedelta(seconds=10)
"""A second try's time bound. Biscuit reports a time-out like any other limit ("Reached Datalog
execution limits"), and a time-out depends on the machine's load, not on the writ: it must never
become a recorded refusal that replay, on an idle machine, would decide the other way. Only a writ
that exceeds the limits again with this much time (its facts or iterations, which are
deterministic) is refused."""
_LIMITS_REACHED = "Reached Datalog execution limits"

_NAME = re.compile(r"[A-Za-z0-9_.:\-]+")
_GLOB_CHARS = re.compile(r"[*?\[\]]")


class WritStage(StrEnum):
    """What a failed writ check means, in the compiler's stage order."""

    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    OUT_OF_SCOPE = "out_of_scope"
    EFFECT_ABOVE_CEILING = "effect_above_ceiling"
    BUDGET_EXHAUSTED = "budget_exhausted"


STAGE_ORDER = list(WritStage)

# The predicate each of our checks tests, and the stage its failure means.
_PREDICATE_STAGE = {
    "request_tenant": WritStage.OUT_OF_SCOPE,
    "tool": WritStage.OUT_OF_SCOPE,
    "effect_rank": WritStage.EFFECT_ABOVE_CEILING,
    "tool_calls": WritStage.BUDGET_EXHAUSTED,
    "tokens": WritStage.BUDGET_EXHAUSTED,
    "spend": WritStage.BUDGET_EXHAUSTED,
}
_FAILED_CHECK = re.compile(r"Check n°\d+ in block n°\d+: check if (\w+)\(")


class WritError(ValueError):
    """A writ that does not parse or verify under the root key, or invalid writ terms."""


@dataclass(frozen=True, slots=True)
class WritTerms:
    """The authority one block grants (for attenuation: narrows to)."""

    tenant: str | None
    tools: tuple[str, ...] | None
    effect_ceiling: Effect | None
    budget: Budget
    not_before: datetime | None
    expires: datetime | None


@dataclass(frozen=True, slots=True)
class Writ:
    token: str
    """The whole token, URL-safe base64 (what the ledger records)."""
    id: str
    """BLAKE3 of the last block's revocation id: the id to revoke this writ by."""
    lineage: tuple[str, ...]
    """The ids of every block, oldest first: revoking any of them voids this writ."""


_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True, slots=True)
class WritRecord:
    """A run's writ as its first entry records it (`writ`): the whole token and, for readers
    who do not parse Biscuit, its id, lineage and validity window."""

    token: str
    id: str
    lineage: tuple[str, ...]
    not_before: str
    expires: str
    root_public_key: str
    format: str = WRIT_FORMAT

    @staticmethod
    def issued(writ: Writ, terms: WritTerms, root: biscuit.PublicKey) -> WritRecord:
        """The record of a writ just minted or attenuated with `terms` (a window is required)."""
        assert terms.not_before is not None and terms.expires is not None
        return WritRecord(
            token=writ.token,
            id=writ.id,
            lineage=writ.lineage,
            not_before=terms.not_before.strftime(_TIME_FORMAT),
            expires=terms.expires.replace(microsecond=0).strftime(_TIME_FORMAT),
            root_public_key=bytes(root.to_bytes()).hex(),
        )

    @staticmethod
    def of(body: Mapping[str, Any] | None) -> WritRecord:
        """The record in a `run_started` body's `writ`; ValueError when it is not one."""
        if not isinstance(body, Mapping):
            raise ValueError("the run records no writ")
        lineage = body.get("lineage")
        fields = (body.get(name) for name in ("token", "id", "not_before", "expires"))
        if not all(isinstance(v, str) for v in fields) or not isinstance(lineage, list):
            raise ValueError("the run's writ record is malformed")
        return WritRecord(
            token=str(body["token"]),
            id=str(body["id"]),
            lineage=tuple(str(item) for item in lineage),
            not_before=str(body["not_before"]),
            expires=str(body["expires"]),
            root_public_key=str(body.get("root_public_key", "")),
            format=str(body.get("format", WRIT_FORMAT)),
        )

    @property
    def expires_at(self) -> datetime:
        return datetime.strptime(self.expires, _TIME_FORMAT).replace(tzinfo=UTC)

    def as_body(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "not_before": self.not_before,
            "expires": self.expires,
            "id": self.id,
            "lineage": list(self.lineage),
            "token": self.token,
            "root_public_key": self.root_public_key,
        }

    def shown(self) -> dict[str, Any]:
        """What the run record shows of it: everything but the token."""
        return {k: v for k, v in self.as_body().items() if k != "token"}


@dataclass(frozen=True, slots=True)
class WritFacts:
    """The facts of one proposed call, given to the authorizer."""

    tenant: str
    tool: str
    effect: Effect
    now: datetime
    tool_calls: int
    tokens: int
    usd_millicents: int


@dataclass(frozen=True, slots=True)
class WritRefusal:
    stage: WritStage
    message: str


def _string(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise WritError(f"{value!r} cannot appear in a writ (letters, digits, _ . : - only)")
    return f'"{value}"'


def _scope_expression(globs: Sequence[str]) -> str:
    """Datalog matching a tool name against exact names and prefix globs (`fs_*`).

    Exact names and trailing-star globs use `contains` and `starts_with`, which cost nothing;
    any other glob falls back to a regular expression."""
    exact = [g for g in globs if not _GLOB_CHARS.search(g)]
    terms = []
    if exact:
        terms.append("[" + ", ".join(_string(g) for g in exact) + "].contains($t)")
    for glob in globs:
        if not _GLOB_CHARS.search(glob):
            continue
        stem = glob[:-1]
        if glob.endswith("*") and not _GLOB_CHARS.search(stem):
            terms.append(f"$t.starts_with({_string(stem)})" if stem else "true")
        else:
            if not re.fullmatch(r"[A-Za-z0-9_.:\-*?]+", glob):
                raise WritError(f"tool scope {glob!r} uses characters a writ cannot hold")
            pattern = "^" + glob.replace(".", "\\\\.").replace("*", ".*").replace("?", ".") + "$"
            terms.append(f'$t.matches("{pattern}")')
    return " || ".join(terms) if terms else "false"


def _datalog_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _checks(terms: WritTerms) -> str:
    lines = []
    if terms.tenant is not None:
        lines.append(f"check if request_tenant({_string(terms.tenant)});")
    if terms.tools is not None:
        lines.append(f"check if tool($t), {_scope_expression(terms.tools)};")
    if terms.effect_ceiling is not None:
        lines.append(f"check if effect_rank($r), $r <= {terms.effect_ceiling.rank};")
    if terms.not_before is not None:
        lines.append(f"check if time($t), $t >= {_datalog_time(terms.not_before)};")
    if terms.expires is not None:
        lines.append(f"check if time($t), $t < {_datalog_time(terms.expires)};")
    budget = terms.budget
    for predicate, limit in (
        ("tool_calls", budget.tool_calls),
        ("tokens", budget.tokens),
        ("spend", budget.usd_millicents),
    ):
        if limit is not None:
            lines.append(f"check if {predicate}($n), $n < {int(limit)};")
    return "\n".join(lines)


def _writ_of(token: biscuit.Biscuit) -> Writ:
    lineage = tuple(blake3_hex(bytes.fromhex(r)) for r in token.revocation_ids)
    return Writ(token=token.to_base64(), id=lineage[-1], lineage=lineage)


def mint(root: biscuit.PrivateKey, terms: WritTerms) -> Writ:
    """A new writ signed by the root key."""
    source = _checks(terms) or "check if true;"
    return _writ_of(biscuit.BiscuitBuilder(source).build(root))


def attenuate(token: str, root: biscuit.PublicKey, terms: WritTerms) -> Writ:
    """A narrower writ: the parent's blocks plus one block of further checks."""
    parent = parse(token, root)
    block = biscuit.BlockBuilder(_checks(terms) or "check if true;")
    return _writ_of(parent.append(block))


def parse(token: str, root: biscuit.PublicKey) -> biscuit.Biscuit:
    """Parse and verify a writ's signatures under the root public key."""
    try:
        return biscuit.Biscuit.from_base64(token, root)
    except Exception as exc:  # the binding raises several validation types
        raise WritError(f"the writ does not verify under the root key: {exc}") from exc


def lineage_of(token: biscuit.Biscuit) -> tuple[str, ...]:
    return tuple(blake3_hex(bytes.fromhex(r)) for r in token.revocation_ids)


_ALLOW = biscuit.Policy("allow if true")
_FACT_CACHE_MAX = 4096
"""Parsed facts are reused: parsing is most of an authorization's cost, and a run's facts repeat
(its tenant, its tools, the current second)."""
_fact_cache: dict[tuple[str, object], biscuit.Fact] = {}


def _fact(predicate: str, value: object) -> biscuit.Fact:
    key = (predicate, value)
    fact = _fact_cache.get(key)
    if fact is None:
        if len(_fact_cache) >= _FACT_CACHE_MAX:
            _fact_cache.clear()
        fact = biscuit.Fact(f"{predicate}({{v}})", {"v": value})
        _fact_cache[key] = fact
    return fact


def authorize(token: biscuit.Biscuit, facts: WritFacts) -> WritRefusal | None:
    """None when the writ allows this call; otherwise the earliest stage that refuses it."""
    builder = biscuit.AuthorizerBuilder()
    # Biscuit dates have one-second precision; truncating here makes the time fact reusable.
    now = facts.now.replace(microsecond=0)
    for predicate, value in (
        ("request_tenant", facts.tenant),
        ("tool", facts.tool),
        ("effect_rank", facts.effect.rank),
        ("time", now),
        ("tool_calls", facts.tool_calls),
        ("tokens", facts.tokens),
        ("spend", facts.usd_millicents),
    ):
        builder.add_fact(_fact(predicate, value))
    builder.add_policy(_ALLOW)
    try:
        _authorize_within(builder, token, DATALOG_TIME_MAX)
    except biscuit.AuthorizationError as exc:
        if _LIMITS_REACHED not in str(exc):
            return _refusal(str(exc), facts)
        try:
            _authorize_within(builder, token, DATALOG_TIME_RETRY)
        except biscuit.AuthorizationError as again:
            return _refusal(str(again), facts)
    return None


def _authorize_within(
    builder: biscuit.AuthorizerBuilder, token: biscuit.Biscuit, max_time: timedelta
) -> None:
    # biscuit-python's type stubs omit the limits accessors that its runtime provides.
    limits = builder.limits()  # type: ignore[attr-defined]
    limits.max_time = max_time
    builder.set_limits(limits)  # type: ignore[attr-defined]
    builder.build(token).authorize()


def _refusal(message: str, facts: WritFacts) -> WritRefusal:
    """Map biscuit's failure report to the earliest refusing stage.

    The report lists each failed check with its source (`Check n°1 in block n°0: check if
    effect_rank($r), $r <= 1`); we wrote those checks, so the predicate each tests names its stage,
    and for `time` the comparison says which bound failed."""
    stages: list[WritStage] = []
    for part in message.split("Check n°")[1:]:
        found = _FAILED_CHECK.match("Check n°" + part)
        if found is None:
            continue
        predicate = found.group(1)
        if predicate == "time":
            stages.append(WritStage.NOT_YET_VALID if "$t >=" in part else WritStage.EXPIRED)
        elif predicate in _PREDICATE_STAGE:
            stages.append(_PREDICATE_STAGE[predicate])
    if not stages:
        return WritRefusal(WritStage.OUT_OF_SCOPE, f"the writ refuses this call: {message}")
    first = min(stages, key=STAGE_ORDER.index)
    return WritRefusal(first, refusal_message(first, facts))


def refusal_message(stage: WritStage, facts: WritFacts) -> str:
    """What a refusal at `stage` says (the same whoever answered the check)."""
    return {
        WritStage.NOT_YET_VALID: "the run's writ is not valid yet",
        WritStage.EXPIRED: "the run's writ has expired",
        WritStage.OUT_OF_SCOPE: f"the run's writ does not cover tool {facts.tool!r}",
        WritStage.EFFECT_ABOVE_CEILING: (
            f"tool {facts.tool!r} has effect {facts.effect.value}, above the writ's ceiling"
        ),
        WritStage.BUDGET_EXHAUSTED: "the run's writ budget is spent",
    }[stage]


def revoked(lineage: Iterable[str], revocations: frozenset[str]) -> str | None:
    """The first id in a writ's lineage that is revoked, if any."""
    return next((ident for ident in lineage if ident in revocations), None)


def new_root_key() -> biscuit.KeyPair:
    return biscuit.KeyPair()


def private_key_from_hex(text: str) -> biscuit.PrivateKey:
    try:
        # biscuit-python 0.4 takes the algorithm; its bundled type stubs predate that.
        return biscuit.PrivateKey.from_bytes(  # type: ignore[call-arg]
            bytes.fromhex(text.strip()),
            biscuit.Algorithm.Ed25519,  # type: ignore[attr-defined]
        )
    except Exception as exc:
        raise WritError("the root key is not a hex-encoded Ed25519 private key") from exc


def key_pair(private: biscuit.PrivateKey) -> biscuit.KeyPair:
    return biscuit.KeyPair.from_private_key(private)


def public_key_hex(public: biscuit.PublicKey) -> str:
    return bytes(public.to_bytes()).hex()


Authorizer = Callable[[biscuit.Biscuit, WritFacts], WritRefusal | None]
"""How a writ is asked about one call by Biscuit's authorizer (`authorize`); the compiler takes
one to compare its own checks against (`compile_intent`)."""
