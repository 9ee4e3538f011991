"""Replay: verify a run from its ledger alone, re-running every decision, and fold its world.

It never calls a model or a tool (invariant 5). Per entry, in seq order, it checks:

- the chain: every hash, parent link and seq (`ChainVerifier`), and the server's signed heads
  (each signature verifies under the root key and names the very entry at its seq; a ledger that
  ends before a signed head is truncated; a terminal or waiting run's head must be signed);
- the vocabulary: a known kind, only that kind's documented body fields, a replayable format;
- authority and decisions: the writ verifies under the root key; every suspension, rejection,
  commit and tool failure is decided again by `compile_intent`, the very function the live actor
  calls, on the facts the entry records (time, usage, policy set and tool catalog, both fetched
  by hash), and those facts agree with the ledger's own fold; `settle`, the actor's own rule,
  says whether a commit needed approvals, and the fold of suspensions and votes must hold them
  (a quorum of distinct approvers on the proposal's channel, no veto, every vote bound to a
  pending proposal and cast while the writ was valid);
- the world: every commit's deltas apply.

The same `Replayer` serves the server's ledger (`replay_report`) and an exported bundle
(`replay_bundle`), so an auditor's copy is checked exactly as the server checks its own.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import biscuit_auth as biscuit
import orjson

from thymos.core import (
    BODY_FIELDS,
    DOCUMENT_REFERENCES,
    LEDGER_FORMATS_REPLAYABLE,
    RECOVERY_CHANNEL,
    ChainFold,
    ChainVerifier,
    DeltaConflict,
    DocumentKind,
    Effect,
    Entry,
    EntryKind,
    HeadVerifier,
    Intent,
    KindTable,
    NotCanonicalizable,
    Pending,
    ReplayFailure,
    RunStatus,
    RunSummary,
    SignedHead,
    StoredRow,
    ToolFailureCode,
    World,
    apply_to_world,
    blake3_hex,
    canonical_bytes,
)
from thymos.governance import (
    Authority,
    Decision,
    Next,
    PendingApproval,
    PolicyError,
    PolicySet,
    Rejected,
    RejectionReason,
    Suspended,
    ToolCatalog,
    WritChecks,
    WritError,
    WritFacts,
    compile_intent,
    lineage_of,
    settle,
    writ_refusal,
)
from thymos.governance import parse as parse_writ
from thymos.storage import Document, LedgerStore, RunRecord

from ._limits import REPLAY_PAGE_ROWS
from ._replay_delegation import (
    DelegationReplay,
    check_parent,
    replay_commit,
    replay_delegation,
    replay_run_started,
)

DECISION_KINDS = frozenset({EntryKind.REJECTION, EntryKind.COMMIT, EntryKind.TOOL_FAILURE})
FAILURES_SHOWN_MAX = 100
PARSED_DOCUMENTS_MAX = 64
"""Policy sets and catalogs parsed for replay, kept by hash (parsing a Cedar set costs ms)."""

_BASIS_FIELDS = ("authority", "policy_hash", "catalog_hash", "policies")
_FIELDS_OF: dict[str, frozenset[str]] = {kind.value: names for kind, names in BODY_FIELDS.items()}
_parsed: OrderedDict[str, PolicySet | ToolCatalog] = OrderedDict()
_parsed_lock = threading.Lock()


def _parse_document(document: Document) -> PolicySet | ToolCatalog:
    """The policy set or catalog a document holds (memoised by hash); ValueError if none.
    Replays run on worker threads, so the memo is shared under a lock."""
    with _parsed_lock:
        cached = _parsed.get(document.hash)
        if cached is not None:
            _parsed.move_to_end(document.hash)
            return cached
    body = orjson.loads(document.body)
    parsed: PolicySet | ToolCatalog
    if document.kind == DocumentKind.POLICY_SET:
        try:
            parsed = PolicySet.from_document(body)
        except PolicyError as exc:
            raise ValueError(str(exc)) from None
    elif document.kind == DocumentKind.TOOL_CATALOG:
        parsed = ToolCatalog.from_document(body)
    else:
        raise ValueError(f"unknown document kind {document.kind!r}")
    with _parsed_lock:
        _parsed[document.hash] = parsed
        if len(_parsed) > PARSED_DOCUMENTS_MAX:
            _parsed.popitem(last=False)
    return parsed


def referenced_documents(entry: Entry) -> list[str]:
    """The document hashes a decision entry names (`policy_hash`, `catalog_hash`)."""
    return [value for name in DOCUMENT_REFERENCES if isinstance(value := entry.body.get(name), str)]


def _moment(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError("not a time")
    return _parsed_moment(text)


@functools.lru_cache(maxsize=256)
def _parsed_moment(text: str) -> datetime:
    """A decision's times repeat (a turn's intents share theirs): each is parsed once."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _shown(decision: Decision) -> str:
    if isinstance(decision, Rejected):
        return f"a rejection ({decision.reason.value})"
    if isinstance(decision, Suspended):
        return f"a suspension on {decision.channel} (quorum {decision.quorum})"
    return "to stage it"


@dataclass(slots=True)
class Replayer:
    """Replays one run, page by page, in constant memory (beyond its documents and heads)."""

    run_id: str
    root: biscuit.PublicKey
    heads: dict[int, SignedHead]
    require_compiler: str | None = None
    require_policy: str | None = None
    verifier: ChainVerifier = field(init=False)
    world: World = field(default_factory=lambda: World(lazy_hash=True))
    summary: RunSummary = field(default_factory=RunSummary)
    kinds: Counter[str] = field(default_factory=Counter)
    compilers: set[str] = field(default_factory=set)
    policies: set[str] = field(default_factory=set)
    documents: dict[str, Document | None] = field(default_factory=dict)
    """Documents by hash as fetched (None: the store does not hold it)."""
    decisions: list[tuple[int, str]] | None = None
    """When a list is given: what replay decided for each decision entry, (seq, outcome), the
    property test's view. None (the default) keeps memory flat on a ledger of any length."""
    decisions_checked: int = 0
    format: int | None = None
    head_seq: int = -1
    head_id: str | None = None
    signed_through: int | None = None
    _heads_seen: int = 0
    _head_verifier: HeadVerifier = field(init=False)
    _writ: biscuit.Biscuit | None = None
    _checks: WritChecks | None = None
    """The writ's checks read once (`WritChecks.of`), as every `Authority` of the run holds them."""
    _lineage: tuple[str, ...] = ()
    _tenant: str = ""
    _task: str = ""
    _undecided: dict[str, Intent] = field(default_factory=dict)
    _suspended: dict[str, WritFacts] = field(default_factory=dict)
    """Pending proposals: the writ facts of their suspension (a vote re-checks them at its time)."""
    _announced: dict[str, str] = field(default_factory=dict)
    """Intents whose execution_started is recorded and whose outcome is not yet: intent id ->
    the id of its latest execution_started."""
    _repeated: set[str] = field(default_factory=set)
    """Intents started again with no operator's approval: only an idempotent tool may be."""
    _revoked: frozenset[str] = frozenset()
    _authorities: dict[tuple[str, str], Authority] = field(default_factory=dict)
    _loaded: dict[tuple[str, str], tuple[Any, ReplayFailure | None, str]] = field(
        default_factory=dict
    )
    delegation: DelegationReplay = field(default_factory=DelegationReplay)
    """What delegation adds to replay (`_replay_delegation.py`)."""

    def __post_init__(self) -> None:
        self.verifier = ChainVerifier(self.run_id)
        self._head_verifier = HeadVerifier(bytes(self.root.to_bytes()))

    # -- the chain and the signed heads ---------------------------------------------------

    def verify_page(self, rows: Sequence[StoredRow]) -> list[Entry]:
        """Check a page's chain links and signed heads; the entries that parse, in order."""
        entries = []
        for row in rows:
            entry = self.verifier.check(row)
            self.head_seq, self.head_id = row.seq, row.id
            head = self.heads.get(row.seq)
            if head is not None:
                self._check_head(head, self.verifier.previous_id)
            if entry is not None:
                entries.append(entry)
        return entries

    def _check_head(self, head: SignedHead, actual_id: str | None) -> None:
        self._heads_seen += 1
        if head.run_id != self.run_id or not self._head_verifier.verifies(head):
            self._fail(
                head.seq,
                ReplayFailure.SIGNATURE_INVALID,
                f"the signed head at seq {head.seq} does not verify under the root key",
            )
        elif head.entry_id != actual_id:
            self._fail(
                head.seq,
                ReplayFailure.SIGNED_HEAD_MISMATCH,
                f"entry {head.seq} is not the entry the server signed: the ledger was rewritten",
            )
        elif self.verifier.verified:
            self.signed_through = head.seq

    # -- documents -------------------------------------------------------------------------

    def needed_documents(self, entries: Iterable[Entry]) -> set[str]:
        return {
            ident
            for entry in entries
            if entry.kind in DECISION_KINDS or entry.kind == EntryKind.SUSPENSION
            for ident in referenced_documents(entry)
            if ident not in self.documents
        }

    def add_documents(self, wanted: Iterable[str], found: Mapping[str, Document]) -> None:
        for ident in wanted:
            self.documents[ident] = found.get(ident)

    def _document(self, entry: Entry, field_name: str, kind: type[Any]) -> Any:
        """The policy set or catalog a decision names, or None (the failure is recorded).
        Each document is checked against its address and parsed once per replay."""
        ident = entry.body.get(field_name)
        key = (ident if isinstance(ident, str) else "", field_name)
        loaded = self._loaded.get(key)
        if loaded is None:
            loaded = self._load(key[0], field_name, kind)
            self._loaded[key] = loaded
        parsed, code, reason = loaded
        if parsed is None:
            assert code is not None
            self._fail(entry.seq, code, f"entry {entry.seq} {reason}")
        return parsed

    def _load(
        self, ident: str, field_name: str, kind: type[Any]
    ) -> tuple[Any, ReplayFailure | None, str]:
        document = self.documents.get(ident)
        what = DOCUMENT_REFERENCES[field_name].value.replace("_", " ")
        if document is None:
            return (
                None,
                ReplayFailure.DOCUMENT_MISSING,
                (f"was decided under {what} {ident!r}, whose text is not held"),
            )
        try:
            if blake3_hex(document.body) != document.hash:
                raise ValueError("its text does not hash to its address")
            parsed = _parse_document(document)
            if not isinstance(parsed, kind):
                raise ValueError(f"it is a {document.kind}")
        except ValueError as exc:
            return (
                None,
                ReplayFailure.DOCUMENT_MISMATCH,
                (f"was decided under a {what} that is not the one recorded: {exc}"),
            )
        return parsed, None, ""

    # -- entries ---------------------------------------------------------------------------

    def fold_page(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.kinds[entry.kind] += 1
            self._check_lifecycle(entry)
            if self._vocabulary_ok(entry):
                REPLAY.dispatch(self, entry)
            # The fold (usage so far, pending approvals, status) is only meaningful while the
            # chain is unbroken.
            if entry.seq == self.summary.head_seq + 1:
                self.summary.fold(entry)

    def _check_lifecycle(self, entry: Entry) -> None:
        """Nothing follows a run's end but a resumption, and a resumption follows only the end of
        a run that failed or was cancelled (a completed run is final)."""
        if entry.seq != self.summary.head_seq + 1:
            return
        status = self.summary.status
        if entry.kind == EntryKind.RESUMPTION:
            if not status.resumable:
                self._fail(
                    entry.seq,
                    ReplayFailure.RESUMPTION_INVALID,
                    f"entry {entry.seq} resumes a run that is {status.value}",
                )
            return
        if status.terminal:
            self._fail(
                entry.seq,
                ReplayFailure.ENTRY_AFTER_END,
                f"entry {entry.seq} ({entry.kind}) follows the run's end",
            )

    def _vocabulary_ok(self, entry: Entry) -> bool:
        fields = _FIELDS_OF.get(entry.kind)
        if fields is None:
            self._fail(
                entry.seq, ReplayFailure.UNKNOWN_KIND, f"entry {entry.seq} has kind {entry.kind!r}"
            )
            return False
        if fields.issuperset(entry.body):
            return True
        unknown = sorted(set(entry.body) - fields)
        if self.format in LEDGER_FORMATS_REPLAYABLE or entry.seq == 0:
            self._fail(
                entry.seq,
                ReplayFailure.UNKNOWN_FIELD,
                f"entry {entry.seq} ({entry.kind}) has undocumented fields: {', '.join(unknown)}",
            )
        return True

    @property
    def _checkable(self) -> bool:
        return self._writ is not None and self.format in LEDGER_FORMATS_REPLAYABLE

    def _run_started(self, entry: Entry) -> None:
        body = entry.body
        self._tenant = str(body.get("tenant", ""))
        self._task = str(body.get("task", ""))
        fmt = body.get("format", 1)
        self.format = fmt if isinstance(fmt, int) and not isinstance(fmt, bool) else None
        if self.format not in LEDGER_FORMATS_REPLAYABLE:
            self._fail(
                entry.seq,
                ReplayFailure.UNSUPPORTED_FORMAT,
                f"the ledger has body format {fmt!r}; this release re-runs the decisions of "
                f"format {', '.join(str(f) for f in sorted(LEDGER_FORMATS_REPLAYABLE))}",
            )
        writ = body.get("writ")
        if not isinstance(writ, dict) or not isinstance(writ.get("token"), str):
            self._fail(entry.seq, ReplayFailure.WRIT_MISSING, "the run's first entry holds no writ")
            return
        try:
            self._writ = parse_writ(writ["token"], self.root)
        except WritError as exc:
            self._fail(
                entry.seq,
                ReplayFailure.WRIT_INVALID,
                f"the run's writ does not verify under the root key: {exc}",
            )
            return
        self._lineage = lineage_of(self._writ)
        self._checks = WritChecks.of(self._writ)

    def _intent(self, entry: Entry) -> None:
        body = entry.body
        self._undecided[entry.id] = Intent.from_body(body, "")

    def _proposal(self, entry: Entry) -> Intent | None:
        """The undecided intent a decision entry decides (else the failure is recorded)."""
        ref = entry.body.get("intent")
        intent = self._undecided.get(ref) if isinstance(ref, str) else None
        if intent is None:
            self._fail(
                entry.seq,
                ReplayFailure.ORPHAN_DECISION,
                f"entry {entry.seq} decides an intent that is not pending",
            )
        return intent

    def _requirements(self, entry: Entry) -> None:
        body = entry.body
        compiler, policy = body.get("compiler"), body.get("policy_hash")
        if isinstance(compiler, str):
            self.compilers.add(compiler)
        if isinstance(policy, str):
            self.policies.add(policy)
        if self.require_compiler is not None and compiler != self.require_compiler:
            self._fail(
                entry.seq,
                ReplayFailure.COMPILER_MISMATCH,
                f"entry {entry.seq} was decided by {compiler!r}, not {self.require_compiler!r}",
            )
        if self.require_policy is not None and policy != self.require_policy:
            self._fail(
                entry.seq,
                ReplayFailure.POLICY_MISMATCH,
                f"entry {entry.seq} was decided under policy {policy!r}, not {self.require_policy!r}",
            )

    def _recompile(self, entry: Entry, intent: Intent) -> Decision | None:
        """Decide the intent again with `compile_intent` on the facts the entry records, after
        checking those facts against the ledger's own fold. None when it cannot be decided (the
        failure is recorded)."""
        body = entry.body
        facts = body.get("authority")
        usage = self.summary.usage
        tokens = usage.input_tokens + usage.output_tokens
        if not isinstance(facts, dict):
            self._fail(
                entry.seq,
                ReplayFailure.AUTHORITY_MISMATCH,
                f"entry {entry.seq} records no authority facts",
            )
            return None
        if (facts.get("tool_calls"), facts.get("tokens"), facts.get("usd_millicents")) != (
            usage.tool_calls,
            tokens,
            usage.usd_millicents,
        ):
            self._fail(
                entry.seq,
                ReplayFailure.AUTHORITY_MISMATCH,
                f"entry {entry.seq} records usage that the ledger does not show",
            )
            return None
        try:
            moment, recorded = _moment(facts.get("authorized_at")), _moment(entry.time)
        except ValueError:
            self._fail(
                entry.seq,
                ReplayFailure.AUTHORITY_MISMATCH,
                f"entry {entry.seq} records malformed authority facts",
            )
            return None
        if moment > recorded:
            self._fail(
                entry.seq,
                ReplayFailure.AUTHORITY_MISMATCH,
                f"entry {entry.seq} was authorized after it was recorded",
            )
            return None
        policy = self._document(entry, "policy_hash", PolicySet)
        catalog = self._document(entry, "catalog_hash", ToolCatalog)
        if policy is None or catalog is None or self._writ is None:
            return None
        key = (policy.hash, catalog.hash)
        authority = self._authorities.get(key)
        if authority is None:
            entities = policy.entities(
                run_id=self.run_id, tenant=self._tenant, task=self._task, tools=catalog.specs()
            )
            authority = Authority(
                self.run_id,
                self._tenant,
                self._writ,
                self._lineage,
                policy,
                entities,
                delegation=self.delegation.bounds,
            )
            self._authorities[key] = authority
        if body.get("reason") == RejectionReason.REVOKED.value:
            # Revocation is the one fact from outside the run: the ledger records it, naming an
            # id of the writ's lineage; from then on every decision sees it.
            revoked = (body.get("details") or {}).get("writ_id")
            if revoked in self._lineage and revoked not in self._revoked:
                self._revoked = self._revoked | {revoked}
        return compile_intent(
            intent,
            catalog=catalog,
            authority=authority,
            usage=usage,
            now=moment,
            revocations=self._revoked,
        )

    def _decided(self, outcome: tuple[int, str]) -> None:
        self.decisions_checked += 1
        if self.decisions is not None:
            self.decisions.append(outcome)

    def _differs(self, entry: Entry, expected: Mapping[str, Any], fields: Iterable[str]) -> bool:
        """Record a mismatch when a recorded field is not what replay decides."""
        for name in fields:
            if entry.body.get(name) != expected.get(name):
                self._fail(
                    entry.seq,
                    ReplayFailure.DECISION_MISMATCH,
                    f"entry {entry.seq} records {name} {entry.body.get(name)!r}; "
                    f"replay decides {expected.get(name)!r}",
                )
                return True
        return False

    def _suspension(self, entry: Entry) -> None:
        self._requirements(entry)
        intent = self._proposal(entry)
        if intent is None or not self._checkable:
            return
        decision = self._recompile(entry, intent)
        if decision is None:
            return
        pending = PendingApproval.of(self.summary.pending.get(entry.body["intent"]))
        step = settle(decision, pending)
        if "execution" in entry.body:
            self._recovery_question(entry, intent, decision, step)
            return
        self._decided((entry.seq, f"suspend:{getattr(decision, 'channel', '')}"))
        if step is not Next.SUSPEND or not isinstance(decision, Suspended):
            self._fail(
                entry.seq,
                ReplayFailure.DECISION_MISMATCH,
                f"entry {entry.seq} records a suspension; replay decides {_shown(decision)}",
            )
            return
        expected = {
            **decision.basis.as_body(),
            "tool": intent.tool,
            "channel": decision.channel,
            "quorum": decision.quorum,
        }
        if not self._differs(entry, expected, (*_BASIS_FIELDS, "tool", "channel", "quorum")):
            self._suspended[entry.body["intent"]] = self._facts(decision, intent, entry)

    def _recovery_question(
        self, entry: Entry, intent: Intent, decision: Decision, step: Next
    ) -> None:
        """A question on the recovery channel: only about the latest execution of an allowed,
        non-idempotent call whose outcome is unknown, asked of one operator."""
        body = entry.body
        self._decided((entry.seq, f"suspend:{RECOVERY_CHANNEL}"))
        if step is not Next.EXECUTE or isinstance(decision, Rejected):
            self._fail(
                entry.seq,
                ReplayFailure.DECISION_MISMATCH,
                f"entry {entry.seq} asks to run a call again; replay decides {_shown(decision)}",
            )
            return
        if self._announced.get(body["intent"]) != body["execution"] or decision.tool.idempotent:
            self._fail(
                entry.seq,
                ReplayFailure.EXECUTION_REPEATED,
                f"entry {entry.seq} asks about an execution that is not the latest unknown "
                "outcome of a call that is not idempotent",
            )
            return
        expected = {
            **decision.basis.as_body(),
            "tool": intent.tool,
            "channel": RECOVERY_CHANNEL,
            "quorum": 1,
        }
        if not self._differs(entry, expected, (*_BASIS_FIELDS, "tool", "channel", "quorum")):
            usage = self.summary.usage
            self._suspended[body["execution"]] = WritFacts(
                self._tenant,
                intent.tool,
                Effect(decision.tool.effect),
                _moment(body["authority"]["authorized_at"]),
                usage.tool_calls,
                usage.input_tokens + usage.output_tokens,
                usage.usd_millicents,
            )

    def _facts(self, decision: Suspended, intent: Intent, entry: Entry) -> WritFacts:
        usage = self.summary.usage
        return WritFacts(
            self._tenant,
            intent.tool,
            Effect(decision.tool.effect),
            _moment(entry.body["authority"]["authorized_at"]),
            usage.tool_calls,
            usage.input_tokens + usage.output_tokens,
            usage.usd_millicents,
        )

    def _approval(self, entry: Entry) -> None:
        if not self._checkable:
            return
        body = entry.body
        proposal = body.get("proposal_id")
        pending = self.summary.pending.get(proposal) if isinstance(proposal, str) else None
        if (
            pending is None
            or pending.intent not in self._undecided
            or pending.channel != body.get("channel")
        ):
            self._fail(
                entry.seq,
                ReplayFailure.VOTE_UNBOUND,
                f"entry {entry.seq} votes on channel {body.get('channel')!r} for a proposal "
                "that is not waiting there",
            )
            return
        if body.get("approver") in pending.approvers or pending.denied_by:
            self._fail(
                entry.seq,
                ReplayFailure.DUPLICATE_VOTE,
                f"entry {entry.seq} is a second vote by {body.get('approver')!r} "
                "or a vote after a veto",
            )
            return
        facts = self._suspended.get(proposal) if isinstance(proposal, str) else None
        if facts is None:
            return  # its suspension did not check out; that failure is already recorded
        try:
            at = _moment(entry.time)
        except ValueError:
            at = facts.now
        refused = writ_refusal(self._writ_or_fail(), self._checks, replace(facts, now=at))
        if refused is not None:
            self._fail(
                entry.seq,
                ReplayFailure.VOTE_OUTSIDE_VALIDITY,
                f"entry {entry.seq} is a vote cast when the writ no longer allowed the "
                f"proposal: {refused.message}",
            )

    def _writ_or_fail(self) -> biscuit.Biscuit:
        assert self._writ is not None, "only called when the run is checkable"
        return self._writ

    def _execution_started(self, entry: Entry) -> None:
        intent = self._proposal(entry)
        if intent is None:
            return
        ref = entry.body["intent"]
        earlier = self._announced.get(ref)
        if earlier is not None:
            # Started again: an operator approved it on the recovery channel, or its tool is
            # idempotent (checked against the catalog when its outcome is recorded).
            question = self.summary.pending.get(earlier)
            if question is None or not question.approvers:
                self._repeated.add(ref)
        self._announced[ref] = entry.id

    def _rejection(self, entry: Entry) -> None:
        self._requirements(entry)
        intent = self._proposal(entry)
        if intent is None:
            return
        ref = entry.body["intent"]
        pending = self.summary.pending.get(ref)
        self._undecided.pop(ref, None)
        self._suspended.pop(ref, None)
        self._suspended.pop(self._announced.pop(ref, ""), None)
        self._repeated.discard(ref)
        if not self._checkable:
            return
        decision = self._recompile(entry, intent)
        if decision is None:
            return
        step = settle(decision, PendingApproval.of(pending))
        if entry.body.get("reason") == RejectionReason.APPROVAL_DENIED.value:
            self._decided((entry.seq, "deny"))
            details = entry.body.get("details") or {}
            if step is not Next.DENY or pending is None:
                self._fail(
                    entry.seq,
                    ReplayFailure.DECISION_MISMATCH,
                    f"entry {entry.seq} records a denial that no recorded veto made",
                )
            elif pending.denied_by != details.get("approver"):
                self._fail(
                    entry.seq,
                    ReplayFailure.DECISION_MISMATCH,
                    f"entry {entry.seq} names {details.get('approver')!r} as the denier; "
                    f"the veto was {pending.denied_by!r}'s",
                )
            else:
                assert isinstance(decision, Suspended)
                self._differs(entry, decision.basis.as_body(), _BASIS_FIELDS)
            return
        self._decided(
            (
                entry.seq,
                f"reject:{decision.reason.value}" if isinstance(decision, Rejected) else step.value,
            )
        )
        if not isinstance(decision, Rejected):
            self._fail(
                entry.seq,
                ReplayFailure.DECISION_MISMATCH,
                f"entry {entry.seq} records a rejection ({entry.body.get('reason')}); "
                f"replay decides {_shown(decision)}",
            )
            return
        self._differs(entry, decision.as_body(), ("reason", "message", "details", *_BASIS_FIELDS))

    def _execution(self, entry: Entry) -> None:
        """A commit or a tool failure: the call was executed, so it must have been allowed."""
        self._requirements(entry)
        intent = self._proposal(entry)
        ref = entry.body.get("intent")
        pending = self.summary.pending.get(ref) if isinstance(ref, str) else None
        execution = self._announced.get(ref) if isinstance(ref, str) else None
        question = self.summary.pending.get(execution) if execution is not None else None
        repeated = ref in self._repeated
        if isinstance(ref, str):
            self._undecided.pop(ref, None)
            self._suspended.pop(ref, None)
            self._suspended.pop(self._announced.pop(ref, ""), None)
            self._repeated.discard(ref)
        if entry.kind == EntryKind.COMMIT:
            try:
                apply_to_world(self.world, entry)
            except (DeltaConflict, ValueError) as exc:
                self._fail(
                    entry.seq,
                    ReplayFailure.DELTA_CONFLICT,
                    f"entry {entry.seq} has deltas that do not apply: {exc}",
                )
        if intent is None or not self._checkable:
            return
        decision = self._recompile(entry, intent)
        if decision is None:
            return
        step = settle(decision, PendingApproval.of(pending))
        self._decided((entry.seq, step.value))
        if isinstance(decision, Rejected):
            self._fail(
                entry.seq,
                ReplayFailure.UNAUTHORISED_COMMIT,
                f"entry {entry.seq} executes a call that is not allowed: {decision.message}",
            )
            return
        if step is not Next.EXECUTE:
            assert isinstance(decision, Suspended)
            held = 0 if pending is None else len(pending.approvers)
            why = (
                f"was vetoed by {pending.denied_by!r}"
                if pending is not None and pending.denied_by
                else f"has {held} of {decision.quorum} approvals on {decision.channel}"
            )
            self._fail(
                entry.seq,
                ReplayFailure.APPROVAL_MISSING,
                f"entry {entry.seq} executes a proposal that needs approval and {why}",
            )
            return
        self._check_recovery(entry, decision.tool.idempotent, execution, question, repeated)
        if decision.tool.effect.rank >= Effect.EXTERNAL.rank and execution is None:
            self._fail(
                entry.seq,
                ReplayFailure.EXECUTION_UNANNOUNCED,
                f"entry {entry.seq} records an {decision.tool.effect.value} call with no "
                "execution_started before it",
            )
        approved_by = (
            list(pending.approvers) if isinstance(decision, Suspended) and pending else None
        )
        expected = {
            **decision.basis.as_body(),
            "tool": intent.tool,
            "effect": decision.tool.effect.value,
            "approved_by": approved_by,
        }
        self._differs(entry, expected, (*_BASIS_FIELDS, "tool", "effect", "approved_by"))

    def _check_recovery(
        self,
        entry: Entry,
        idempotent: bool,
        execution: str | None,
        question: Pending | None,
        repeated: bool,
    ) -> None:
        """A call ran at most once unless its tool is idempotent or an operator said so; an
        `outcome_unknown` failure is an operator's denial on the recovery channel."""
        if repeated and not idempotent:
            self._fail(
                entry.seq,
                ReplayFailure.EXECUTION_REPEATED,
                f"entry {entry.seq} records a call of a tool that is not idempotent started "
                "again with no operator's approval",
            )
        error = entry.body.get("error")
        unknown = isinstance(error, dict) and (
            error.get("code") == ToolFailureCode.OUTCOME_UNKNOWN.value
        )
        denied = execution is not None and question is not None and question.denied_by
        if entry.kind == EntryKind.TOOL_FAILURE and unknown and not denied:
            self._fail(
                entry.seq,
                ReplayFailure.EXECUTION_REPEATED,
                f"entry {entry.seq} records an unknown outcome no operator decided on",
            )

    # -- the end ---------------------------------------------------------------------------

    def _fail(self, seq: int, code: ReplayFailure, message: str) -> None:
        self.verifier.fail(seq, code.value, message)

    def finish(self, *, signed_end: bool = False) -> None:
        """The checks that need the whole ledger: truncation and an unsigned settled head.
        `signed_end` requires the last entry to be signed whatever the run's state (an export
        handed to an auditor: one cut short ends unsigned)."""
        last_signed = max(self.heads, default=-1)
        if last_signed > self.head_seq:
            self._fail(
                self.head_seq + 1,
                ReplayFailure.TRUNCATED,
                f"the server signed seq {last_signed} but the ledger ends at seq {self.head_seq}",
            )
            return
        status = self.summary.status
        settled = status.terminal or status is RunStatus.WAITING_APPROVAL or signed_end
        if self.head_seq >= 0 and settled and self.signed_through != self.head_seq:
            self._fail(
                self.head_seq,
                ReplayFailure.HEAD_UNSIGNED,
                f"the ledger ends at seq {self.head_seq} ({status.value}), a head the server "
                "never signed",
            )

    def report(self) -> dict[str, Any]:
        failures = sorted(self.verifier.failures, key=lambda f: f.seq)
        return {
            "run_id": self.run_id,
            "verified": not failures,
            "entries": self.verifier.count,
            "kinds": dict(sorted(self.kinds.items())),
            "head_seq": self.head_seq,
            "head_id": self.head_id,
            "world_hash": self.world.hash,
            "ledger_format": self.format,
            "decisions_checked": self.decisions_checked,
            "signed_heads": self._heads_seen,
            "signed_through": self.signed_through,
            "compiler_versions": sorted(self.compilers),
            "policy_hashes": sorted(self.policies),
            "failures": [f.as_dict() for f in failures[:FAILURES_SHOWN_MAX]],
        }


REPLAY: KindTable[Replayer, None] = KindTable("replay", None)
"""What replay checks per entry kind (every entry is also folded into the replayed summary)."""
REPLAY.on(EntryKind.RUN_STARTED)(replay_run_started)
REPLAY.on(EntryKind.INTENT)(Replayer._intent)
REPLAY.on(EntryKind.SUSPENSION)(Replayer._suspension)
REPLAY.on(EntryKind.APPROVAL)(Replayer._approval)
REPLAY.on(EntryKind.EXECUTION_STARTED)(Replayer._execution_started)
REPLAY.on(EntryKind.REJECTION)(Replayer._rejection)
REPLAY.on(EntryKind.COMMIT)(replay_commit)
REPLAY.on(EntryKind.TOOL_FAILURE)(Replayer._execution)
REPLAY.on(EntryKind.DELEGATION)(replay_delegation)
# Checked by the lifecycle rule (`_check_lifecycle`) and the summary's fold (usage, status).
REPLAY.ignore(EntryKind.TURN, EntryKind.RUN_ENDED, EntryKind.CANCELLATION, EntryKind.RESUMPTION)


async def replay_stored(
    store: LedgerStore, replayer: Replayer, *, upto_seq: int | None = None
) -> None:
    """Feed a stored run's rows (through `upto_seq`, or all of them) to `replayer`, with the
    signed heads and documents they need; the whole-ledger checks are the caller's.

    Each page's heads are read after its rows: a head is stored in the transaction of the entry
    it signs, so every head of the rows read is visible, even while the run is still writing."""
    run_id = replayer.run_id
    after = -1
    while upto_seq is None or after < upto_seq:
        rows = await store.read_rows(run_id, after_seq=after, limit=REPLAY_PAGE_ROWS)
        if upto_seq is not None:
            rows = [row for row in rows if row.seq <= upto_seq]
            if not rows:
                break
        elif not rows:
            beyond = await store.signed_heads(run_id, after_seq=after)
            if not beyond:
                break
            # Entries signed beyond what was read were committed with their heads: read on.
            rows = await store.read_rows(run_id, after_seq=after, limit=REPLAY_PAGE_ROWS)
            if not rows:
                replayer.heads.update((h.seq, h) for h in beyond)  # signed, then cut off
                break
        heads = await store.signed_heads(run_id, after_seq=after, upto_seq=rows[-1].seq)
        replayer.heads.update((h.seq, h) for h in heads)
        # Hashing, parsing and deciding a page is CPU work: do it off the event loop.
        entries = await asyncio.to_thread(replayer.verify_page, rows)
        wanted = replayer.needed_documents(entries)
        if wanted:
            replayer.add_documents(wanted, await store.documents(sorted(wanted)))
        await asyncio.to_thread(replayer.fold_page, entries)
        after = rows[-1].seq


async def chain_and_usage(store: LedgerStore, run_id: str) -> ChainFold:
    """Verify a stored run's chain and fold its usage (`ChainFold`), reading the next page while
    the current one is checked on a worker thread (the read waits in SQLite or on the network,
    which releases the interpreter)."""
    fold = ChainFold(run_id)
    reading = asyncio.ensure_future(store.read_rows(run_id, after_seq=-1, limit=REPLAY_PAGE_ROWS))
    try:
        while rows := await reading:
            reading = asyncio.ensure_future(
                store.read_rows(run_id, after_seq=rows[-1].seq, limit=REPLAY_PAGE_ROWS)
            )
            await asyncio.to_thread(fold.feed, rows)
    finally:
        if not reading.done():
            reading.cancel()
    return fold


async def replay_report(
    store: LedgerStore,
    record: RunRecord,
    *,
    root: biscuit.PublicKey,
    require_compiler: str | None,
    require_policy: str | None,
    world: World | None = None,
) -> dict[str, Any]:
    """Replay a stored run: its rows, its signed heads and the documents its decisions name.
    `world` is the world the run starts from (a branch's, replayed through its source by
    `_branch.replay_through_source`); by default an empty one."""
    replayer = Replayer(record.run_id, root, {}, require_compiler, require_policy)
    if world is not None:
        replayer.world = world
    await replay_stored(store, replayer)
    recorded_head = int(record.summary["head_seq"])
    if replayer.head_seq < recorded_head:
        replayer._fail(
            replayer.head_seq + 1,
            ReplayFailure.MISSING_ENTRIES,
            f"the run record's head is seq {recorded_head} but the ledger ends at seq {replayer.head_seq}",
        )
    elif (
        record.summary.get("head_id") not in (None, replayer.head_id)
        and replayer.head_seq == recorded_head
    ):
        replayer._fail(
            recorded_head,
            ReplayFailure.HEAD_MISMATCH,
            f"entry {recorded_head} is not the head the run record names",
        )
    await check_parent(store, replayer)
    replayer.finish()
    return replayer.report()


# -- exported bundles -----------------------------------------------------------------------


class BundleError(ValueError):
    """A line of an export that is neither an envelope nor a documented record."""


@dataclass(slots=True)
class Bundle:
    """An export read back: the entries' rows, the documents and the signed heads."""

    run_id: str | None = None
    rows: list[StoredRow] = field(default_factory=list)
    documents: dict[str, Document] = field(default_factory=dict)
    heads: dict[int, SignedHead] = field(default_factory=dict)


def read_bundle(lines: Iterable[bytes]) -> Bundle:
    """Parse an export (`GET /runs/:id/ledger?proof=true`): envelopes verbatim, `document` and
    `signed_head` records between them. Envelope lines are kept as bytes: their hash is their id."""
    bundle = Bundle()
    for number, line in enumerate((raw.rstrip(b"\n") for raw in lines), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BundleError(f"line {number} is not JSON") from None
        if not isinstance(record, dict):
            raise BundleError(f"line {number} is not a JSON object")
        if "document" in record and len(record) == 1:
            doc = record["document"]
            if not isinstance(doc, dict) or set(doc) != {"hash", "kind", "body"}:
                raise BundleError(f"line {number}: a document has hash, kind and body")
            try:
                body = canonical_bytes(doc["body"])
            except NotCanonicalizable:
                raise BundleError(f"line {number}: a document body has no canonical form") from None
            bundle.documents[str(doc["hash"])] = Document(str(doc["hash"]), str(doc["kind"]), body)
        elif "signed_head" in record and len(record) == 1:
            try:
                head = SignedHead.from_record(record["signed_head"])
            except ValueError as exc:
                raise BundleError(f"line {number}: {exc}") from None
            bundle.heads[head.seq] = head
        else:
            seq, run = record.get("seq"), record.get("run")
            if not isinstance(seq, int) or not isinstance(run, str):
                raise BundleError(f"line {number} is not an envelope")
            bundle.run_id = bundle.run_id or run
            bundle.rows.append(StoredRow(seq, blake3_hex(line), line))
    return bundle


def replay_bundle(
    bundle: Bundle,
    *,
    root: biscuit.PublicKey,
    require_compiler: str | None = None,
    require_policy: str | None = None,
    allow_unsigned_tail: bool = False,
) -> dict[str, Any]:
    """Replay an exported run exactly as the server replays its own. Its last entry must be
    signed unless `allow_unsigned_tail` (the export of a run still running).

    A branch's export does not hold its source: its `branch_of` is not checked against the
    source run here, and its world starts empty, so a commit that changes a resource it
    inherited does not apply (`delta_conflict`). The server's replay checks a branch through
    its source."""
    return bundle_replayer(
        bundle,
        root=root,
        require_compiler=require_compiler,
        require_policy=require_policy,
        allow_unsigned_tail=allow_unsigned_tail,
    ).report()


def bundle_replayer(
    bundle: Bundle,
    *,
    root: biscuit.PublicKey,
    require_compiler: str | None = None,
    require_policy: str | None = None,
    allow_unsigned_tail: bool = False,
    record_decisions: bool = False,
) -> Replayer:
    """The replayer after replaying a bundle (with `record_decisions`, its `decisions` list what
    replay decided for each decision entry)."""
    replayer = Replayer(
        bundle.run_id or "",
        root,
        dict(bundle.heads),
        require_compiler,
        require_policy,
        decisions=[] if record_decisions else None,
    )
    for start in range(0, len(bundle.rows), REPLAY_PAGE_ROWS):
        entries = replayer.verify_page(bundle.rows[start : start + REPLAY_PAGE_ROWS])
        replayer.add_documents(replayer.needed_documents(entries), bundle.documents)
        replayer.fold_page(entries)
    replayer.finish(signed_end=not allow_unsigned_tail)
    return replayer
