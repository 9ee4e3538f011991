"""The server's Prometheus metrics, in a registry of their own (one per app, never the process's
global one: tests build many apps in one process, and two registries never collide).

Counters of recorded facts (intents, decisions, rejections by reason, votes, tool executions,
run ends) are counted from the entries the run's one writer has made durable, so they agree
with the ledgers written by this process. Latencies are observed where the time is spent.
Gauges of what is true now (active runs, approvals waiting) are computed when scraped.

Every label's values are bounded: entry kinds, statuses, endings, rejection reasons and tool
failure codes are enums; tool names come from the catalog; providers from the provider list.
No tenant, key or run id is ever a label value (their number is unbounded, and a scrape is not
the place to learn another tenant's names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

FAST_BUCKETS_S = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
"""Ledger appends and commits: tens of microseconds (staging) to tens of milliseconds (a
transaction flushed to disk)."""
CALL_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Model turns and tool calls: a millisecond (an in-process tool) to minutes (a long command)."""
WAIT_BUCKETS_S = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0, 7 * 86400.0)
"""Approvals: a person answers in seconds to days (a writ is valid for a week by default)."""
REPLAY_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)


class Metrics:
    """Every `thymos_*` metric of one server, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs_started = Counter(
            "thymos_runs_started", "Runs started (run_started entries recorded)", registry=r
        )
        self.runs_ended = Counter(
            "thymos_runs_ended",
            "Runs ended (run_ended entries recorded), by final status and what ended them",
            ["status", "terminated_by"],
            registry=r,
        )
        self.runs_active = Gauge(
            "thymos_runs_active", "Runs active on this server (running or waiting)", registry=r
        )
        self.entries = Counter(
            "thymos_ledger_entries",
            "Ledger entries made durable by this server, by kind",
            ["kind"],
            registry=r,
        )
        self.intents = Counter(
            "thymos_intents_proposed", "Intents proposed by cognition (intent entries)", registry=r
        )
        self.decisions = Counter(
            "thymos_decisions",
            "Decisions recorded, by outcome: executed (a commit or tool_failure of an allowed "
            "call), suspended (waiting for approval), rejected",
            ["outcome"],
            registry=r,
        )
        self.rejections = Counter(
            "thymos_rejections", "Rejections recorded, by reason", ["reason"], registry=r
        )
        self.votes = Counter(
            "thymos_approval_votes",
            "Approval votes recorded, by vote (approve or deny)",
            ["vote"],
            registry=r,
        )
        self.approvals_waiting = Gauge(
            "thymos_approvals_waiting",
            "Proposals waiting for approval in the runs active on this server",
            registry=r,
        )
        self.approval_wait = Histogram(
            "thymos_approval_wait_seconds",
            "From a proposal's suspension to a vote on it",
            buckets=WAIT_BUCKETS_S,
            registry=r,
        )
        self.tool_executions = Counter(
            "thymos_tool_executions",
            "Tool executions recorded, by tool and outcome (committed, or the failure code)",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_seconds = Histogram(
            "thymos_tool_execution_seconds",
            "How long a tool ran, by tool",
            ["tool"],
            buckets=CALL_BUCKETS_S,
            registry=r,
        )
        self.append_seconds = Histogram(
            "thymos_ledger_append_seconds",
            "Staging an append: sealing, folding and submitting entries (the run's own time)",
            buckets=FAST_BUCKETS_S,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "thymos_ledger_commit_seconds",
            "From an append's submission to its durability (the storage transaction)",
            buckets=FAST_BUCKETS_S,
            registry=r,
        )
        self.replayed = Counter(
            "thymos_replay_entries",
            "Entries verified by replays (GET /runs/:id/replay)",
            registry=r,
        )
        self.replay_seconds = Histogram(
            "thymos_replay_seconds", "How long a replay took", buckets=REPLAY_BUCKETS_S, registry=r
        )
        self.sse_subscribers = Gauge(
            "thymos_sse_subscribers", "Open SSE streams (all three kinds)", registry=r
        )
        self.turn_seconds = Histogram(
            "thymos_model_turn_seconds",
            "A model turn, by provider",
            ["provider"],
            buckets=CALL_BUCKETS_S,
            registry=r,
        )
        self.tokens_in = Counter(
            "thymos_model_input_tokens", "Model input tokens, by provider", ["provider"], registry=r
        )
        self.tokens_out = Counter(
            "thymos_model_output_tokens",
            "Model output tokens, by provider",
            ["provider"],
            registry=r,
        )
        # Children resolved once per label value: a label lookup costs more than the increment.
        self._entry_children: dict[str, Any] = {}
        self._counting: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "run_started": lambda body: self.runs_started.inc(),
            "intent": lambda body: self.intents.inc(),
            "rejection": self._rejection,
            "suspension": lambda body: self._decided("suspended"),
            "approval": self._vote,
            "commit": lambda body: self._executed(body, "committed"),
            "tool_failure": self._failure,
            "run_ended": self._run_ended,
        }
        self._decision_children: dict[str, Any] = {}

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def durable(self, entries: Sequence[Any]) -> None:
        """Count entries a run's writer has made durable (one call per write)."""
        children, counting = self._entry_children, self._counting
        for entry in entries:
            kind = entry.kind
            child = children.get(kind)
            if child is None:
                child = children[kind] = self.entries.labels(kind)
            child.inc()
            count = counting.get(kind)
            if count is not None:
                count(entry.body)

    def _decided(self, outcome: str) -> None:
        child = self._decision_children.get(outcome)
        if child is None:
            child = self._decision_children[outcome] = self.decisions.labels(outcome)
        child.inc()

    def _rejection(self, body: Mapping[str, Any]) -> None:
        self._decided("rejected")
        self.rejections.labels(str(body.get("reason"))).inc()

    def _vote(self, body: Mapping[str, Any]) -> None:
        self.votes.labels("approve" if body.get("approve") else "deny").inc()

    def _executed(self, body: Mapping[str, Any], outcome: str) -> None:
        self._decided("executed")
        self.tool_executions.labels(str(body.get("tool")), outcome).inc()

    def _failure(self, body: Mapping[str, Any]) -> None:
        error = body.get("error")
        code = error.get("code") if isinstance(error, Mapping) else None
        self._executed(body, str(code))

    def _run_ended(self, body: Mapping[str, Any]) -> None:
        self.runs_ended.labels(str(body.get("status")), str(body.get("terminated_by"))).inc()
