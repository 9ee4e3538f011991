"""The run summary: counters, status and a short log, folded from ledger entries.

The run record, the execution session and `GET /runs` all show this fold. It is updated one
entry at a time (O(1) per entry) and stored beside the ledger in the same transaction, so the
stored summary never disagrees with the entries it was folded from.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._folds import KindTable
from ._ledger import Entry, EntryKind
from ._model import RunStatus, Usage

LOG_LINES_MAX = 50
"""The execution session shows recent activity; the ledger has the rest."""

LOG_TEXT_CHARS_MAX = 200

RECOVERY_CHANNEL = "recovery"
"""Where an operator decides about an external call whose outcome a crash left unknown."""
_DECISIONS = frozenset({EntryKind.REJECTION, EntryKind.COMMIT, EntryKind.TOOL_FAILURE})


def delegated_usage(body: Mapping[str, Any]) -> Usage | None:
    """A commit's `delegated_usage` (what a child run spent), or None when it has none or it is
    not four counts (replay names that `delegation_invalid`)."""
    value = body.get("delegated_usage")
    if not isinstance(value, dict) or set(value) != _USAGE_FIELDS:
        return None
    if not all(type(n) is int and n >= 0 for n in value.values()):
        return None
    return Usage.from_dict(value)


_USAGE_FIELDS = frozenset(Usage().as_dict())


def _clip(text: str) -> str:
    return text if len(text) <= LOG_TEXT_CHARS_MAX else text[: LOG_TEXT_CHARS_MAX - 1] + "…"


@dataclass(slots=True)
class Pending:
    """A proposal waiting for approval, as the summary folds it from its suspension and votes.

    The proposal is its intent; on the recovery channel it is the execution whose outcome is
    unknown (the intent may hold its policy approvals meanwhile)."""

    proposal_id: str
    intent: str
    channel: str
    tool: str | None
    arguments_preview: str | None
    reason: str | None
    required: int
    suspended_at: str
    approvers: list[str] = field(default_factory=list)
    denied_by: str | None = None

    @property
    def approvals(self) -> int:
        return len(self.approvers)

    def copy(self) -> Pending:
        return replace(self, approvers=list(self.approvers))

    def as_dict(self) -> dict[str, Any]:
        """As stored with the run and shown (`denied_by` only once someone denied)."""
        shown: dict[str, Any] = {
            "proposal_id": self.proposal_id,
            "intent": self.intent,
            "channel": self.channel,
            "tool": self.tool,
            "arguments_preview": self.arguments_preview,
            "reason": self.reason,
            "approvals": self.approvals,
            "required": self.required,
            "approvers": list(self.approvers),
            "suspended_at": self.suspended_at,
        }
        if self.denied_by is not None:
            shown["denied_by"] = self.denied_by
        return shown

    @staticmethod
    def from_dict(key: str, data: Mapping[str, Any]) -> Pending:
        """From a stored summary (one written before `intent` was stored names its intent by
        its key)."""
        return Pending(
            proposal_id=str(data.get("proposal_id", key)),
            intent=str(data.get("intent", key)),
            channel=str(data.get("channel")),
            tool=data.get("tool"),
            arguments_preview=data.get("arguments_preview"),
            reason=data.get("reason"),
            required=int(data.get("required", 1)),
            suspended_at=str(data.get("suspended_at", "")),
            approvers=[str(a) for a in data.get("approvers") or ()],
            denied_by=data.get("denied_by"),
        )


@dataclass(slots=True)
class RunSummary:
    status: RunStatus = RunStatus.RUNNING
    terminated_by: str | None = None
    final_answer: str | None = None
    error: str | None = None
    steps_executed: int = 0
    intents_submitted: int = 0
    commits: int = 0
    rejections: int = 0
    failures: int = 0
    usage: Usage = field(default_factory=Usage)
    head_seq: int = -1
    head_id: str | None = None
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_LINES_MAX))
    pending: dict[str, Pending] = field(default_factory=dict)
    """Proposals waiting for approval, by proposal id (the intent entry's id)."""
    max_steps: int | None = None
    """The run's step limit: as started, or as its latest resumption raised it."""

    def fold(self, entry: Entry) -> None:
        """Account for one entry, in seq order (`SUMMARY` says what each kind does)."""
        assert entry.seq == self.head_seq + 1, "summary folds entries in seq order"
        self.head_seq, self.head_id = entry.seq, entry.id
        text = SUMMARY.dispatch(self, entry)
        if entry.kind in _DECISIONS:
            self._settle_pending(entry.body.get("intent", ""), recovery_only=False)
        self.log.append({"seq": entry.seq, "kind": entry.kind, "at": entry.time, "text": text})

    def _settle_pending(self, intent: str, *, recovery_only: bool) -> None:
        """Drop the proposals of an intent that has been decided (or, `recovery_only`, only its
        question on the recovery channel); the run runs again once nothing waits."""
        decided = [
            key
            for key, item in self.pending.items()
            if item.intent == intent
            and (not recovery_only or (item.channel == RECOVERY_CHANNEL and key != intent))
        ]
        for key in decided:
            del self.pending[key]
        if decided and not self.pending and self.status is RunStatus.WAITING_APPROVAL:
            self.status = RunStatus.RUNNING

    def counters(self) -> dict[str, int]:
        return {
            "steps_executed": self.steps_executed,
            "intents_submitted": self.intents_submitted,
            "commits": self.commits,
            "rejections": self.rejections,
            "failures": self.failures,
            "tool_calls": self.usage.tool_calls,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "terminated_by": self.terminated_by,
            "final_answer": self.final_answer,
            "error": self.error,
            "steps_executed": self.steps_executed,
            "intents_submitted": self.intents_submitted,
            "commits": self.commits,
            "rejections": self.rejections,
            "failures": self.failures,
            "usage": self.usage.as_dict(),
            "head_seq": self.head_seq,
            "head_id": self.head_id,
            "log": list(self.log),
            "pending": {key: item.as_dict() for key, item in self.pending.items()},
            "max_steps": self.max_steps,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RunSummary:
        usage = data.get("usage") or {}
        summary = RunSummary(
            status=RunStatus(data["status"]),
            terminated_by=data.get("terminated_by"),
            final_answer=data.get("final_answer"),
            error=data.get("error"),
            steps_executed=data["steps_executed"],
            intents_submitted=data["intents_submitted"],
            commits=data["commits"],
            rejections=data["rejections"],
            failures=data["failures"],
            usage=Usage(**usage),
            head_seq=data["head_seq"],
            head_id=data.get("head_id"),
            max_steps=data.get("max_steps"),
        )
        summary.log.extend(data.get("log") or [])
        summary.pending.update(
            (key, Pending.from_dict(key, item)) for key, item in (data.get("pending") or {}).items()
        )
        return summary


SUMMARY: KindTable[RunSummary, str] = KindTable("run summary", "")
"""What each entry kind does to the summary; a handler returns the log line's text."""


@SUMMARY.on(EntryKind.RUN_STARTED)
def _run_started(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    s.max_steps = body.get("max_steps")
    return _clip(str(body.get("task", "")))


@SUMMARY.on(EntryKind.TURN)
def _turn(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    s.steps_executed += 1
    usage = body.get("usage") or {}
    s.usage = s.usage.plus(
        Usage(
            int(usage.get("input_tokens", 0)),
            int(usage.get("output_tokens", 0)),
            0,
            int(usage.get("usd_millicents", 0)),
        )
    )
    return _clip(str(body.get("text") or f"step {body.get('step')}"))


@SUMMARY.on(EntryKind.INTENT)
def _intent(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    s.intents_submitted += 1
    return f"{body.get('tool')} proposed"


@SUMMARY.on(EntryKind.SUSPENSION)
def _suspension(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    # A proposal is the intent; on the recovery channel it is the execution whose
    # outcome is unknown (the intent may also hold its policy approvals meanwhile).
    proposal = body.get("execution") or body["intent"]
    s.pending[proposal] = Pending(
        proposal_id=proposal,
        intent=body["intent"],
        channel=str(body.get("channel")),
        tool=body.get("tool"),
        arguments_preview=body.get("arguments_preview"),
        reason=body.get("message"),
        required=int(body.get("quorum", 1)),
        suspended_at=entry.time,
    )
    s.status = RunStatus.WAITING_APPROVAL
    return f"{body.get('tool')} waits for approval on {body.get('channel')}"


@SUMMARY.on(EntryKind.APPROVAL)
def _approval(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    waiting = s.pending.get(body.get("proposal_id", ""))
    if waiting is not None and body.get("approve"):
        waiting.approvers.append(str(body.get("approver")))
    elif waiting is not None:
        waiting.denied_by = str(body.get("approver"))
    verdict = "approved" if body.get("approve") else "denied"
    return f"{body.get('approver')} {verdict} on {body.get('channel')}"


@SUMMARY.on(EntryKind.REJECTION)
def _rejection(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    s.rejections += 1
    return f"{body.get('tool')} rejected: {body.get('reason')}"


@SUMMARY.on(EntryKind.COMMIT)
def _commit(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    s.commits += 1
    s.usage = s.usage.with_tool_call()
    delegated = delegated_usage(body)
    if delegated is not None:
        # A delegation's commit carries what its child run spent: the parent pays that
        # (never the carve-out), and live state and replay fold it alike.
        s.usage = s.usage.plus(delegated)
    return f"{body.get('tool')} committed"


@SUMMARY.on(EntryKind.DELEGATION)
def _delegation(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    return f"delegated to run {body.get('child_run_id')}"


@SUMMARY.on(EntryKind.TOOL_FAILURE)
def _tool_failure(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    s.failures += 1
    s.usage = s.usage.with_tool_call()
    error = body.get("error") or {}
    return _clip(f"{body.get('tool')} failed: {error.get('message', '')}")


@SUMMARY.on(EntryKind.RUN_ENDED)
def _run_ended(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    s.status = RunStatus(body["status"])
    s.terminated_by = body.get("terminated_by")
    s.final_answer = body.get("final_answer")
    s.error = body.get("error")
    s.pending.clear()
    return f"run {s.status.value} ({s.terminated_by})"


@SUMMARY.on(EntryKind.EXECUTION_STARTED)
def _execution_started(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    # Running again is what an operator's approval on the recovery channel decided.
    s._settle_pending(body.get("intent", ""), recovery_only=True)
    return f"{body.get('tool')} started"


@SUMMARY.on(EntryKind.RESUMPTION)
def _resumption(s: RunSummary, entry: Entry) -> str:
    body = entry.body
    s.status = RunStatus.RUNNING
    s.terminated_by = None
    s.final_answer = None
    s.error = None
    s.max_steps = body.get("max_steps", s.max_steps)
    return f"run resumed by {body.get('requested_by')} (max_steps {s.max_steps})"


@SUMMARY.on(EntryKind.CANCELLATION)
def _cancellation(s: RunSummary, entry: Entry) -> str:
    return f"cancelled by {entry.body.get('requested_by')}"
