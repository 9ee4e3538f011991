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


_NAME_LITERAL = r'"[A-Za-z0-9_.:\-]*"'
_SCOPE_TERM = (
    rf"(?:\[{_NAME_LITERAL}(?:, {_NAME_LITERAL})*\]\.contains\(\$t\)"
    rf"|\$t\.starts_with\({_NAME_LITERAL}\)"
    r'|\$t\.matches\("[A-Za-z0-9_.:\-*?^$\\]*"\)'
    r"|true|false)"
)
_MONOTONE_CHECK = re.compile(
    r"check if (?:true"
    rf"|request_tenant\({_NAME_LITERAL}\)"
    rf"|tool\(\$t\), {_SCOPE_TERM}(?: \|\| {_SCOPE_TERM})*"
    r"|effect_rank\(\$r\), \$r <= \d+"
    r"|time\(\$t\), \$t (?:>=|<) [0-9TZ:\-]+"
    r"|(?:tool_calls|tokens|spend)\(\$n\), \$n < \d+);"
)
"""The checks `_checks` writes, and nothing else: a scope test may only look at the tool name."""


def is_monotone(token: biscuit.Biscuit) -> bool:
    """True when every block holds only the checks this module writes: a fixed tenant, a scope
    test on the tool name, an effect ceiling, time bounds and usage ceilings.

    For such a writ, whether a call is allowed depends on its tool and effect, and otherwise only
    through comparisons that are monotone in the time and usage facts. `authorize_span` relies on
    this; a writ with any other check (a third party may attenuate a token by hand) must be
    authorized call by call."""
    for index in range(token.block_count()):
        for line in token.block_source(index).splitlines():
            if line.strip() and not _MONOTONE_CHECK.fullmatch(line.strip()):
                return False
    return True


def authorize_span(
    token: biscuit.Biscuit,
    *,
    tenant: str,
    tool: str,
    effect: Effect,
    earliest: datetime,
    latest: datetime,
    tool_calls: int,
    tokens: int,
    usd_millicents: int,
) -> WritRefusal | None:
    """Authorize every call of one tool and effect made between `earliest` and `latest` with usage
    at most the given maxima, in two authorizations. Sound only for `is_monotone` writs: a lower
    time bound is hardest at the earliest time, an upper one at the latest, a usage ceiling at the
    maximum usage; passing both extremes means every call in between passes."""
    for moment in (earliest, latest):
        refusal = authorize(
            token, WritFacts(tenant, tool, effect, moment, tool_calls, tokens, usd_millicents)
        )
        if refusal is not None:
            return refusal
    return None


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
    return WritRefusal(first, _explain(first, facts))


def _explain(stage: WritStage, facts: WritFacts) -> str:
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
"""How the compiler asks a writ about one call: `authorize`, or a `SpanAuthorizer`."""

_SPAN_TIME_MIN = timedelta(minutes=1)
_SPAN_HALVINGS_MAX = 12
"""Tries at widening a box near a limit before answering each call exactly."""


@dataclass(slots=True)
class _Box:
    earliest: datetime
    latest: datetime
    tool_calls: int
    tokens: int
    usd_millicents: int

    def holds(self, facts: WritFacts, now: datetime) -> bool:
        return (
            self.earliest <= now <= self.latest
            and facts.tool_calls <= self.tool_calls
            and facts.tokens <= self.tokens
            and facts.usd_millicents <= self.usd_millicents
        )


class SpanAuthorizer:
    """`authorize` for many calls of one writ, answering most from spans already proven allowed.

    For a writ made only of Thymos's own monotone checks (`is_monotone`), whether a call is
    allowed depends on its tenant, tool and effect, and otherwise only monotonically on the time
    and usage: a box of times [earliest, latest] and usage up to some maxima is wholly allowed
    when its two extreme corners are (`authorize_span`). Per tenant, tool and effect it keeps
    the largest box proven so far, widening it ahead of the calls (doubling; near a limit, as
    much of the doubling as proves), so a run's calls cost a logarithmic number of Biscuit
    authorizations. Anything outside a proven box, any other writ, and every refusal is answered
    by `authorize` itself, so refusals name their stage exactly as they always do."""

    def __init__(self) -> None:
        self._boxes: dict[tuple[int, str, str, Effect], _Box] = {}
        self._exact: set[tuple[int, str, str, Effect]] = set()
        self._monotone: dict[int, bool] = {}

    def __call__(self, token: biscuit.Biscuit, facts: WritFacts) -> WritRefusal | None:
        ident = id(token)
        monotone = self._monotone.get(ident)
        if monotone is None:
            monotone = self._monotone[ident] = is_monotone(token)
        key = (ident, facts.tenant, facts.tool, facts.effect)
        if not monotone or key in self._exact:
            return authorize(token, facts)
        now = facts.now.replace(microsecond=0)
        box = self._boxes.get(key)
        if box is not None and box.holds(facts, now):
            return None
        tight = _Box(
            min(box.earliest, now) if box else now,
            max(box.latest, now) if box else now,
            max(box.tool_calls, facts.tool_calls) if box else facts.tool_calls,
            max(box.tokens, facts.tokens) if box else facts.tokens,
            max(box.usd_millicents, facts.usd_millicents) if box else facts.usd_millicents,
        )
        # Ahead of the calls: double the box; near a limit, as much of that as proves (halving
        # the margin each try), so a run that nears a budget still costs a few proofs per halving
        # of its distance to the limit rather than one authorization per call.
        for halvings in range(_SPAN_HALVINGS_MAX + 1):
            wide = _Box(
                tight.earliest,
                (
                    tight.latest + max(_SPAN_TIME_MIN, tight.latest - tight.earliest) / 2**halvings
                ).replace(microsecond=0),
                tight.tool_calls + (tight.tool_calls + 1) // 2**halvings,
                tight.tokens + (tight.tokens + 1) // 2**halvings,
                tight.usd_millicents + (tight.usd_millicents + 1) // 2**halvings,
            )
            if self._proven(token, facts, wide):
                self._boxes[key] = wide
                return None
        # At a limit (this very call may be refused): ask about each call from now on, as
        # `authorize` always does, so a refusal names its stage.
        self._exact.add(key)
        return authorize(token, facts)

    @staticmethod
    def _proven(token: biscuit.Biscuit, facts: WritFacts, box: _Box) -> bool:
        return (
            authorize_span(
                token,
                tenant=facts.tenant,
                tool=facts.tool,
                effect=facts.effect,
                earliest=box.earliest,
                latest=box.latest,
                tool_calls=box.tool_calls,
                tokens=box.tokens,
                usd_millicents=box.usd_millicents,
            )
            is None
        )
