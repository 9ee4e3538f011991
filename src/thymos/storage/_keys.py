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
from dataclasses import dataclass, field

from thymos.core import blake3_hex, rfc3339_from_us, uuid7

from ._contract import StorageError
from ._sqlite import SqliteLedgerStore

KEY_SOURCES = ("cli", "env")


class KeyNameTaken(StorageError):
    """A key with this name already exists (names are unique across tenants)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an API key named {name!r} already exists")
        self.name = name


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret: 64 hex characters of BLAKE3 of its UTF-8 bytes."""
    return blake3_hex(secret.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored, without its secret (the hash stays in the database)."""

    key_id: str
    name: str
    tenant: str
    role: str
    rpm: int | None
    source: str
    created_at: str


@dataclass(frozen=True, slots=True)
class KeySeed:
    """A key to create or update by name (from `THYMOS_API_KEYS`)."""

    name: str
    tenant: str
    role: str
    secret: str = field(repr=False)
    rpm: int | None = None


@dataclass(frozen=True, slots=True)
class RunTotals:
    """What the runs one key created have done, summed from their stored summaries."""

    runs: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    usd_millicents: int = 0


_KEY_COLUMNS = "key_id, name, tenant, role, rpm, source, created_at"


def _key(row: tuple[object, ...]) -> ApiKey:
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


def _new_key_id() -> str:
    return uuid7(time.time_ns() // 1_000_000, os.urandom(10))


def _now() -> str:
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
        key = ApiKey(_new_key_id(), name, tenant, role, rpm, source, _now())
        digest = hash_secret(secret)

        def work(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
                raise KeyNameTaken(name)
            if conn.execute("SELECT 1 FROM api_keys WHERE secret_hash = ?", (digest,)).fetchone():
                # Only possible if a caller reuses a secret; never say which key holds it.
                raise StorageError("that secret is already used by another key")
            conn.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}, secret_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        now = _now()

        def work(conn: sqlite3.Connection) -> None:
            names = {s.name for s, _ in rows}
            stale = [
                str(key_id)
                for key_id, name in conn.execute(
                    "SELECT key_id, name FROM api_keys WHERE source = 'env'"
                )
                if name not in names
            ]
            for key_id in stale:
                conn.execute("DELETE FROM key_usage WHERE key_id = ?", (key_id,))
                conn.execute("DELETE FROM api_keys WHERE key_id = ?", (key_id,))
            # Free every secret hash about to be assigned first, so two keys swapping secrets
            # (or a seed taking over a CLI key's secret) never trips the UNIQUE constraint midway.
            for seed, digest in rows:
                conn.execute(
                    "UPDATE api_keys SET secret_hash = 'replaced:' || key_id "
                    "WHERE secret_hash = ? AND name != ?",
                    (digest, seed.name),
                )
            for seed, digest in rows:
                found = conn.execute(
                    "SELECT key_id FROM api_keys WHERE name = ?", (seed.name,)
                ).fetchone()
                if found:
                    conn.execute(
                        "UPDATE api_keys SET tenant = ?, role = ?, secret_hash = ?, rpm = ?, "
                        "source = 'env' WHERE key_id = ?",
                        (seed.tenant, seed.role, digest, seed.rpm, found[0]),
                    )
                else:
                    conn.execute(
                        f"INSERT INTO api_keys ({_KEY_COLUMNS}, secret_hash) "
                        "VALUES (?, ?, ?, ?, ?, 'env', ?, ?)",
                        (_new_key_id(), seed.name, seed.tenant, seed.role, seed.rpm, now, digest),
                    )

        await self._ledger._write(work)

    async def by_secret_hashes(self) -> dict[str, ApiKey]:
        """Every key, by the hash of its secret: the gateway's lookup table."""

        def work(conn: sqlite3.Connection) -> dict[str, ApiKey]:
            cursor = conn.execute(f"SELECT {_KEY_COLUMNS}, secret_hash FROM api_keys")
            return {str(row[-1]): _key(row[:-1]) for row in cursor}

        return await self._ledger._read(work)

    async def find(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, if any."""
        digest = hash_secret(secret)

        def work(conn: sqlite3.Connection) -> ApiKey | None:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?", (digest,)
            ).fetchone()
            return _key(row) if row else None

        return await self._ledger._read(work)

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Keys ordered by name; all of them, or one tenant's."""

        def work(conn: sqlite3.Connection) -> list[ApiKey]:
            if tenant is None:
                cursor = conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY name")
            else:
                cursor = conn.execute(
                    f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY name",
                    (tenant,),
                )
            return [_key(row) for row in cursor]

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
                if conn.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)).fetchone():
                    conn.execute(
                        "INSERT INTO key_usage (key_id, requests) VALUES (?, ?) "
                        "ON CONFLICT (key_id) DO UPDATE SET requests = requests + excluded.requests",
                        (key_id, n),
                    )

        await self._ledger._write(work)

    async def requests(self) -> dict[str, int]:
        """Stored request counts by key id."""

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            cursor = conn.execute("SELECT key_id, requests FROM key_usage")
            return {str(key_id): int(n) for key_id, n in cursor}

        return await self._ledger._read(work)

    async def run_totals(self) -> dict[str, RunTotals]:
        """Runs created and their usage, by creating key id (runs of the open server, which have
        no creator, are left out). Usage comes from each run's stored summary, which is written
        whenever the run's status changes; for active runs the caller adds what their live
        summaries hold beyond that (`Runtime.unpersisted_usage`)."""
        # The summary column holds orjson bytes (a BLOB); CAST makes it JSON text for SQLite.
        sql = """
            SELECT created_by, COUNT(*),
                TOTAL(COALESCE(json_extract(CAST(summary AS TEXT), '$.usage.input_tokens'), 0)),
                TOTAL(COALESCE(json_extract(CAST(summary AS TEXT), '$.usage.output_tokens'), 0)),
                TOTAL(COALESCE(json_extract(CAST(summary AS TEXT), '$.usage.tool_calls'), 0)),
                TOTAL(COALESCE(json_extract(CAST(summary AS TEXT), '$.usage.usd_millicents'), 0))
            FROM runs WHERE created_by IS NOT NULL GROUP BY created_by
        """

        def work(conn: sqlite3.Connection) -> dict[str, RunTotals]:
            return {
                str(row[0]): RunTotals(*(int(v or 0) for v in row[1:])) for row in conn.execute(sql)
            }

        return await self._ledger._read(work)
