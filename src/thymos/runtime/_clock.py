"""The clock and randomness the runtime is given (tests inject their own)."""

from __future__ import annotations

import os
import time
from typing import Protocol


class Clock(Protocol):
    def now_us(self) -> int:
        """Wall-clock time in microseconds since the Unix epoch (for ledger times)."""
        ...

    def monotonic_ms(self) -> int:
        """A monotonic millisecond count (for budgets and timeouts)."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1000

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


def system_random(count: int) -> bytes:
    return os.urandom(count)
