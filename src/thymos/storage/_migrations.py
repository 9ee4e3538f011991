"""Schema migrations: an ordered list per dialect, applied once each, never renumbered."""

from __future__ import annotations

SQLITE_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # Version 1: runs, their ledger entries, world checkpoints, idempotency keys.
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            spec BLOB NOT NULL,
            summary BLOB NOT NULL
        )""",
        "CREATE INDEX runs_by_tenant ON runs (tenant, run_id)",
        "CREATE INDEX runs_by_status ON runs (status)",
        # The envelope is the canonical bytes, stored verbatim; id, kind and created_at are
        # copies for indexing and are checked against the bytes by verification.
        """CREATE TABLE entries (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            seq INTEGER NOT NULL,
            id TEXT NOT NULL,
            kind TEXT NOT NULL,
            created_at TEXT NOT NULL,
            envelope BLOB NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE checkpoints (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            seq INTEGER NOT NULL,
            world BLOB NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE idempotency (
            tenant TEXT NOT NULL,
            key TEXT NOT NULL,
            body_hash TEXT NOT NULL,
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            PRIMARY KEY (tenant, key)
        )""",
    ),
    (
        # Version 2: authority. API keys (only a hash of each secret is stored), per-key request
        # counters, writ revocations, and the key that created each run.
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            role TEXT NOT NULL,
            secret_hash TEXT NOT NULL UNIQUE,
            rpm INTEGER,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE key_usage (
            key_id TEXT PRIMARY KEY REFERENCES api_keys (key_id),
            requests INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE revocations (
            writ_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            revoked_at TEXT NOT NULL,
            revoked_by TEXT NOT NULL,
            reason TEXT
        )""",
        "ALTER TABLE runs ADD COLUMN created_by TEXT",
        "ALTER TABLE runs ADD COLUMN writ_id TEXT",
        "CREATE INDEX runs_by_writ ON runs (writ_id)",
        "CREATE INDEX runs_by_creator ON runs (created_by)",
    ),
    (
        # Version 3: what proves a ledger. Documents a decision used that are not in the ledger
        # (policy sets, tool catalogs), kept by the hash the decision records; and the server's
        # signatures over run heads.
        """CREATE TABLE documents (
            hash TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            body BLOB NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE signed_heads (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            seq INTEGER NOT NULL,
            entry_id TEXT NOT NULL,
            signed_at TEXT NOT NULL,
            signature TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID""",
    ),
    (
        # Version 4: entries found by id (a branch names the commit it starts from). Not
        # unique: ids are unique by construction (the envelope names its run and seq), and
        # storage keeps whatever bytes it was given; verification judges them.
        "CREATE INDEX entries_by_id ON entries (id)",
    ),
    (
        # Version 5: delegation. The run whose `delegate` call started a run (NULL for every
        # run before, none of which was a child), and a run's children listed by it.
        "ALTER TABLE runs ADD COLUMN parent_run_id TEXT",
        "CREATE INDEX runs_by_parent ON runs (parent_run_id, run_id)",
    ),
    (
        # Version 6: `entries_by_id` dropped. Measured: it cost every append about 70 us (a
        # random 64-hex key inserted in a second B-tree), to speed up only branch creation,
        # which finds its commit among the source run's own rows instead.
        "DROP INDEX IF EXISTS entries_by_id",
    ),
    (
        # Version 7: several nodes on one store. A run's lease (the node that writes it, until
        # when), and control actions (votes, cancels) left for the node that owns a run, with
        # its reply.
        """CREATE TABLE leases (
            run_id TEXT PRIMARY KEY,
            node_id TEXT NOT NULL,
            expires_us INTEGER NOT NULL
        )""",
        "CREATE INDEX leases_by_node ON leases (node_id)",
        "CREATE INDEX leases_by_expiry ON leases (expires_us)",
        """CREATE TABLE messages (
            message_id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            body BLOB NOT NULL,
            created_us INTEGER NOT NULL,
            taken INTEGER NOT NULL DEFAULT 0,
            reply BLOB
        )""",
        "CREATE INDEX messages_by_node ON messages (node_id, taken)",
    ),
    (
        # Version 8: audit queries. Each entry carries its run's tenant (copied from the run row
        # as it is inserted), so a tenant's entries are listed and counted in time order from
        # an index, with or without kinds, never by scanning every tenant's ledger.
        "ALTER TABLE entries ADD COLUMN tenant TEXT",
        "UPDATE entries SET tenant = (SELECT tenant FROM runs WHERE runs.run_id = entries.run_id)",
        # One index, its key ending with the kind so a kind filter is read from the index too:
        # measured, a second index led by (tenant, kind) cost every append as much again
        # (about 12 us an entry here) for kind-only queries.
        "CREATE INDEX entries_audit ON entries (tenant, created_at, run_id, seq, kind)",
    ),
    (
        # Version 9: the package registry. Publishers an admin trusted (by name, and by key:
        # one key is one publisher), and published package versions, each written once: the
        # content as its RFC 8785 bytes, with its hash, the publisher's key and signature, and
        # the API key that published it. The version is the exact text published; which
        # versions are equal (build metadata aside) and newest is the marketplace's to say.
        """CREATE TABLE publishers (
            name TEXT PRIMARY KEY,
            public_key TEXT NOT NULL UNIQUE,
            trusted_by TEXT,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE packages (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            kind TEXT NOT NULL,
            description TEXT,
            content BLOB NOT NULL,
            content_hash TEXT NOT NULL,
            publisher_key TEXT NOT NULL,
            signature TEXT NOT NULL,
            published_by TEXT,
            published_at TEXT NOT NULL,
            PRIMARY KEY (name, version)
        )""",
    ),
)

# PostgreSQL's list, kept in step with SQLite's: the same version numbers, tables, columns and
# indexes. BYTEA for BLOB, BIGINT for INTEGER (seqs and microsecond times pass 2**31), no
# WITHOUT ROWID (a PostgreSQL table is a heap beside its primary key's index).
POSTGRES_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # Version 1: runs, their ledger entries, world checkpoints, idempotency keys.
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            spec BYTEA NOT NULL,
            summary BYTEA NOT NULL
        )""",
        "CREATE INDEX runs_by_tenant ON runs (tenant, run_id)",
        "CREATE INDEX runs_by_status ON runs (status)",
        """CREATE TABLE entries (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            seq BIGINT NOT NULL,
            id TEXT NOT NULL,
            kind TEXT NOT NULL,
            created_at TEXT NOT NULL,
            envelope BYTEA NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
        """CREATE TABLE checkpoints (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            seq BIGINT NOT NULL,
            world BYTEA NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
        """CREATE TABLE idempotency (
            tenant TEXT NOT NULL,
            key TEXT NOT NULL,
            body_hash TEXT NOT NULL,
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            PRIMARY KEY (tenant, key)
        )""",
    ),
    (
        # Version 2: API keys, per-key request counters, writ revocations, run creators.
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            role TEXT NOT NULL,
            secret_hash TEXT NOT NULL UNIQUE,
            rpm BIGINT,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE key_usage (
            key_id TEXT PRIMARY KEY REFERENCES api_keys (key_id),
            requests BIGINT NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE revocations (
            writ_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            revoked_at TEXT NOT NULL,
            revoked_by TEXT NOT NULL,
            reason TEXT
        )""",
        "ALTER TABLE runs ADD COLUMN created_by TEXT",
        "ALTER TABLE runs ADD COLUMN writ_id TEXT",
        "CREATE INDEX runs_by_writ ON runs (writ_id)",
        "CREATE INDEX runs_by_creator ON runs (created_by)",
    ),
    (
        # Version 3: documents kept by hash, and the server's signatures over run heads.
        """CREATE TABLE documents (
            hash TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            body BYTEA NOT NULL
        )""",
        """CREATE TABLE signed_heads (
            run_id TEXT NOT NULL REFERENCES runs (run_id),
            seq BIGINT NOT NULL,
            entry_id TEXT NOT NULL,
            signed_at TEXT NOT NULL,
            signature TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
    ),
    (
        # Version 4: entries found by id (dropped again by version 6; kept so the numbers match).
        "CREATE INDEX entries_by_id ON entries (id)",
    ),
    (
        # Version 5: delegation: a run's parent, and a run's children listed by it.
        "ALTER TABLE runs ADD COLUMN parent_run_id TEXT",
        "CREATE INDEX runs_by_parent ON runs (parent_run_id, run_id)",
    ),
    (
        # Version 6: `entries_by_id` dropped (it cost every append; see SQLite's version 6).
        "DROP INDEX IF EXISTS entries_by_id",
    ),
    (
        # Version 7: several nodes on one store: run leases, and control actions left for the
        # node that owns a run, with its reply. `taken` is 0 until a node takes the message
        # (PostgreSQL's backend writes a nonzero token there; see `_postgres.take_messages`).
        """CREATE TABLE leases (
            run_id TEXT PRIMARY KEY,
            node_id TEXT NOT NULL,
            expires_us BIGINT NOT NULL
        )""",
        "CREATE INDEX leases_by_node ON leases (node_id)",
        "CREATE INDEX leases_by_expiry ON leases (expires_us)",
        """CREATE TABLE messages (
            message_id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            body BYTEA NOT NULL,
            created_us BIGINT NOT NULL,
            taken BIGINT NOT NULL DEFAULT 0,
            reply BYTEA
        )""",
        "CREATE INDEX messages_by_node ON messages (node_id, taken)",
    ),
    (
        # Version 8: audit queries (as SQLite's version 8). Each entry carries its run's tenant (copied from the run row
        # as it is inserted), so a tenant's entries are listed and counted in time order from
        # an index, with or without a kind, never by scanning every tenant's ledger.
        "ALTER TABLE entries ADD COLUMN tenant TEXT",
        "UPDATE entries SET tenant = (SELECT tenant FROM runs WHERE runs.run_id = entries.run_id)",
        # One index, its key ending with the kind so a kind filter is read from the index too:
        # measured, a second index led by (tenant, kind) cost every append as much again
        # (about 12 us an entry here) for kind-only queries.
        "CREATE INDEX entries_audit ON entries (tenant, created_at, run_id, seq, kind)",
    ),
    (
        # Version 9: the package registry (as SQLite's version 9): trusted publishers, and
        # published package versions with their content's RFC 8785 bytes.
        """CREATE TABLE publishers (
            name TEXT PRIMARY KEY,
            public_key TEXT NOT NULL UNIQUE,
            trusted_by TEXT,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE packages (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            kind TEXT NOT NULL,
            description TEXT,
            content BYTEA NOT NULL,
            content_hash TEXT NOT NULL,
            publisher_key TEXT NOT NULL,
            signature TEXT NOT NULL,
            published_by TEXT,
            published_at TEXT NOT NULL,
            PRIMARY KEY (name, version)
        )""",
    ),
)
