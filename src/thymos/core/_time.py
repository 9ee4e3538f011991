"""Time values as the ledger writes them: RFC 3339 UTC with microseconds, from epoch microseconds.

The core takes time as an integer from an injected clock; it never reads the system clock.
"""

from __future__ import annotations

from datetime import UTC, datetime

_last_second: list[tuple[int, str]] = [(-1, "")]
"""The formatted prefix of the last whole second seen: times come in order, so most calls only
append the microseconds. A one-element memo of a pure function, not shared state."""


def rfc3339_from_us(unix_us: int) -> str:
    """`2026-11-28T15:22:21.123456Z` for a count of microseconds since the Unix epoch."""
    seconds, micros = divmod(unix_us, 1_000_000)
    cached_second, prefix = _last_second[0]
    if cached_second != seconds:
        prefix = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second[0] = (seconds, prefix)
    return f"{prefix}.{micros:06d}Z"


def us_from_rfc3339(text: str) -> int:
    """Parse an RFC 3339 time (any offset) into epoch microseconds; ValueError if malformed."""
    normalised = text.strip()
    if normalised.endswith(("Z", "z")):
        normalised = normalised[:-1] + "+00:00"
    moment = datetime.fromisoformat(normalised)
    if moment.tzinfo is None:
        raise ValueError("an RFC 3339 time needs an offset or Z")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
