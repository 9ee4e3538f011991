"""The API gateway: bearer-key authentication, per-key rate limits and request counters.

With no keys at all (none seeded from `THYMOS_API_KEYS`, none made with `thymos keys create`)
the server is open and every caller is the anonymous admin of tenant `default`. Once a key
exists, every route that acts for a caller (all of them but `/health`, `/ready` and the OpenAPI
document) needs `Authorization: Bearer <key>`.

The gateway keeps every key in memory, by the hash of its secret, so authenticating costs one
BLAKE3 and one dict lookup. It reloads the table every `KEY_RELOAD_S`, which is how a key made
with the CLI while the server runs starts to work (and how an open server becomes a guarded one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from thymos.core import ErrorCode, ThymosError, Usage, rfc3339_from_us
from thymos.storage import ApiKey, KeySeed, KeyStore, StorageError, hash_secret

from ._caller import ANONYMOUS, Caller, Role

log = logging.getLogger("thymos.api.auth")

RATE_WINDOW_S = 60.0
"""`rpm` is requests per minute: the window is a minute."""

KEY_RELOAD_S = 2.0
"""How soon a key made with the CLI while the server runs is accepted."""

COUNTER_FLUSH_S = 2.0
"""How often request counters are written; a crash loses at most this long of counts.

Why batch rather than write per request: a write per request through the grouped writer costs
a queue hop, a thread wake-up and a share of a transaction. Measured with `SqliteKeyStore`
(3,000 increments, WAL, synchronous=NORMAL): 65 us each awaited one by one, 35 us each when
submitted concurrently and grouped, against 0.1 us for a dict increment; and every such write
takes the one writer from ledger appends. Request counts are statistics, not ledger facts, so a bounded
loss on a crash is the right trade; `GET /usage` adds the unflushed counts, so it is exact while
the process lives, and shutdown flushes them.
"""

_ROLES = {role.value: role for role in Role}


class SlidingWindow:
    """A sliding-window log: at most `rpm` admitted requests in any `RATE_WINDOW_S` seconds.

    It keeps the admission time of each request in the last window (at most `rpm` of them, which
    `KEY_RPM_MAX` bounds), so the limit is exact (no burst of 2x at a fixed window's edge) and
    `Retry-After` is exactly when the oldest admitted request leaves the window. Rejected
    requests are not recorded, so they never count against the window.
    """

    __slots__ = ("rpm", "times")

    def __init__(self, rpm: int) -> None:
        self.rpm = rpm
        self.times: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self.times and self.times[0] <= now - RATE_WINDOW_S:
            self.times.popleft()

    def admit(self, now: float) -> float | None:
        """Admit a request at `now` (None), or say in how many seconds one will be admitted."""
        self._prune(now)
        if len(self.times) >= self.rpm:
            return self.times[len(self.times) - self.rpm] + RATE_WINDOW_S - now
        self.times.append(now)
        return None

    def used(self, now: float) -> int:
        self._prune(now)
        return len(self.times)

    def frees_in(self, now: float) -> float | None:
        """Seconds until the oldest request in the window leaves it (None when it is empty)."""
        self._prune(now)
        return self.times[0] + RATE_WINDOW_S - now if self.times else None


@dataclass(frozen=True, slots=True)
class _Known:
    key: ApiKey
    caller: Caller


def _unauthenticated(message: str) -> ThymosError:
    return ThymosError(ErrorCode.UNAUTHENTICATED, message)


class Gateway:
    """Who is calling, whether they may call now, and how much each key has been used.

    Shared state, all touched only on the event loop: the key table (replaced whole on reload),
    one window per rate-limited key, and the request counts not yet written.
    """

    def __init__(self, keys: KeyStore, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        # Every storage backend has a key store (the `Storage` contract): there is no way to
        # build a gateway that skips authentication because its store cannot hold keys.
        self._keys = keys
        self._monotonic = monotonic
        self._by_hash: dict[str, _Known] = {}
        self._windows: dict[str, SlidingWindow] = {}
        self._pending: dict[str, int] = {}
        # Held while counts move from memory to the database, so `usage` never sees a batch
        # both in the database and in memory (or in neither).
        self._counts_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """True once any key exists: the server is then guarded."""
        return bool(self._by_hash)

    # -- lifecycle (the app's lifespan owns the background task) -----------------------------

    async def start(self, seeds: tuple[KeySeed, ...]) -> None:
        await self._keys.seed(seeds)
        await self._reload()
        log.info("API gateway %s (%d keys)", "on" if self.enabled else "off", len(self._by_hash))
        self._task = asyncio.create_task(self._maintain(), name="thymos-gateway")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._flush()

    async def _maintain(self) -> None:
        interval = min(KEY_RELOAD_S, COUNTER_FLUSH_S)
        while True:
            await asyncio.sleep(interval)
            await self._flush()
            await self._reload()

    async def _reload(self) -> None:
        try:
            table = await self._keys.by_secret_hashes()
        except StorageError as exc:
            log.warning("could not reload API keys; keeping the ones loaded: %s", exc)
            return
        known: dict[str, _Known] = {}
        for digest, key in table.items():
            role = _ROLES.get(key.role)
            if role is None:
                log.warning("API key %r has an unknown role %r; ignoring it", key.name, key.role)
                continue
            known[digest] = _Known(key, Caller(key.key_id, key.name, key.tenant, role))
        self._by_hash = known
        ids = {k.key.key_id: k.key.rpm for k in known.values()}
        for key_id in list(self._windows):
            if ids.get(key_id) is None:
                del self._windows[key_id]
        for key_id, rpm in ids.items():
            if rpm is not None:
                window = self._windows.setdefault(key_id, SlidingWindow(rpm))
                window.rpm = rpm

    async def _flush(self) -> None:
        if not self._pending:
            return
        async with self._counts_lock:
            batch, self._pending = self._pending, {}
            try:
                await self._keys.add_requests(batch)
            except StorageError as exc:
                log.warning("could not write request counters; will retry: %s", exc)
                for key_id, n in batch.items():
                    self._pending[key_id] = self._pending.get(key_id, 0) + n

    # -- per request -------------------------------------------------------------------------

    async def authenticate(self, request: Request) -> Caller:
        """The caller of this request, admitted by its key's rate limit and counted."""
        if not self._by_hash:
            return ANONYMOUS
        header = request.headers.get("authorization")
        if header is None:
            raise _unauthenticated("this server needs an API key: send Authorization: Bearer <key>")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthenticated("the Authorization header must be 'Bearer <key>'")
        # Looking up the hash (not the secret) means timing reveals nothing usable about a key.
        known = self._by_hash.get(hash_secret(token))
        if known is None:
            raise _unauthenticated("the API key is not valid")
        window = self._windows.get(known.key.key_id)
        if window is not None:
            wait_s = window.admit(self._monotonic())
            if wait_s is not None:
                retry = max(1, math.ceil(wait_s))
                raise ThymosError(
                    ErrorCode.RATE_LIMITED,
                    f"the key {known.key.name!r} is over its limit of {window.rpm} requests "
                    f"a minute; retry in {retry}s",
                    {"rpm": window.rpm, "retry_after_s": retry},
                )
        key_id = known.key.key_id
        self._pending[key_id] = self._pending.get(key_id, 0) + 1
        return known.caller

    # -- GET /usage --------------------------------------------------------------------------

    async def usage(
        self, caller: Caller, live: Mapping[str, Usage] | None = None
    ) -> dict[str, Any]:
        """One row per key `caller` may see: every key for an admin, else only its own. `live`
        adds what active runs have used since their rows were last written."""
        if not self._by_hash:
            return {"gateway": False, "window_seconds": RATE_WINDOW_S, "keys": []}
        keys = await self._keys.list_keys()
        if caller.role is not Role.ADMIN:
            keys = [k for k in keys if k.key_id == caller.key_id]
        totals = await self._keys.run_totals()
        async with self._counts_lock:
            stored = await self._keys.requests()
            requests = {
                k.key_id: stored.get(k.key_id, 0) + self._pending.get(k.key_id, 0) for k in keys
            }
        now = self._monotonic()
        now_us = time.time_ns() // 1000
        rows = []
        for key in keys:
            run = totals.get(key.key_id)
            more = (live or {}).get(key.key_id, Usage())
            rows.append(
                {
                    "key_id": key.key_id,
                    "name": key.name,
                    "tenant": key.tenant,
                    "role": key.role,
                    "source": key.source,
                    "created_at": key.created_at,
                    "requests": requests[key.key_id],
                    "runs_created": run.runs if run else 0,
                    "input_tokens": (run.input_tokens if run else 0) + more.input_tokens,
                    "output_tokens": (run.output_tokens if run else 0) + more.output_tokens,
                    "tool_calls": (run.tool_calls if run else 0) + more.tool_calls,
                    "usd_millicents": (run.usd_millicents if run else 0) + more.usd_millicents,
                    "rpm": key.rpm,
                    "window": self._window_view(key, now, now_us),
                }
            )
        return {"gateway": True, "window_seconds": RATE_WINDOW_S, "keys": rows}

    def _window_view(self, key: ApiKey, now: float, now_us: int) -> dict[str, Any] | None:
        window = self._windows.get(key.key_id)
        if window is None:
            return None
        used = window.used(now)
        frees_in = window.frees_in(now)
        return {
            "kind": "sliding",
            "used": used,
            "remaining": max(0, window.rpm - used),
            "resets_at": None
            if frees_in is None
            else rfc3339_from_us(now_us + math.ceil(frees_in * 1_000_000)),
        }
