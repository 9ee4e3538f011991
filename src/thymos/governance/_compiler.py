"""The compiler: a pure function from an intent and the run's authority to a decision.

Stages run in a fixed order and the first that refuses decides; each refusal has a typed reason
that is recorded in the ledger and shown to cognition on its next turn:

1. tool known (`unknown_tool`)
2. writ not revoked (`revoked`), checked against the writ's whole lineage
3. writ in its validity window (`not_yet_valid`, `expired`)
4. tool in the writ's scopes (`out_of_scope`)
5. tool's effect under the writ's ceiling (`effect_above_ceiling`)
6. within the writ's budgets (`budget_exhausted`)
7. arguments valid against the tool's JSON Schema (`invalid_arguments`)
8. policy: `forbid` rejects (`policy_denied`); an `@approval` permit suspends
9. for `delegate` only, the delegation narrows the run's authority (`delegation_too_deep`,
   `delegation_exceeds_authority`, or `invalid_arguments` for a scope matching no tool; see
   `_delegation.py`)

Stages 3 to 6 are the writ's own Datalog checks: answered in Python from the checks read once
from the token (`WritChecks`) when Thymos wrote every one of them, else evaluated by the Biscuit
authorizer; both give the same answer (`tests/unit/test_writ_checks.py`). Approving a
suspended proposal re-runs every stage at execution time, so an expired, revoked or over-budget
writ is not rescued by an old approval. Every decision carries the facts it was made on (time
and usage) and the policy-set hash, so replay can check it from the ledger alone.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import biscuit_auth as biscuit
import cedarpy
import jsonschema
from jsonschema.protocols import Validator

from thymos.core import (
    Effect,
    Intent,
    Pending,
    Risk,
    ToolSource,
    ToolSpec,
    Usage,
    canonical_bytes,
    document_hash,
    match_scope,
    rfc3339_from_us,
)

from ._delegation import DELEGATE_TOOL, DelegationAsk, DelegationBounds, check_delegation
from ._policy import PolicyCall, PolicyDecision, PolicySet
from ._schema import Acceptor, fast_acceptor
from ._writ import Authorizer, WritFacts, WritRefusal, revoked
from ._writ_checks import WritChecks, writ_refusal

COMPILER_VERSION = "thymos-compiler/3"
"""Recorded with every decision; replay can require a version (`require_compiler`). Version 3
added the delegation stage (9); every earlier decision is decided alike by it."""

ARG_ERRORS_MAX = 5
"""Cognition gets the first few schema errors; more would drown the useful one."""


class RejectionReason(StrEnum):
    UNKNOWN_TOOL = "unknown_tool"
    REVOKED = "revoked"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    OUT_OF_SCOPE = "out_of_scope"
    EFFECT_ABOVE_CEILING = "effect_above_ceiling"
    BUDGET_EXHAUSTED = "budget_exhausted"
    INVALID_ARGUMENTS = "invalid_arguments"
    POLICY_DENIED = "policy_denied"
    DELEGATION_TOO_DEEP = "delegation_too_deep"
    DELEGATION_EXCEEDS_AUTHORITY = "delegation_exceeds_authority"
    APPROVAL_DENIED = "approval_denied"


@dataclass(frozen=True, slots=True)
class Basis:
    """What a decision was made on, recorded with it: the time, usage so far, and the policy."""

    authorized_at: str
    tool_calls: int
    tokens: int
    usd_millicents: int
    policy_hash: str
    catalog_hash: str
    policies: tuple[str, ...] = ()

    def as_body(self) -> dict[str, Any]:
        return {
            "authority": {
                "authorized_at": self.authorized_at,
                "tool_calls": self.tool_calls,
                "tokens": self.tokens,
                "usd_millicents": self.usd_millicents,
            },
            "policy_hash": self.policy_hash,
            "catalog_hash": self.catalog_hash,
            "policies": list(self.policies),
        }


@dataclass(frozen=True, slots=True)
class Staged:
    """The intent may execute."""

    tool: ToolSpec
    basis: Basis


@dataclass(frozen=True, slots=True)
class Suspended:
    """The intent waits for `quorum` distinct approvals on `channel`."""

    tool: ToolSpec
    basis: Basis
    channel: str
    quorum: int


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectionReason
    message: str
    details: Mapping[str, Any]
    basis: Basis

    def as_body(self) -> dict[str, Any]:
        return {
            "reason": self.reason.value,
            "message": self.message,
            "details": dict(self.details),
            **self.basis.as_body(),
        }


Decision = Staged | Suspended | Rejected


@dataclass(frozen=True, slots=True)
class Authority:
    """What a run may do: its writ (parsed once), the policy and the run's policy entities."""

    run_id: str
    tenant: str
    writ: biscuit.Biscuit
    lineage: tuple[str, ...]
    policy: PolicySet
    entities: cedarpy.Entities = field(repr=False)
    delegation: DelegationBounds | None = None
    """What the run may hand on to a child (read from its `run_started`); None: nothing, so
    every `delegate` call is refused."""
    checks: WritChecks | None = field(init=False, repr=False, compare=False)
    """The writ's checks read once into plain values (`WritChecks.of`), or None when it holds
    any check Thymos does not write: then Biscuit answers every call."""

    def __post_init__(self) -> None:
        # The writ's signatures were verified when it was parsed; its checks are read here once.
        object.__setattr__(self, "checks", WritChecks.of(self.writ))

    def authorize(self, facts: WritFacts) -> WritRefusal | None:
        """The writ's answer to one call (`writ_refusal`)."""
        return writ_refusal(self.writ, self.checks, facts)


class ToolCatalog:
    """The registered tool specs with their compiled argument validators (built once).

    A catalog is content-addressed like a policy set: `document()` is what the ledger's
    decisions depend on (every spec, sorted by name), `hash` its address (each decision records
    it as `catalog_hash`), and `from_document` rebuilds the very catalog for replay."""

    def __init__(self, specs: Mapping[str, ToolSpec]) -> None:
        self._specs = dict(specs)
        self.hash = document_hash(self.document())
        self._validators: dict[str, Validator] = {}
        self._acceptors: dict[str, Acceptor | None] = {}
        for name, spec in self._specs.items():
            cls = jsonschema.validators.validator_for(spec.input_schema)
            cls.check_schema(dict(spec.input_schema))
            self._validators[name] = cls(spec.input_schema)
            self._acceptors[name] = fast_acceptor(spec.input_schema)

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    def specs(self) -> list[ToolSpec]:
        return [self._specs[name] for name in sorted(self._specs)]

    def document(self) -> list[dict[str, Any]]:
        return [spec.as_dict() for spec in self.specs()]

    @staticmethod
    def from_document(document: Any) -> ToolCatalog:
        """The catalog a stored document describes; ValueError when it is not one."""
        if not isinstance(document, list):
            raise ValueError("a tool catalog is a list of tool specs")
        specs: dict[str, ToolSpec] = {}
        for item in document:
            try:
                spec = ToolSpec(
                    name=item["name"],
                    description=item["description"],
                    input_schema=item["input_schema"],
                    effect=Effect(item["effect"]),
                    risk=Risk(item["risk"]),
                    idempotent=bool(item["idempotent"]),
                    compensable=bool(item["compensable"]),
                    source=ToolSource(item["source"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"a tool catalog holds a malformed spec: {exc}") from None
            specs[spec.name] = spec
        try:
            return ToolCatalog(specs)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"a tool catalog holds an invalid schema: {exc.message}") from None

    def names(self) -> list[str]:
        return sorted(self._specs)

    def match(self, scope: str) -> list[str]:
        """The tools a scope covers, by the registry's own rule (`match_scope`)."""
        return match_scope(self._specs, scope)

    def argument_errors(self, name: str, args: Any) -> list[dict[str, str]]:
        """Schema errors of `args` for tool `name` (empty when valid), most specific first."""
        acceptor = self._acceptors[name]
        if acceptor is not None and acceptor(args):
            return []
        errors = sorted(self._validators[name].iter_errors(args), key=lambda e: list(e.path))
        return [
            {"path": "/" + "/".join(str(p) for p in error.path), "message": error.message}
            for error in errors[:ARG_ERRORS_MAX]
        ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=256)
def _time_text(moment: datetime) -> str:
    """The decision time at the writ's own precision (whole seconds), as RFC 3339 (memoised: a
    turn's decisions, live or replayed, share their time)."""
    return rfc3339_from_us((moment - _EPOCH) // timedelta(seconds=1) * 1_000_000)[:-8] + "Z"


def compile_intent(
    intent: Intent,
    *,
    catalog: ToolCatalog,
    authority: Authority,
    usage: Usage,
    now: datetime,
    revocations: frozenset[str],
    authorizer: Authorizer | None = None,
) -> Decision:
    """Decide one intent. Pure: the same inputs always give the same decision. The writ's
    checks are answered by `authority.authorize`; an `authorizer` answers them instead (the
    property tests pass Biscuit's `authorize` to compare the two)."""
    tokens = usage.input_tokens + usage.output_tokens
    basis = Basis(
        _time_text(now),
        usage.tool_calls,
        tokens,
        usage.usd_millicents,
        authority.policy.hash,
        catalog.hash,
    )
    spec = catalog.get(intent.tool)
    if spec is None:
        return Rejected(
            RejectionReason.UNKNOWN_TOOL,
            f"there is no tool named {intent.tool!r}",
            {"tool": intent.tool},
            basis,
        )
    gone = revoked(authority.lineage, revocations)
    if gone is not None:
        return Rejected(
            RejectionReason.REVOKED, "the run's writ has been revoked", {"writ_id": gone}, basis
        )
    facts = WritFacts(
        authority.tenant,
        spec.name,
        Effect(spec.effect),
        now,
        usage.tool_calls,
        tokens,
        usage.usd_millicents,
    )
    refusal = (
        authority.authorize(facts) if authorizer is None else authorizer(authority.writ, facts)
    )
    if refusal is not None:
        return Rejected(
            RejectionReason(refusal.stage.value), refusal.message, {"tool": spec.name}, basis
        )
    if intent.args_error is not None:
        return Rejected(
            RejectionReason.INVALID_ARGUMENTS,
            f"arguments for {intent.tool!r} could not be read: {intent.args_error}",
            {"errors": [{"message": intent.args_error}]},
            basis,
        )
    shown = catalog.argument_errors(intent.tool, intent.args)
    if shown:
        return Rejected(
            RejectionReason.INVALID_ARGUMENTS,
            f"arguments for {intent.tool!r} do not match its schema: {shown[0]['message']}",
            {"errors": shown},
            basis,
        )
    call = PolicyCall(
        run_id=authority.run_id,
        tool=spec,
        arguments=canonical_bytes(intent.args).decode() if authority.policy.reads_arguments else "",
        tool_calls=usage.tool_calls,
        tokens=tokens,
        usd_millicents=usage.usd_millicents,
    )
    decision = authority.policy.decide(call, authority.entities)
    decided = _apply_policy(spec, basis, decision)
    if spec.name != DELEGATE_TOOL or isinstance(decided, Rejected):
        return decided
    narrowed = check_delegation(
        DelegationAsk.of(intent.args), authority.delegation, catalog.match, usage, now
    )
    if narrowed is None:
        return decided
    return Rejected(
        RejectionReason(narrowed.reason), narrowed.message, narrowed.details, decided.basis
    )


def _apply_policy(spec: ToolSpec, basis: Basis, decision: PolicyDecision) -> Decision:
    decided = Basis(
        basis.authorized_at,
        basis.tool_calls,
        basis.tokens,
        basis.usd_millicents,
        decision.policy_hash,
        basis.catalog_hash,
        decision.policies,
    )
    if decision.outcome == "deny":
        message = (
            f"policy {', '.join(decision.policies)} forbids this call"
            if decision.policies
            else "no policy permits this call"
        )
        return Rejected(RejectionReason.POLICY_DENIED, message, {"tool": spec.name}, decided)
    if decision.outcome == "suspend":
        assert decision.channel is not None
        return Suspended(spec, decided, decision.channel, decision.quorum)
    return Staged(spec, decided)


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """A suspended proposal's votes so far, as the ledger's fold has them."""

    channel: str
    approvers: tuple[str, ...]
    denied_by: str | None = None

    @staticmethod
    def of(pending: Pending | None) -> PendingApproval | None:
        """From the run summary's record of a pending proposal (None when there is none)."""
        if pending is None:
            return None
        return PendingApproval(pending.channel, tuple(pending.approvers), pending.denied_by)


class Next(StrEnum):
    """What follows a decision, given the proposal's votes so far."""

    REJECT = "reject"
    """Record the rejection."""
    EXECUTE = "execute"
    """Run the tool and record its commit or failure."""
    DENY = "deny"
    """A veto stands: record the `approval_denied` rejection."""
    SUSPEND = "suspend"
    """Record a suspension on the decision's channel, then wait for votes."""
    WAIT = "wait"
    """Already suspended on that channel without its quorum: keep waiting."""


def settle(decision: Decision, pending: PendingApproval | None) -> Next:
    """The one rule that turns a decision and the votes recorded so far into the next step.
    The live actor acts on it and replay checks every recorded step against it, so the two
    cannot drift: a commit needs `EXECUTE`, which a suspended decision only reaches with a
    quorum of distinct approvers on its channel and no veto."""
    if isinstance(decision, Rejected):
        return Next.REJECT
    if isinstance(decision, Staged):
        return Next.EXECUTE
    if pending is not None and pending.denied_by:
        return Next.DENY
    if pending is None or pending.channel != decision.channel:
        return Next.SUSPEND
    if len(set(pending.approvers)) >= decision.quorum:
        return Next.EXECUTE
    return Next.WAIT
