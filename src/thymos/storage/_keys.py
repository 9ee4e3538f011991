"""API keys and per-key usage in the SQLite ledger database.

Only a hash of each secret is stored. Secrets are high-entropy random strings (the CLI makes 240
bits), so a fast hash is right: there is nothing for a slow password hash to protect against, and
a lookup must cost microseconds because it runs on every request. BLAKE3, the project's one hash.

The key store borrows the ledger store's single writer and reader pool (`_write`/`_read`), so key
writes are grouped with ledger appends and never contend with them for the database lock.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping, Sequence

from thymos.core import blake3_hex, rfc3339_from_us, uuid7

from . import _sql as sql
from ._contract import KEY_SOURCES, ApiKey, KeyNameTaken, KeySeed, RunTotals, StorageError
from ._sqlite import SqliteLedgerStore


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret: 64 hex characters of BLAKE3 of its UTF-8 bytes."""
    return blake3_hex(secret.encode("utf-8"))


def key_of(row: Sequence[object]) -> ApiKey:
    """A `KEY_COLUMNS` row as a key."""
    key_id, name, tenant, role, rpm, source, created_at = row
    return ApiKey(
        str(key_id),
        str(name),
        str(tenant),
        str(role),
        None if rpm is None else int(str(rpm)),
        str(source),
        str(created_at),
    )


def new_key_id() -> str:
    return uuid7(time.time_ns() // 1_000_000, os.urandom(10))


def now_text() -> str:
    return rfc3339_from_us(time.time_ns() // 1000)


class SqliteKeyStore:
    """API keys and request counters, stored beside the ledger in the same SQLite file."""

    def __init__(self, ledger: SqliteLedgerStore) -> None:
        self._ledger = ledger

    # -- keys --------------------------------------------------------------------------------

    async def create(
        self, *, name: str, tenant: str, role: str, secret: str, rpm: int | None, source: str
    ) -> ApiKey:
        """Store a new key (its secret's hash only). A taken name raises `KeyNameTaken`."""
        assert source in KEY_SOURCES
        key = ApiKey(new_key_id(), name, tenant, role, rpm, source, now_text())
        digest = hash_secret(secret)

        def work(conn: sqlite3.Connection) -> None:
            if conn.execute(sql.KEY_NAME_TAKEN, (name,)).fetchone():
                raise KeyNameTaken(name)
            if conn.execute(sql.KEY_SECRET_TAKEN, (digest,)).fetchone():
                # Only possible if a caller reuses a secret; never say which key holds it.
                raise StorageError("that secret is already used by another key")
            conn.execute(
                sql.INSERT_KEY,
                (key.key_id, name, tenant, role, rpm, source, key.created_at, digest),
            )

        await self._ledger._write(work)
        return key

    async def seed(self, seeds: Sequence[KeySeed]) -> None:
        """Make the env-seeded keys exactly `seeds`, in one transaction.

        Upsert by name: a changed secret, tenant, role or rate limit for an existing name updates
        that key in place (its id, and so its usage history, is kept). Keys seeded by an earlier
        start whose names are no longer listed are deleted: taking a key out of `THYMOS_API_KEYS`
        must revoke it. Keys made with the CLI are left alone unless a seed names them.
        """
        rows = [(s, hash_secret(s.secret)) for s in seeds]
        now = now_text()

        def work(conn: sqlite3.Connection) -> None:
            names = {s.name for s, _ in rows}
            stale = [
                str(key_id) for key_id, name in conn.execute(sql.ENV_KEYS) if name not in names
            ]
            for key_id in stale:
                conn.execute(sql.DELETE_KEY_USAGE, (key_id,))
                conn.execute(sql.DELETE_KEY, (key_id,))
            # Free every secret hash about to be assigned first, so two keys swapping secrets
            # (or a seed taking over a CLI key's secret) never trips the UNIQUE constraint midway.
            for seed, digest in rows:
                conn.execute(sql.FREE_SECRET, (digest, seed.name))
            for seed, digest in rows:
                found = conn.execute(sql.KEY_BY_NAME, (seed.name,)).fetchone()
                if found:
                    conn.execute(
                        sql.UPDATE_SEEDED_KEY,
                        (seed.tenant, seed.role, digest, seed.rpm, found[0]),
                    )
                else:
                    conn.execute(
                        sql.INSERT_SEEDED_KEY,
                        (new_key_id(), seed.name, seed.tenant, seed.role, seed.rpm, now, digest),
                    )

        await self._ledger._write(work)

    async def by_secret_hashes(self) -> dict[str, ApiKey]:
        """Every key, by the hash of its secret: the gateway's lookup table."""

        def work(conn: sqlite3.Connection) -> dict[str, ApiKey]:
            return {str(row[-1]): key_of(row[:-1]) for row in conn.execute(sql.KEYS_BY_SECRET)}

        return await self._ledger._read(work)

    async def find(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, if any."""
        digest = hash_secret(secret)

        def work(conn: sqlite3.Connection) -> ApiKey | None:
            row = conn.execute(sql.KEY_BY_SECRET, (digest,)).fetchone()
            return key_of(row) if row else None

        return await self._ledger._read(work)

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Keys ordered by name; all of them, or one tenant's."""

        def work(conn: sqlite3.Connection) -> list[ApiKey]:
            if tenant is None:
                cursor = conn.execute(sql.ALL_KEYS)
            else:
                cursor = conn.execute(sql.TENANT_KEYS, (tenant,))
            return [key_of(row) for row in cursor]

        return await self._ledger._read(work)

    # -- usage -------------------------------------------------------------------------------

    async def add_requests(self, counts: Mapping[str, int]) -> None:
        """Add request counts (key id -> requests) to the stored counters, in one transaction.
        Counts for keys deleted meanwhile are dropped."""
        items = [(key_id, n) for key_id, n in counts.items() if n > 0]
        if not items:
            return

        def work(conn: sqlite3.Connection) -> None:
            for key_id, n in items:
                if conn.execute(sql.KEY_EXISTS, (key_id,)).fetchone():
                    conn.execute(sql.ADD_REQUESTS, (key_id, n))

        await self._ledger._write(work)

    async def requests(self) -> dict[str, int]:
        """Stored request counts by key id."""

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            cursor = conn.execute(sql.REQUESTS)
            return {str(key_id): int(n) for key_id, n in cursor}

        return await self._ledger._read(work)

    async def run_totals(self) -> dict[str, RunTotals]:
        """Runs created and their usage, by creating key id (runs of the open server, which have
        no creator, are left out). Usage comes from each run's stored summary, which is written
        whenever the run's status changes; for active runs the caller adds what their live
        summaries hold beyond that (`Runtime.unpersisted_usage`)."""

        def work(conn: sqlite3.Connection) -> dict[str, RunTotals]:
            return {
                str(row[0]): RunTotals(*(int(v or 0) for v in row[1:]))
                for row in conn.execute(sql.SQLITE_RUN_TOTALS)
            }

        return await self._ledger._read(work)
