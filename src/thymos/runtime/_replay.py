"""Replay: verify a run's trajectory from the ledger alone and fold its commits into a world.

It never calls a model or a tool (invariant 5). It checks every hash, parent link and seq; that
the ledger is as long as the run record says; that the run's writ verifies under the root key;
that every decision refers to an undecided intent of the run; that every commit was allowed by
the writ (scope, effect ceiling, validity window, budgets) on the facts recorded with it, and
that those facts agree with the ledger (usage so far, time); that every commit's deltas apply;
and, on request, the compiler version and policy-set hash of every decision.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import biscuit_auth as biscuit

from thymos.core import (
    ChainVerifier,
    DeltaConflict,
    Effect,
    Entry,
    EntryKind,
    RunSummary,
    StoredRow,
    World,
    deltas_of,
)
from thymos.governance import WritError, WritFacts, authorize, authorize_span, is_monotone
from thymos.governance import parse as parse_writ
from thymos.storage import LedgerStore, RunRecord

from ._limits import REPLAY_PAGE_ROWS

DECISION_KINDS = frozenset({EntryKind.REJECTION, EntryKind.COMMIT, EntryKind.TOOL_FAILURE})
FAILURES_SHOWN_MAX = 100


@dataclass(slots=True)
class _Replayer:
    run_id: str
    require_compiler: str | None
    require_policy: str | None
    verifier: ChainVerifier
    world: World = field(default_factory=lambda: World(lazy_hash=True))
    kinds: Counter[str] = field(default_factory=Counter)
    compilers: set[str] = field(default_factory=set)
    policies: set[str] = field(default_factory=set)
    authorised_tools: frozenset[str] | None = None
    undecided: set[str] = field(default_factory=set)
    head_id: str | None = None
    head_seq: int = -1
    root: biscuit.PublicKey | None = None
    writ: biscuit.Biscuit | None = None
    tenant: str = ""
    usage: RunSummary = field(default_factory=RunSummary)
    monotone: bool = False
    pending: list[tuple[int, WritFacts]] = field(default_factory=list)
    """Commits of the current page whose writ check is still to be made (checked per page, so
    memory stays bounded whatever the ledger's length)."""

    def page(self, rows: list[StoredRow]) -> None:
        for row in rows:
            entry = self.verifier.check(row)
            self.head_seq, self.head_id = row.seq, row.id
            if entry is not None:
                self._decision_checks(entry)
                self._fold_usage(entry)
        self._authorize_pending()

    def _authorize_pending(self) -> None:
        """Re-authorize this page's commits with the writ. For a writ made only of Thymos's own
        monotone checks, commits of the same tool and effect are authorized together at their
        extremes (two authorizer calls per group); a group that fails, or any other writ, is
        authorized commit by commit so each failure names its seq."""
        pending, self.pending = self.pending, []
        if self.writ is None or not pending:
            return
        groups: dict[tuple[str, str], list[tuple[int, WritFacts]]] = {}
        for seq, facts in pending:
            groups.setdefault((facts.tool, facts.effect.value), []).append((seq, facts))
        for members in groups.values():
            if self.monotone:
                first = members[0][1]
                refusal = authorize_span(
                    self.writ,
                    tenant=first.tenant,
                    tool=first.tool,
                    effect=first.effect,
                    earliest=min(f.now for _, f in members),
                    latest=max(f.now for _, f in members),
                    tool_calls=max(f.tool_calls for _, f in members),
                    tokens=max(f.tokens for _, f in members),
                    usd_millicents=max(f.usd_millicents for _, f in members),
                )
                if refusal is None:
                    continue
            for seq, facts in members:
                refused = authorize(self.writ, facts)
                if refused is not None:
                    self._fail(seq, "unauthorised_commit", f"entry {seq}: {refused.message}")

    def _fail(self, seq: int, code: str, message: str) -> None:
        self.verifier.fail(seq, code, message)

    def _fold_usage(self, entry: Entry) -> None:
        # Usage so far is the summary fold; it is only meaningful while the chain is unbroken.
        if entry.seq == self.usage.head_seq + 1:
            self.usage.fold(entry)

    def _load_writ(self, entry: Entry) -> None:
        writ = entry.body.get("writ")
        if self.root is None:
            return
        if not isinstance(writ, dict) or not isinstance(writ.get("token"), str):
            self._fail(entry.seq, "writ_missing", "the run's first entry holds no writ")
            return
        try:
            self.writ = parse_writ(writ["token"], self.root)
            self.monotone = is_monotone(self.writ)
        except WritError as exc:
            self._fail(
                entry.seq,
                "writ_invalid",
                f"the run's writ does not verify under the root key: {exc}",
            )

    def _check_authority(self, entry: Entry) -> None:
        """The writ allowed this commit on the facts recorded with it, and the facts are true."""
        if self.root is None:
            return
        body = entry.body
        facts = body.get("authority")
        if self.writ is None or not isinstance(facts, dict):
            self._fail(
                entry.seq,
                "unauthorised_commit",
                f"entry {entry.seq} commits without a verifiable writ",
            )
            return
        usage = self.usage.usage
        tokens = usage.input_tokens + usage.output_tokens
        if (facts.get("tool_calls"), facts.get("tokens"), facts.get("usd_millicents")) != (
            usage.tool_calls,
            tokens,
            usage.usd_millicents,
        ):
            self._fail(
                entry.seq,
                "authority_mismatch",
                f"entry {entry.seq} records usage that the ledger does not show",
            )
            return
        at = str(facts.get("authorized_at", ""))
        try:
            moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
            recorded = datetime.fromisoformat(entry.time.replace("Z", "+00:00"))
            effect = Effect(str(body.get("effect")))
        except ValueError:
            self._fail(
                entry.seq,
                "authority_mismatch",
                f"entry {entry.seq} records malformed authority facts",
            )
            return
        if moment > recorded:
            self._fail(
                entry.seq,
                "authority_mismatch",
                f"entry {entry.seq} was authorized after it was recorded",
            )
            return
        facts = WritFacts(
            self.tenant,
            str(body.get("tool")),
            effect,
            moment,
            usage.tool_calls,
            tokens,
            usage.usd_millicents,
        )
        self.pending.append((entry.seq, facts))

    def _decision_checks(self, entry: Entry) -> None:
        self.kinds[entry.kind] += 1
        body = entry.body
        if entry.kind == EntryKind.RUN_STARTED:
            tools = body.get("tools")
            self.authorised_tools = frozenset(tools) if isinstance(tools, list) else frozenset()
            self.tenant = str(body.get("tenant", ""))
            self._load_writ(entry)
        elif entry.kind == EntryKind.INTENT:
            self.undecided.add(entry.id)
        elif entry.kind in DECISION_KINDS:
            ref = body.get("intent")
            if ref not in self.undecided:
                self._fail(
                    entry.seq,
                    "orphan_decision",
                    f"entry {entry.seq} decides an intent that is not pending",
                )
            self.undecided.discard(ref)
            compiler = body.get("compiler")
            if isinstance(compiler, str):
                self.compilers.add(compiler)
            if self.require_compiler is not None and compiler != self.require_compiler:
                self._fail(
                    entry.seq,
                    "compiler_mismatch",
                    f"entry {entry.seq} was decided by {compiler!r}, not {self.require_compiler!r}",
                )
            policy = body.get("policy_hash")
            if isinstance(policy, str):
                self.policies.add(policy)
            if self.require_policy is not None and policy != self.require_policy:
                self._fail(
                    entry.seq,
                    "policy_mismatch",
                    f"entry {entry.seq} was decided under policy {policy!r}, not {self.require_policy!r}",
                )
            if entry.kind == EntryKind.COMMIT:
                self._check_authority(entry)
                if self.authorised_tools is None or body.get("tool") not in self.authorised_tools:
                    self._fail(
                        entry.seq,
                        "unauthorised_commit",
                        f"entry {entry.seq} commits a tool outside the run's authority",
                    )
                try:
                    self.world.apply_all(deltas_of(body))
                except (DeltaConflict, ValueError) as exc:
                    self._fail(
                        entry.seq,
                        "delta_conflict",
                        f"entry {entry.seq} has deltas that do not apply: {exc}",
                    )


async def replay_report(
    store: LedgerStore,
    record: RunRecord,
    *,
    root: biscuit.PublicKey | None,
    require_compiler: str | None,
    require_policy: str | None,
) -> dict[str, Any]:
    replayer = _Replayer(
        record.run_id, require_compiler, require_policy, ChainVerifier(record.run_id)
    )
    replayer.root = root
    after = -1
    while True:
        rows = await store.read_rows(record.run_id, after_seq=after, limit=REPLAY_PAGE_ROWS)
        if not rows:
            break
        # Hashing and parsing a page is CPU work: do it off the event loop.
        await asyncio.to_thread(replayer.page, rows)
        after = rows[-1].seq
    recorded_head = int(record.summary["head_seq"])
    if replayer.head_seq < recorded_head:
        replayer._fail(
            replayer.head_seq + 1,
            "missing_entries",
            f"the run record's head is seq {recorded_head} but the ledger ends at seq {replayer.head_seq}",
        )
    elif (
        record.summary.get("head_id") not in (None, replayer.head_id)
        and replayer.head_seq == recorded_head
    ):
        replayer._fail(
            recorded_head,
            "head_mismatch",
            f"entry {recorded_head} is not the head the run record names",
        )
    failures = sorted(replayer.verifier.failures, key=lambda f: f.seq)
    return {
        "run_id": record.run_id,
        "verified": not failures,
        "entries": replayer.verifier.count,
        "kinds": dict(sorted(replayer.kinds.items())),
        "head_seq": replayer.head_seq,
        "head_id": replayer.head_id,
        "world_hash": replayer.world.hash,
        "compiler_versions": sorted(replayer.compilers),
        "policy_hashes": sorted(replayer.policies),
        "failures": [f.as_dict() for f in failures[:FAILURES_SHOWN_MAX]],
    }
