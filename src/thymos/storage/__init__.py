"""Ledger storage: the async contract and its backends (SQLite today).

**Architecture Invariant:** nothing above this package writes SQL; nothing in it decides what an
entry means. Entries are stored as the canonical bytes they were sealed with.
"""

from ._contract import (
    Checkpoint,
    Document,
    IdempotencyHit,
    LedgerStore,
    RunRecord,
    RunUpdate,
    SeqConflict,
    StorageError,
)
from ._keys import ApiKey, KeyNameTaken, KeySeed, RunTotals, SqliteKeyStore, hash_secret
from ._sqlite import SqliteLedgerStore

__all__ = [
    "ApiKey",
    "Checkpoint",
    "Document",
    "IdempotencyHit",
    "KeyNameTaken",
    "KeySeed",
    "LedgerStore",
    "RunRecord",
    "RunTotals",
    "RunUpdate",
    "SeqConflict",
    "SqliteKeyStore",
    "SqliteLedgerStore",
    "StorageError",
    "hash_secret",
]
