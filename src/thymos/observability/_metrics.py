"""The server's Prometheus metrics, in a registry of their own (one per app, never the process's
global one: tests build many apps in one process, and two registries never collide).

Counters of recorded facts (intents, decisions, rejections by reason, votes, tool executions,
run ends) are counted from the entries the run's one writer has made durable, so they agree
with the ledgers written by this process. Latencies are observed where the time is spent.
Gauges of what is true now (active runs, approvals waiting) are computed when scraped.

The values are plain numbers kept by one custom collector, not `prometheus_client`'s metric
objects: those take a lock per increment and scan a histogram's buckets one by one (1 to 2 µs
an observation, several per intent), and every observation here happens on the event loop's
one thread (the runtime's hooks, and the scrape itself), so a lock buys nothing. An
observation is a dictionary lookup and an addition, or a binary search for a histogram.

Every label's values are bounded: entry kinds, statuses, endings, rejection reasons and tool
failure codes are enums; tool names come from the catalog; providers from the provider list.
No tenant, key or run id is ever a label value (their number is unbounded, and a scrape is not
the place to learn another tenant's names).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
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


class Histogram:
    """One histogram series: a count per bucket (upper bounds inclusive, as Prometheus's `le`)
    and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


class Histograms:
    """A histogram per label value (one label), each created on its first observation."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.series: dict[str, Histogram] = {}

    def of(self, label: str) -> Histogram:
        histogram = self.series.get(label)
        if histogram is None:
            histogram = self.series[label] = Histogram(self.bounds)
        return histogram


def _zero() -> float:
    return 0.0


class Metrics:
    """Every `thymos_*` metric of one server, in its own registry."""

    def __init__(self) -> None:
        self.runs_started = 0
        self.runs_ended: dict[tuple[str, str], int] = {}
        self.entries: dict[str, int] = {}
        self.intents = 0
        self.decisions: dict[str, int] = {}
        self.rejections: dict[str, int] = {}
        self.votes: dict[str, int] = {}
        self.tool_executions: dict[tuple[str, str], int] = {}
        self.tool_seconds = Histograms(CALL_BUCKETS_S)
        self.turn_seconds = Histograms(CALL_BUCKETS_S)
        self.tokens_in: dict[str, int] = {}
        self.tokens_out: dict[str, int] = {}
        self.append_seconds = Histogram(FAST_BUCKETS_S)
        self.commit_seconds = Histogram(FAST_BUCKETS_S)
        self.approval_wait = Histogram(WAIT_BUCKETS_S)
        self.replayed = 0
        self.replay_seconds = Histogram(REPLAY_BUCKETS_S)
        self.sse_subscribers = 0
        self.runs_active: Callable[[], float] = _zero
        self.approvals_waiting: Callable[[], float] = _zero
        self._counting: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "run_started": self._run_started,
            "intent": self._intent,
            "rejection": self._rejection,
            "suspension": self._suspension,
            "approval": self._vote,
            "commit": self._commit,
            "tool_failure": self._failure,
            "run_ended": self._run_ended,
        }
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def durable(self, entries: Sequence[Any]) -> None:
        """Count entries a run's writer has made durable (one call per write)."""
        counts, counting = self.entries, self._counting
        for entry in entries:
            kind = entry.kind
            counts[kind] = counts.get(kind, 0) + 1
            count = counting.get(kind)
            if count is not None:
                count(entry.body)

    @staticmethod
    def _add(counts: dict[Any, int], key: Any, amount: int = 1) -> None:
        counts[key] = counts.get(key, 0) + amount

    def _run_started(self, body: Mapping[str, Any]) -> None:
        self.runs_started += 1

    def _intent(self, body: Mapping[str, Any]) -> None:
        self.intents += 1

    def _suspension(self, body: Mapping[str, Any]) -> None:
        self._add(self.decisions, "suspended")

    def _rejection(self, body: Mapping[str, Any]) -> None:
        self._add(self.decisions, "rejected")
        self._add(self.rejections, str(body.get("reason")))

    def _vote(self, body: Mapping[str, Any]) -> None:
        self._add(self.votes, "approve" if body.get("approve") else "deny")

    def _commit(self, body: Mapping[str, Any]) -> None:
        self._add(self.decisions, "executed")
        self._add(self.tool_executions, (str(body.get("tool")), "committed"))

    def _failure(self, body: Mapping[str, Any]) -> None:
        error = body.get("error")
        code = error.get("code") if isinstance(error, Mapping) else None
        self._add(self.decisions, "executed")
        self._add(self.tool_executions, (str(body.get("tool")), str(code)))

    def _run_ended(self, body: Mapping[str, Any]) -> None:
        self._add(self.runs_ended, (str(body.get("status")), str(body.get("terminated_by"))))


def _counter(name: str, doc: str, labels: Sequence[str], values: Mapping[Any, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


def _histogram(name: str, doc: str, histogram: Histogram) -> Metric:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], histogram.cumulative(), histogram.sum)
    return family


def _histograms(name: str, doc: str, label: str, histograms: Histograms) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, histogram in sorted(histograms.series.items()):
        family.add_metric([value], histogram.cumulative(), histogram.sum)
    return family


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


class _Collector:
    """Turns the numbers of one `Metrics` into metric families when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield CounterMetricFamily(
            "thymos_runs_started", "Runs started (run_started entries)", value=m.runs_started
        )
        yield _counter(
            "thymos_runs_ended",
            "Runs ended (run_ended entries), by final status and what ended them",
            ("status", "terminated_by"),
            m.runs_ended,
        )
        yield _gauge(
            "thymos_runs_active", "Runs active on this server (running or waiting)", m.runs_active()
        )
        yield _counter(
            "thymos_ledger_entries",
            "Ledger entries made durable by this server, by kind",
            ("kind",),
            m.entries,
        )
        yield CounterMetricFamily(
            "thymos_intents_proposed",
            "Intents proposed by cognition (intent entries)",
            value=m.intents,
        )
        yield _counter(
            "thymos_decisions",
            "Decisions recorded, by outcome: executed (a commit or tool_failure of an allowed "
            "call), suspended (waiting for approval), rejected",
            ("outcome",),
            m.decisions,
        )
        yield _counter(
            "thymos_rejections", "Rejections recorded, by reason", ("reason",), m.rejections
        )
        yield _counter(
            "thymos_approval_votes",
            "Approval votes recorded, by vote (approve or deny)",
            ("vote",),
            m.votes,
        )
        yield _gauge(
            "thymos_approvals_waiting",
            "Proposals waiting for approval in the runs active on this server",
            m.approvals_waiting(),
        )
        yield _histogram(
            "thymos_approval_wait_seconds",
            "From a proposal's suspension to a vote on it",
            m.approval_wait,
        )
        yield _counter(
            "thymos_tool_executions",
            "Tool executions recorded, by tool and outcome (committed, or the failure code)",
            ("tool", "outcome"),
            m.tool_executions,
        )
        yield _histograms(
            "thymos_tool_execution_seconds", "How long a tool ran, by tool", "tool", m.tool_seconds
        )
        yield _histogram(
            "thymos_ledger_append_seconds",
            "Staging an append: sealing, folding and submitting entries (the run's own time)",
            m.append_seconds,
        )
        yield _histogram(
            "thymos_ledger_commit_seconds",
            "From an append's submission to its durability (the storage transaction)",
            m.commit_seconds,
        )
        yield CounterMetricFamily(
            "thymos_replay_entries",
            "Entries verified by replays (GET /runs/:id/replay)",
            value=m.replayed,
        )
        yield _histogram("thymos_replay_seconds", "How long a replay took", m.replay_seconds)
        yield _gauge(
            "thymos_sse_subscribers", "Open SSE streams (all three kinds)", m.sse_subscribers
        )
        yield _histograms(
            "thymos_model_turn_seconds", "A model turn, by provider", "provider", m.turn_seconds
        )
        yield _counter(
            "thymos_model_input_tokens",
            "Model input tokens, by provider",
            ("provider",),
            m.tokens_in,
        )
        yield _counter(
            "thymos_model_output_tokens",
            "Model output tokens, by provider",
            ("provider",),
            m.tokens_out,
        )
