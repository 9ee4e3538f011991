"""Named limits of the runtime, each with the reason for its value."""

RUNS_ACTIVE_MAX = 512
"""Active runs per server process; past it POST /runs answers 429. Each active run holds an
actor task, its world in memory and its feeds."""

SUBSCRIBERS_PER_RUN_MAX = 2000
"""Stream subscribers per run (all three streams together); past it 429."""

PAGE_LIMIT_MAX = 500
PAGE_LIMIT_DEFAULT = 50

REPLAY_PAGE_ROWS = 2000
"""Rows read per storage round trip while replaying or exporting: bounded memory at any length."""

KEEPALIVE_S = 15.0
"""SSE comment keep-alive interval (API.md: at least every 15 s)."""

SIGNED_HEAD_INTERVAL = 1024
"""A long run's head is signed at least every this many entries (besides every terminal and
waiting state), so a copy cut anywhere loses at most this many entries' worth of proof."""
