"""A forger's toolkit: edit a run's entries and re-seal its hash chain, as anyone who can write
the database (or an export) could, without the server's root key.

It uses only `blake3` and `rfc8785`, never Thymos, so the forgeries are what an outsider can make.
Each forgery takes the run's envelopes (parsed, in seq order, each with its original id as
`_id`) and returns the edited list plus the seq and code replay must name; `reseal` then
renumbers seqs, relinks parents, rewrites references and re-encodes every envelope canonically.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3
import rfc8785

Envelope = dict[str, Any]


def entry_id(line: bytes) -> str:
    return blake3.blake3(line).hexdigest()


def encode(envelope: Envelope) -> bytes:
    return rfc8785.dumps(envelope)


REFERENCES = ("intent", "proposal_id")
"""Body fields that name another entry by id: a careful forger rewrites them too."""


def reseal(envelopes: list[Envelope]) -> list[bytes]:
    """Renumber from 0, relink every parent, re-encode, and point every reference at the
    re-sealed id of the entry it named: a chain every hash and link check accepts."""
    lines: list[bytes] = []
    parent: str | None = None
    renamed: dict[str, str] = {}
    for seq, envelope in enumerate(envelopes):
        sealed = {k: v for k, v in envelope.items() if k != "_id"}
        body = dict(sealed["body"])
        for name in REFERENCES:
            if body.get(name) in renamed:
                body[name] = renamed[body[name]]
        sealed.update(seq=seq, parent=parent, body=body)
        line = encode(sealed)
        lines.append(line)
        parent = entry_id(line)
        if "_id" in envelope:
            renamed[envelope["_id"]] = parent
    return lines


@dataclass
class Export:
    """A `?proof=true` export split into its parts (each line kept where it matters)."""

    envelopes: list[Envelope] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    documents: list[dict[str, Any]] = field(default_factory=list)
    heads: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def parse(data: bytes) -> Export:
        export = Export()
        for line in data.splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if "document" in record:
                export.documents.append(record["document"])
            elif "signed_head" in record:
                export.heads.append(record["signed_head"])
            else:
                export.envelopes.append({**record, "_id": entry_id(line)})
                export.lines.append(line)
        return export

    def assemble(self, lines: list[bytes] | None = None) -> bytes:
        """The export again with `lines` as its entries (re-sealed ones, say): each document
        before the first entry naming it, each signed head after the entry at its seq (the
        forger keeps the server's signatures; it cannot make new ones)."""
        lines = self.lines if lines is None else lines
        documents = {d["hash"]: d for d in self.documents}
        heads = {h["seq"]: h for h in self.heads}
        out: list[bytes] = []
        for seq, line in enumerate(lines):
            body = json.loads(line)["body"]
            for name in ("policy_hash", "catalog_hash"):
                document = documents.pop(body.get(name), None)
                if document is not None:
                    out.append(rfc8785.dumps({"document": document}))
            out.append(line)
            if seq in heads:
                out.append(rfc8785.dumps({"signed_head": heads[seq]}))
        return b"".join(line + b"\n" for line in out)


# -- forgeries: (envelopes) -> (edited envelopes, first seq replay must name, its code) ------

Forgery = Callable[[list[Envelope]], tuple[list[Envelope], int, str]]


def _index(envelopes: list[Envelope], predicate: Callable[[Envelope], bool]) -> int:
    return next(i for i, e in enumerate(envelopes) if predicate(e))


def _approved(envelopes: list[Envelope]) -> tuple[int, str, list[int]]:
    """The first quorum-approved commit: its index, its proposal's id, its votes' indexes."""
    commit = _index(envelopes, lambda e: e["kind"] == "commit" and e["body"].get("approved_by"))
    proposal = envelopes[commit]["body"]["intent"]
    votes = [
        i
        for i, e in enumerate(envelopes)
        if e["kind"] == "approval" and e["body"]["proposal_id"] == proposal
    ]
    return commit, proposal, votes


def approval_removed(envelopes: list[Envelope]) -> tuple[list[Envelope], int, str]:
    """One approval of a quorum-approved commit is deleted: the commit lacks its quorum."""
    commit, _, votes = _approved(envelopes)
    edited = [e for i, e in enumerate(envelopes) if i != votes[0]]
    return edited, commit - 1, "approval_missing"


def approvals_stripped(envelopes: list[Envelope]) -> tuple[list[Envelope], int, str]:
    """The suspension and every vote of an approved commit are deleted (the auditor's case)."""
    commit, proposal, _ = _approved(envelopes)
    gone = {
        i
        for i, e in enumerate(envelopes)
        if (e["kind"] == "suspension" and e["body"]["intent"] == proposal)
        or (e["kind"] == "approval" and e["body"]["proposal_id"] == proposal)
    }
    edited = [e for i, e in enumerate(envelopes) if i not in gone]
    return edited, commit - len(gone), "approval_missing"


def vote_moved(envelopes: list[Envelope]) -> tuple[list[Envelope], int, str]:
    """An approval is rebound to another proposal: it is bound to nothing waiting."""
    _, proposal, votes = _approved(envelopes)
    vote = votes[0]
    other = _index(envelopes, lambda e: e["kind"] == "intent" and e["_id"] != proposal)
    edited = copy.deepcopy(envelopes)
    edited[vote]["body"]["proposal_id"] = envelopes[other]["_id"]
    return edited, vote, "vote_unbound"


def commit_before_approval(envelopes: list[Envelope]) -> tuple[list[Envelope], int, str]:
    """An approved commit is moved before its last approval."""
    commit, _, votes = _approved(envelopes)
    last_vote = votes[-1]
    edited = list(envelopes)
    moved = edited.pop(commit)
    edited.insert(last_vote, moved)
    return edited, last_vote, "approval_missing"


def vote_after_expiry(envelopes: list[Envelope]) -> tuple[list[Envelope], int, str]:
    """A vote is dated after the run's writ expired (as if cast then)."""
    vote = _index(envelopes, lambda e: e["kind"] == "approval")
    edited = copy.deepcopy(envelopes)
    edited[vote]["time"] = "2099-01-01T00:00:00.000000Z"
    return edited, vote, "vote_outside_validity"


def vote_duplicated(envelopes: list[Envelope]) -> tuple[list[Envelope], int, str]:
    """The second approval of a quorum is rewritten as a second vote by the first approver."""
    _, _, (first, second) = _approved(envelopes)
    edited = copy.deepcopy(envelopes)
    edited[second]["body"]["approver"] = edited[first]["body"]["approver"]
    edited[second]["body"]["key_id"] = edited[first]["body"]["key_id"]
    return edited, second, "duplicate_vote"


def value_changed(envelopes: list[Envelope]) -> tuple[list[Envelope], int, str]:
    """A committed value is changed (decisions still check out): only the signatures see it."""
    commit = _index(envelopes, lambda e: e["kind"] == "commit" and e["body"]["deltas"])
    edited = copy.deepcopy(envelopes)
    delta = edited[commit]["body"]["deltas"][0]
    delta["value"] = "forged"
    return edited, commit, "signed_head_mismatch"


def truncated(envelopes: list[Envelope]) -> tuple[list[Envelope], int, str]:
    """The last entries (the end of the run and what led to it) are cut off."""
    keep = len(envelopes) - 3
    return envelopes[:keep], keep, "truncated"


FORGERIES: dict[str, Forgery] = {
    "approval-removed": approval_removed,
    "approvals-stripped": approvals_stripped,
    "vote-moved": vote_moved,
    "vote-after-expiry": vote_after_expiry,
    "vote-duplicated": vote_duplicated,
    "commit-before-approval": commit_before_approval,
    "value-changed": value_changed,
    "truncated": truncated,
}
"""Every forgery of the issue's list but the policy text, which edits a document instead."""


def first_signed_at_or_after(heads: list[dict[str, Any]], seq: int) -> int:
    return min(int(h["seq"]) for h in heads if h["seq"] >= seq)
