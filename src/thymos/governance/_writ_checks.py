"""Thymos's own writ checks, answered in Python from a token whose signatures Biscuit verified.

Biscuit's authorizer costs tens of microseconds a call (its Datalog engine, and the call's facts
gathered anew each time), while the checks `mint` and `attenuate` write are a handful of
comparisons: a fixed tenant, a tool name against names, prefixes and glob patterns, an effect
rank ceiling, the two bounds of a validity window and three usage ceilings. `WritChecks.of`
recognises a token made only of those, once, and reads them into plain values;
`WritChecks.refusal` then answers a call as Biscuit's `authorize` would, stage and message
included (`tests/unit/test_writ_checks.py` holds the two equal over random writs, chains of
attenuations and calls). Every other token (a third party's block, a fact, a rule, any check of
another shape) is answered by Biscuit itself, exactly as before.

The blocks are read twice. Their Datalog text (`block_source`) gives the checks; but Biscuit
prints strings without escaping them, so a string holding a quote or a line break could make a
check of another shape print like one of ours. The token's bytes give each block's symbol table,
facts, rules, scopes and keys: a block qualifies only when no string in the table (every name and
string its checks use) holds a character that could be mistaken for Datalog syntax, and it has
nothing but checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import biscuit_auth as biscuit

from ._writ import WritFacts, WritRefusal, WritStage, authorize, refusal_message

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
"""Biscuit's integers are 64-bit and its dates seconds since the epoch, given in UTC: facts
outside these it refuses to take (an exception, not an answer), so such calls go to Biscuit to
be refused alike."""

SCOPE_CACHE_MAX = 1024
"""Tool names remembered per writ with whether its scopes cover them: a run's catalog holds a
few dozen tools; the bound only stops a caller that invents names."""

_SAFE_SYMBOL = re.compile(r"[A-Za-z0-9_.:\-^$\\*?]*")
"""The characters of every name and string in the checks Thymos writes (predicates, variables,
tenants, tool names and glob patterns): no quote, space, bracket, comma or line break, so the
printed source of a block whose symbols are all of these reads back unambiguously."""

_NAME = r'"[A-Za-z0-9_.:\-]*"'
_CHECK = re.compile(
    r"check if (?:(?P<true>true)"
    rf"|request_tenant\((?P<tenant>{_NAME})\)"
    r"|tool\(\$t\), (?P<scope>.+)"
    r"|effect_rank\(\$r\), \$r <= (?P<rank>-?\d+)"
    r"|time\(\$t\), \$t (?P<bound>>=|<) (?P<date>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"
    r"|(?P<usage>tool_calls|tokens|spend)\(\$n\), \$n < (?P<limit>-?\d+));"
)
_NAMES_TERM = re.compile(rf"\[(?P<names>{_NAME}(?:, {_NAME})*)\]\.contains\(\$t\)")
_PREFIX_TERM = re.compile(rf"\$t\.starts_with\((?P<prefix>{_NAME})\)")
_PATTERN_TERM = re.compile(r'\$t\.matches\("\^(?P<body>[A-Za-z0-9_:\-.*\\]*)\$"\)')
_GLOB_TOKEN = re.compile(r"\\\.|\.\*|\.|[A-Za-z0-9_:\-]")
"""What `_scope_expression` writes for a glob: a literal dot, `.*` for `*`, `.` for `?`, and
the name characters themselves. A pattern of anything else is a regular expression Thymos did
not write, and Rust's regex engine is the only judge of it."""


@dataclass(frozen=True, slots=True)
class ScopeTest:
    """One `check if tool($t), ...` check: the tool must be one of `names`, start with one of
    `prefixes` or match one of `patterns` (whole name)."""

    names: frozenset[str]
    prefixes: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]

    def covers(self, tool: str) -> bool:
        return (
            tool in self.names
            or any(tool.startswith(prefix) for prefix in self.prefixes)
            or any(pattern.fullmatch(tool) for pattern in self.patterns)
        )


@dataclass(frozen=True, slots=True)
class WritChecks:
    """Every check of a writ made only of Thymos's own, folded: each kind is a conjunction over
    the blocks, so the narrowest bound of each kind is the writ's."""

    tenants: frozenset[str]
    """Each must equal the call's tenant (two different ones refuse every call)."""
    scopes: tuple[ScopeTest, ...]
    """Each must cover the tool."""
    effect_rank_max: int | None
    not_before: datetime | None
    """The latest lower bound: calls at or after it pass."""
    expires: datetime | None
    """The earliest upper bound: calls before it pass."""
    tool_calls_max: int | None
    """Usage below each ceiling passes (a ceiling is exclusive, as the budget's checks say)."""
    tokens_max: int | None
    usd_millicents_max: int | None
    _covered: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    """Tool name -> whether every scope test covers it (a cache, not part of the value)."""

    @staticmethod
    def of(token: biscuit.Biscuit) -> WritChecks | None:
        """The checks of a verified token, or None when any block holds anything Thymos does not
        write (such a writ is authorized by Biscuit, call by call)."""
        blocks = _wire_blocks(bytes(token.to_bytes()))
        if blocks is None or len(blocks) != token.block_count():
            return None
        folded = _Fold()
        for index, check_count in enumerate(blocks):
            lines = [line for line in token.block_source(index).splitlines() if line.strip()]
            if len(lines) != check_count:
                return None
            for line in lines:
                if not folded.add(line.strip()):
                    return None
        return folded.checks()

    @staticmethod
    def decides(facts: WritFacts) -> bool:
        """Whether these facts are ones Biscuit would take (a time in UTC since the epoch,
        64-bit usage); every real call's are (the runtime's clock gives UTC)."""
        return (
            facts.now.tzinfo is UTC
            and facts.now >= _EPOCH
            and _INT_MIN <= facts.tool_calls <= _INT_MAX
            and _INT_MIN <= facts.tokens <= _INT_MAX
            and _INT_MIN <= facts.usd_millicents <= _INT_MAX
        )

    def refusal(self, facts: WritFacts) -> WritRefusal | None:
        """None when the writ allows the call, else the earliest refusing stage with the message
        `authorize` gives. Biscuit compares the time truncated to whole seconds; every bound is
        a whole second, so comparing the exact time gives the same answers."""
        now = facts.now
        stage: WritStage | None = None
        if self.not_before is not None and now < self.not_before:
            stage = WritStage.NOT_YET_VALID
        elif self.expires is not None and now >= self.expires:
            stage = WritStage.EXPIRED
        elif not self._in_scope(facts):
            stage = WritStage.OUT_OF_SCOPE
        elif self.effect_rank_max is not None and facts.effect.rank > self.effect_rank_max:
            stage = WritStage.EFFECT_ABOVE_CEILING
        elif (
            (self.tool_calls_max is not None and facts.tool_calls >= self.tool_calls_max)
            or (self.tokens_max is not None and facts.tokens >= self.tokens_max)
            or (
                self.usd_millicents_max is not None
                and facts.usd_millicents >= self.usd_millicents_max
            )
        ):
            stage = WritStage.BUDGET_EXHAUSTED
        return None if stage is None else WritRefusal(stage, refusal_message(stage, facts))

    def _in_scope(self, facts: WritFacts) -> bool:
        if self.tenants and (len(self.tenants) > 1 or facts.tenant not in self.tenants):
            return False
        covered = self._covered.get(facts.tool)
        if covered is None:
            covered = all(scope.covers(facts.tool) for scope in self.scopes)
            if len(self._covered) >= SCOPE_CACHE_MAX:
                self._covered.clear()
            self._covered[facts.tool] = covered
        return covered


def writ_refusal(
    token: biscuit.Biscuit, checks: WritChecks | None, facts: WritFacts
) -> WritRefusal | None:
    """A writ's answer to one call: from its checks in Python when Thymos wrote them all, else
    from Biscuit's authorizer (`authorize`, with its Datalog time-out retry)."""
    if checks is not None and WritChecks.decides(facts):
        return checks.refusal(facts)
    return authorize(token, facts)


class _Fold:
    """The checks of every block read so far, each kind narrowed to its tightest bound."""

    def __init__(self) -> None:
        self.tenants: set[str] = set()
        self.scopes: list[ScopeTest] = []
        self.rank: int | None = None
        self.not_before: datetime | None = None
        self.expires: datetime | None = None
        self.usage: dict[str, int] = {}

    def add(self, line: str) -> bool:
        """Fold one printed check in; False when it is not one Thymos writes."""
        found = _CHECK.fullmatch(line)
        if found is None:
            return False
        if found["true"] is not None:
            return True
        if found["scope"] is not None:
            scope = _scope_test(found["scope"])
            if scope is None:
                return False
            self.scopes.append(scope)
        elif found["rank"] is not None:
            rank = int(found["rank"])
            self.rank = rank if self.rank is None else min(self.rank, rank)
        elif found["date"] is not None:
            moment = datetime.strptime(found["date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if found["bound"] == ">=":
                self.not_before = max(self.not_before or moment, moment)
            else:
                self.expires = min(self.expires or moment, moment)
        elif found["usage"] is not None:
            limit = int(found["limit"])
            self.usage[found["usage"]] = min(self.usage.get(found["usage"], limit), limit)
        else:
            self.tenants.add(found["tenant"][1:-1])
        return True

    def checks(self) -> WritChecks:
        return WritChecks(
            tenants=frozenset(self.tenants),
            scopes=tuple(self.scopes),
            effect_rank_max=self.rank,
            not_before=self.not_before,
            expires=self.expires,
            tool_calls_max=self.usage.get("tool_calls"),
            tokens_max=self.usage.get("tokens"),
            usd_millicents_max=self.usage.get("spend"),
        )


def _scope_test(expression: str) -> ScopeTest | None:
    """The scope test of `a || b || ...`, each term one `_scope_expression` writes; None for
    anything else."""
    names: set[str] = set()
    prefixes: list[str] = []
    patterns: list[re.Pattern[str]] = []
    for term in expression.split(" || "):
        if term == "true":
            prefixes.append("")  # every name starts with the empty string
        elif term == "false":
            continue
        elif found := _NAMES_TERM.fullmatch(term):
            names.update(name[1:-1] for name in found["names"].split(", "))
        elif found := _PREFIX_TERM.fullmatch(term):
            prefixes.append(found["prefix"][1:-1])
        elif (found := _PATTERN_TERM.fullmatch(term)) and (pattern := _glob_pattern(found["body"])):
            patterns.append(pattern)
        else:
            return None
    return ScopeTest(frozenset(names), tuple(prefixes), tuple(patterns))


def _glob_pattern(body: str) -> re.Pattern[str] | None:
    """Python's equivalent of the regular expression `^body$` that `_scope_expression` writes
    for a glob. Both engines' `.` match any character but a line feed, and `fullmatch` ends at
    the end of the name as Rust's `$` does."""
    tokens = _GLOB_TOKEN.findall(body)
    if "".join(tokens) != body:
        return None
    parts = [
        r"\." if token == "\\." else token if token in (".*", ".") else re.escape(token)
        for token in tokens
    ]
    return re.compile("".join(parts))


_BISCUIT_FIELDS = frozenset({1, 2, 3, 4})
"""`Biscuit`: root key id, the authority block, the other blocks, the proof."""
_SIGNED_BLOCK_FIELDS = frozenset({1, 2, 3, 5})
"""`SignedBlock`: the block, the next key, the signature, the version (field 4, a third party's
signature, is not among them)."""
_BLOCK_FIELDS = frozenset({1, 2, 3, 6})
"""`Block`: symbols, context, version and checks; no facts (4), rules (5), scopes (7), public
keys (8), nor any field a later schema adds."""


def _wire_blocks(data: bytes) -> list[int] | None:
    """For a serialized Biscuit, the number of checks in each block (authority first), or None
    when any block is not plain: a third party's signature, a fact, a rule, a scope, a public
    key, any field these schemas do not know, or a symbol outside `_SAFE_SYMBOL`.

    The wire format is Biscuit's protobuf schema (`schema.proto`): `Biscuit` holds the authority
    block (field 2) and the others (3) as `SignedBlock`s, each holding its serialized `Block`
    (field 1)."""
    try:
        fields = _fields(data)
        if any(number not in _BISCUIT_FIELDS for number, _ in fields):
            return None
        counts = []
        for number, signed in fields:
            if number not in (2, 3):
                continue
            inner = _fields(_bytes(signed))
            if any(n not in _SIGNED_BLOCK_FIELDS for n, _ in inner):
                return None
            [block] = [value for n, value in inner if n == 1]
            checks = 0
            for n, value in _fields(_bytes(block)):
                if n not in _BLOCK_FIELDS:
                    return None
                if n == 1 and not _SAFE_SYMBOL.fullmatch(_bytes(value).decode()):
                    return None
                checks += n == 6
            counts.append(checks)
        return counts
    except ValueError:  # a malformed message (UnicodeDecodeError is a ValueError)
        return None


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("a message field holds a number where bytes belong")
    return value


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The fields of one protobuf message: (field number, varint or bytes)."""
    out: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, at = _varint(data, at)
            out.append((number, value))
        elif kind == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise ValueError("a field runs past its message")
            out.append((number, data[at : at + size]))
            at += size
        elif kind in (1, 5):
            at += 8 if kind == 1 else 4
            out.append((number, 0))
        else:
            raise ValueError(f"wire type {kind} is not in Biscuit's schema")
    if at != len(data):
        raise ValueError("a fixed-size field runs past its message")
    return out


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("a truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


__all__ = ["SCOPE_CACHE_MAX", "ScopeTest", "WritChecks", "writ_refusal"]
