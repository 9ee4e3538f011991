"""The run summary: counters, status and a short log, folded from ledger entries.

The run record, the execution session and `GET /runs` all show this fold. It is updated one
entry at a time (O(1) per entry) and stored beside the ledger in the same transaction, so the
stored summary never disagrees with the entries it was folded from.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Proposals waiting for approval, by proposal id (the intent entry's id)."""
    max_steps: int | None = None
    """The run's step limit: as started, or as its latest resumption raised it."""

    def fold(self, entry: Entry) -> None:
        """Account for one entry, in seq order."""
        assert entry.seq == self.head_seq + 1, "summary folds entries in seq order"
        self.head_seq, self.head_id = entry.seq, entry.id
        body = entry.body
        kind = entry.kind
        text = ""
        if kind == EntryKind.RUN_STARTED:
            self.max_steps = body.get("max_steps")
            text = _clip(str(body.get("task", "")))
        elif kind == EntryKind.TURN:
            self.steps_executed += 1
            usage = body.get("usage") or {}
            self.usage = self.usage.plus(
                Usage(
                    int(usage.get("input_tokens", 0)),
                    int(usage.get("output_tokens", 0)),
                    0,
                    int(usage.get("usd_millicents", 0)),
                )
            )
            text = _clip(str(body.get("text") or f"step {body.get('step')}"))
        elif kind == EntryKind.INTENT:
            self.intents_submitted += 1
            text = f"{body.get('tool')} proposed"
        elif kind == EntryKind.SUSPENSION:
            # A proposal is the intent; on the recovery channel it is the execution whose
            # outcome is unknown (the intent may also hold its policy approvals meanwhile).
            proposal = body.get("execution") or body["intent"]
            self.pending[proposal] = {
                "proposal_id": proposal,
                "intent": body["intent"],
                "channel": body.get("channel"),
                "tool": body.get("tool"),
                "arguments_preview": body.get("arguments_preview"),
                "reason": body.get("message"),
                "approvals": 0,
                "required": body.get("quorum", 1),
                "approvers": [],
                "suspended_at": entry.time,
            }
            self.status = RunStatus.WAITING_APPROVAL
            text = f"{body.get('tool')} waits for approval on {body.get('channel')}"
        elif kind == EntryKind.APPROVAL:
            waiting = self.pending.get(body.get("proposal_id", ""))
            if waiting is not None and body.get("approve"):
                waiting["approvals"] += 1
                waiting["approvers"].append(body.get("approver"))
            elif waiting is not None:
                waiting["denied_by"] = body.get("approver")
            verdict = "approved" if body.get("approve") else "denied"
            text = f"{body.get('approver')} {verdict} on {body.get('channel')}"
        elif kind == EntryKind.REJECTION:
            self.rejections += 1
            text = f"{body.get('tool')} rejected: {body.get('reason')}"
        elif kind == EntryKind.COMMIT:
            self.commits += 1
            self.usage = self.usage.with_tool_call()
            delegated = delegated_usage(body)
            if delegated is not None:
                # A delegation's commit carries what its child run spent: the parent pays that
                # (never the carve-out), and live state and replay fold it alike.
                self.usage = self.usage.plus(delegated)
            text = f"{body.get('tool')} committed"
        elif kind == EntryKind.DELEGATION:
            text = f"delegated to run {body.get('child_run_id')}"
        elif kind == EntryKind.TOOL_FAILURE:
            self.failures += 1
            self.usage = self.usage.with_tool_call()
            error = body.get("error") or {}
            text = _clip(f"{body.get('tool')} failed: {error.get('message', '')}")
        elif kind == EntryKind.RUN_ENDED:
            self.status = RunStatus(body["status"])
            self.terminated_by = body.get("terminated_by")
            self.final_answer = body.get("final_answer")
            self.error = body.get("error")
            self.pending.clear()
            text = f"run {self.status.value} ({self.terminated_by})"
        elif kind == EntryKind.EXECUTION_STARTED:
            # Running again is what an operator's approval on the recovery channel decided.
            self._settle_pending(body.get("intent", ""), recovery_only=True)
            text = f"{body.get('tool')} started"
        elif kind == EntryKind.RESUMPTION:
            self.status = RunStatus.RUNNING
            self.terminated_by = None
            self.final_answer = None
            self.error = None
            self.max_steps = body.get("max_steps", self.max_steps)
            text = f"run resumed by {body.get('requested_by')} (max_steps {self.max_steps})"
        if kind in _DECISIONS:
            self._settle_pending(body.get("intent", ""), recovery_only=False)
        self.log.append({"seq": entry.seq, "kind": kind, "at": entry.time, "text": text})

    def _settle_pending(self, intent: str, *, recovery_only: bool) -> None:
        """Drop the proposals of an intent that has been decided (or, `recovery_only`, only its
        question on the recovery channel); the run runs again once nothing waits."""
        decided = [
            key
            for key, item in self.pending.items()
            if item.get("intent", key) == intent
            and (not recovery_only or (item.get("channel") == RECOVERY_CHANNEL and key != intent))
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
            "pending": self.pending,
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
        summary.pending.update(data.get("pending") or {})
        return summary
