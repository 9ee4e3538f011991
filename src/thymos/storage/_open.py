"""Which backend a server stores in: PostgreSQL when a URL is given, SQLite otherwise."""

from __future__ import annotations

from pathlib import Path

from ._contract import Storage, StorageError
from ._keys import SqliteKeyStore
from ._sqlite import SqliteLedgerStore


class StorageUnusable(StorageError):
    """The configured storage cannot be used (the extra is missing, the database refuses); the
    message says which. Start-up stops on it: there is no silent fallback to another backend."""


def sqlite_storage(path: Path, *, synchronous: str = "NORMAL") -> Storage:
    ledger = SqliteLedgerStore(path, synchronous=synchronous)
    return Storage("sqlite", ledger, SqliteKeyStore(ledger), shared=False)


def storage_for(
    *, postgres_url: str | None, sqlite_path: Path, sqlite_synchronous: str = "NORMAL"
) -> Storage:
    """PostgreSQL when `postgres_url` is set (the `postgres` extra must be installed), else the
    SQLite file. Nothing is opened here."""
    if not postgres_url:
        return sqlite_storage(sqlite_path, synchronous=sqlite_synchronous)
    try:
        from ._postgres import postgres_storage
    except ImportError as exc:
        raise StorageUnusable(
            "THYMOS_POSTGRES_URL is set but the PostgreSQL driver is not installed "
            f"({exc.name or exc}): install the postgres extra (pip install 'thymos[postgres]') "
            "or unset THYMOS_POSTGRES_URL to use SQLite"
        ) from None
    return postgres_storage(postgres_url)
