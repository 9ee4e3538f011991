"""The one object the runtime reports to: one call per event, each a few additions (well under a
microsecond; see `_metrics`), and a span when tracing is on.

The runtime holds an `Observer` (a fresh one per runtime unless the app passes its own), so
every hook is a plain method call; none builds a dict or writes a log line on the path of an
intent. Every hook is called on the event loop's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._metrics import Metrics
from ._tracing import Tracer


class Observer:
    def __init__(self, metrics: Metrics | None = None, tracer: Tracer | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.tracer = tracer
        """None unless tracing is on: hooks check it before opening a span."""
        self._staged = self.metrics.append_seconds.observe
        self._committed = self.metrics.commit_seconds.observe
        self._count = self.metrics.durable
        self._tool = self.metrics.tool_seconds.of

    def watch(
        self, *, runs_active: Callable[[], float], approvals_waiting: Callable[[], float]
    ) -> None:
        """Gauges of what is true now, computed when scraped (nothing to keep up to date)."""
        self.metrics.runs_active = runs_active
        self.metrics.approvals_waiting = approvals_waiting

    def staged(self, seconds: float) -> None:
        """An append was staged (sealed, folded, submitted) in `seconds`."""
        self._staged(seconds)

    def durable(self, entries: Sequence[Any], seconds: float) -> None:
        """An append's entries are durable, `seconds` after they were submitted."""
        self._committed(seconds)
        self._count(entries)

    def turn(self, provider: str, seconds: float, tokens_in: int, tokens_out: int) -> None:
        m = self.metrics
        m.turn_seconds.of(provider).observe(seconds)
        m.tokens_in[provider] = m.tokens_in.get(provider, 0) + tokens_in
        m.tokens_out[provider] = m.tokens_out.get(provider, 0) + tokens_out

    def tool_ran(self, tool: str, seconds: float) -> None:
        self._tool(tool).observe(seconds)

    def voted(self, waited_s: float) -> None:
        """A vote was recorded `waited_s` after its proposal's suspension."""
        self.metrics.approval_wait.observe(max(0.0, waited_s))

    def replayed(self, entries: int, seconds: float) -> None:
        self.metrics.replayed += entries
        self.metrics.replay_seconds.observe(seconds)

    def subscribed(self) -> None:
        self.metrics.sse_subscribers += 1

    def unsubscribed(self) -> None:
        self.metrics.sse_subscribers -= 1
