"""Retrying a model turn: rate limits, server errors, timeouts and dropped streams.

A turn that fails for a reason that passes (429, 5xx, a timeout, a connection lost, a stream
that ended before its last event) is tried again, up to `TURN_ATTEMPTS` times, after an
exponentially growing delay with jitter, or after exactly what `Retry-After` asks when the
vendor says (bounded by `RETRY_AFTER_S_MAX`). Anything else, or the last failure, is a
`CognitionFailed` with a message a person can act on.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ._protocol import CognitionFailed

T = TypeVar("T")

TURN_ATTEMPTS = 4
BACKOFF_S = 0.5
RETRY_AFTER_S_MAX = 60.0


class Retryable(Exception):
    """A failure worth another attempt; `after_s` is the vendor's `Retry-After`, if it gave one."""

    def __init__(self, message: str, after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.after_s = after_s


def retry_after(headers: object) -> float | None:
    """Seconds from a `Retry-After` header (a number of seconds), bounded; None without one."""
    value = getattr(headers, "get", lambda _: None)("retry-after")
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_S_MAX) if value is not None else None
    except (TypeError, ValueError):
        return None


def status_failure(status: int, message: str, headers: object) -> Exception:
    """What a vendor's HTTP error means for the turn: 429 and 5xx pass (`Retryable`, with the
    vendor's `Retry-After`), anything else is final."""
    if status == 429 or status >= 500:
        return Retryable(message, retry_after(headers))
    return CognitionFailed(message, code="provider_error")


async def with_retries(attempt: Callable[[], Awaitable[T]], *, what: str) -> T:
    """`attempt()` until it succeeds or fails for good; `Retryable` means try again."""
    last = ""
    for number in range(TURN_ATTEMPTS):
        try:
            return await attempt()
        except Retryable as exc:
            last = exc.message
            if number == TURN_ATTEMPTS - 1:
                break
            delay = exc.after_s
            if delay is None:
                delay = BACKOFF_S * 2**number * (0.5 + random.random())
            await asyncio.sleep(delay)
    raise CognitionFailed(
        f"{what} failed {TURN_ATTEMPTS} times; the last time: {last}", code="provider_unavailable"
    )
