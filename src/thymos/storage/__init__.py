"""Storage: the async contracts (`_contract.py`) and their backends, SQLite (`_sqlite.py`,
`_keys.py`) and PostgreSQL (`_postgres.py`, with the `postgres` extra), over one set of SQL
statements (`_sql.py`) and migrations kept in step (`_migrations.py`).

**Architecture Invariant:** nothing above this package writes SQL; nothing in it decides what an
entry means. Entries are stored as the canonical bytes they were sealed with.
"""

from ._contract import (
    KEY_SOURCES,
    ApiKey,
    AuditQuery,
    AuditRow,
    Checkpoint,
    ClusterStore,
    Document,
    IdempotencyHit,
    KeyNameTaken,
    KeySeed,
    KeyStore,
    Leases,
    LedgerStore,
    Mailbox,
    MarketplaceStore,
    Message,
    Notice,
    Notices,
    PackageExists,
    PackageRow,
    Publisher,
    PublisherExists,
    RunRecord,
    RunTotals,
    RunUpdate,
    SeqConflict,
    Storage,
    StorageError,
)
from ._keys import SqliteKeyStore, hash_secret
from ._open import StorageUnusable, sqlite_storage, storage_for
from ._sql import REGISTRY_STATUS
from ._sqlite import SqliteLedgerStore

__all__ = [
    "KEY_SOURCES",
    "REGISTRY_STATUS",
    "ApiKey",
    "AuditQuery",
    "AuditRow",
    "Checkpoint",
    "ClusterStore",
    "Document",
    "IdempotencyHit",
    "KeyNameTaken",
    "KeySeed",
    "KeyStore",
    "Leases",
    "LedgerStore",
    "Mailbox",
    "MarketplaceStore",
    "Message",
    "Notice",
    "Notices",
    "PackageExists",
    "PackageRow",
    "Publisher",
    "PublisherExists",
    "RunRecord",
    "RunTotals",
    "RunUpdate",
    "SeqConflict",
    "SqliteKeyStore",
    "SqliteLedgerStore",
    "Storage",
    "StorageError",
    "StorageUnusable",
    "hash_secret",
    "sqlite_storage",
    "storage_for",
]
