"""The SQL every backend runs, in one place.

Statements use `?` placeholders (SQLite's); the PostgreSQL backend turns them into `%s` with
`postgres_placeholders`. Both dialects accept everything here as written (`ON CONFLICT` upserts,
`RETURNING`); what one dialect spells differently is a pair below (`SQLITE_*`, `POSTGRES_*`), and
each backend module holds only how it runs statements, never their text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from thymos.core import Entry

from ._contract import AuditQuery, PackageRow, Publisher, RunRecord

REGISTRY_STATUS = "registry"
"""The status of the row that holds a tenant's registry ledger (its marketplace actions): the
ledger is stored as a run's is, so it chains, verifies and is audited like one, but it is not a
run: it is never listed, resumed or shown as one."""

# -- runs -----------------------------------------------------------------------------------

RUN_COLUMNS = (
    "run_id, tenant, status, created_at, updated_at, spec, summary, created_by, writ_id, "
    "parent_run_id"
)

RUN_EXISTS = "SELECT 1 FROM runs WHERE run_id = ?"
INSERT_RUN = f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
UPDATE_RUN = "UPDATE runs SET status = ?, updated_at = ?, summary = ? WHERE run_id = ?"
GET_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?"
RUN_BY_WRIT = f"SELECT {RUN_COLUMNS} FROM runs WHERE writ_id = ?"


def runs_with_status(count: int) -> str:
    marks = ", ".join("?" for _ in range(count))
    return f"SELECT {RUN_COLUMNS} FROM runs WHERE status IN ({marks}) ORDER BY run_id"


def list_runs(
    *, tenant: str | None, status: str | None, before: str | None, parent_run_id: str | None
) -> tuple[str, list[Any]]:
    """The listing query (newest first) and its parameters, without the trailing LIMIT's. A
    tenant's registry ledger (`REGISTRY_STATUS`) is not a run and is never listed."""
    clauses: list[str] = [f"status <> '{REGISTRY_STATUS}'"]
    params: list[Any] = []
    for column, value, operator in (
        ("tenant", tenant, "="),
        ("parent_run_id", parent_run_id, "="),
        ("status", status, "="),
        ("run_id", before, "<"),
    ):
        if value is not None:
            clauses.append(f"{column} {operator} ?")
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY run_id DESC LIMIT ?", params


def run_params(record: RunRecord) -> tuple[Any, ...]:
    """`INSERT_RUN`'s parameters: spec and summary as orjson bytes."""
    return (
        record.run_id,
        record.tenant,
        record.status,
        record.created_at,
        record.updated_at,
        orjson.dumps(record.spec),
        orjson.dumps(record.summary),
        record.created_by,
        record.writ_id,
        record.parent_run_id,
    )


def record_of(row: Sequence[Any]) -> RunRecord:
    """A `RUN_COLUMNS` row as a record."""
    run_id, tenant, status, created_at, updated_at, spec, summary, created_by, writ_id = row[:9]
    return RunRecord(
        run_id,
        tenant,
        status,
        created_at,
        updated_at,
        orjson.loads(spec),
        orjson.loads(summary),
        created_by,
        writ_id,
        parent_run_id=row[9],
    )


# The latest end of a run is `interrupted`: the summary's `terminated_by`. JSON is read
# differently by each dialect (the column holds orjson bytes).
SQLITE_RUNS_INTERRUPTED = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE status = 'failed' "
    "AND json_extract(CAST(summary AS TEXT), '$.terminated_by') = 'interrupted' "
    "ORDER BY run_id"
)
POSTGRES_RUNS_INTERRUPTED = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE status = 'failed' "
    "AND convert_from(summary, 'UTF8')::jsonb ->> 'terminated_by' = 'interrupted' "
    "ORDER BY run_id"
)

# -- entries, checkpoints, signed heads -----------------------------------------------------

HEAD_SEQ = "SELECT MAX(seq) FROM entries WHERE run_id = ?"
# The entry carries its run's tenant, read from the run row in the same statement (the audit
# index is by tenant); parameters: the six columns, then the run id again.
INSERT_ENTRY = (
    "INSERT INTO entries (run_id, seq, id, kind, created_at, envelope, tenant) "
    "VALUES (?, ?, ?, ?, ?, ?, (SELECT tenant FROM runs WHERE run_id = ?))"
)


def entry_params(run_id: str, entries: Sequence[Entry]) -> list[tuple[Any, ...]]:
    """`INSERT_ENTRY`'s parameters, one tuple per entry."""
    return [(run_id, e.seq, e.id, e.kind, e.time, e.raw, run_id) for e in entries]


ENTRY_AT = "SELECT id FROM entries WHERE run_id = ? AND seq = ?"
READ_ROWS = (
    "SELECT seq, id, envelope FROM entries WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
READ_ROWS_RANGE = (
    "SELECT seq, id, envelope FROM entries WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq"
)
# Among the run's own rows (its primary key's range): no index on ids, which would cost every
# append; only branch creation looks an entry up by id.
FIND_ENTRY = "SELECT seq, id, envelope FROM entries WHERE run_id = ? AND id = ?"

INSERT_CHECKPOINT = "INSERT INTO checkpoints (run_id, seq, world) VALUES (?, ?, ?)"
UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (run_id, seq, world) VALUES (?, ?, ?) "
    "ON CONFLICT (run_id, seq) DO UPDATE SET world = excluded.world"
)
LATEST_CHECKPOINT = (
    "SELECT seq, world FROM checkpoints WHERE run_id = ? AND seq <= ? ORDER BY seq DESC LIMIT 1"
)

INSERT_SIGNED_HEAD = (
    "INSERT INTO signed_heads (run_id, seq, entry_id, signed_at, signature) VALUES (?, ?, ?, ?, ?)"
)
SIGNED_HEADS = (
    "SELECT seq, entry_id, signed_at, signature FROM signed_heads "
    "WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq"
)

# -- audit: entries across runs, in time order ------------------------------------------------

AUDIT_COLUMNS = "run_id, seq, id, kind, created_at, envelope"


def audit(query: AuditQuery, *, count: bool) -> tuple[str, list[Any]]:
    """The listing (in `(created_at, run_id, seq)` order, after the query's cursor, without
    the trailing LIMIT's parameter) or the count of the same entries, and their parameters.
    A tenant's entries are read from the `entries_audit` index."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.tenant is not None:
        clauses.append("tenant = ?")
        params.append(query.tenant)
    if query.run_id is not None:
        clauses.append("run_id = ?")
        params.append(query.run_id)
    if query.kinds:
        clauses.append(f"kind IN ({', '.join('?' for _ in query.kinds)})")
        params.extend(query.kinds)
    if query.since is not None:
        clauses.append("created_at >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append("created_at < ?")
        params.append(query.until)
    if query.after is not None and not count:
        clauses.append("(created_at, run_id, seq) > (?, ?, ?)")
        params.extend(query.after)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    if count:
        return f"SELECT COUNT(*) FROM entries{where}", params
    order = " ORDER BY created_at, run_id, seq LIMIT ?"
    return f"SELECT {AUDIT_COLUMNS} FROM entries{where}{order}", params


# -- idempotency, revocations, documents ----------------------------------------------------

INSERT_IDEMPOTENCY = "INSERT INTO idempotency (tenant, key, body_hash, run_id) VALUES (?, ?, ?, ?)"
FIND_IDEMPOTENCY = "SELECT body_hash, run_id FROM idempotency WHERE tenant = ? AND key = ?"

INSERT_REVOCATION = (
    "INSERT INTO revocations (writ_id, tenant, revoked_at, revoked_by, reason) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (writ_id) DO NOTHING"
)
REVOCATIONS = "SELECT writ_id FROM revocations"

INSERT_DOCUMENT = (
    "INSERT INTO documents (hash, kind, body) VALUES (?, ?, ?) ON CONFLICT (hash) DO NOTHING"
)


def documents_in(count: int) -> str:
    marks = ", ".join("?" for _ in range(count))
    return f"SELECT hash, kind, body FROM documents WHERE hash IN ({marks})"


DOCUMENTS_CHUNK = 500

# -- API keys and their usage ---------------------------------------------------------------

KEY_COLUMNS = "key_id, name, tenant, role, rpm, source, created_at"
KEY_NAME_TAKEN = "SELECT 1 FROM api_keys WHERE name = ?"
KEY_SECRET_TAKEN = "SELECT 1 FROM api_keys WHERE secret_hash = ?"
INSERT_KEY = f"INSERT INTO api_keys ({KEY_COLUMNS}, secret_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
ENV_KEYS = "SELECT key_id, name FROM api_keys WHERE source = 'env'"
DELETE_KEY_USAGE = "DELETE FROM key_usage WHERE key_id = ?"
DELETE_KEY = "DELETE FROM api_keys WHERE key_id = ?"
# Frees a secret hash about to be assigned to another key (the new value is unique per key).
FREE_SECRET = (
    "UPDATE api_keys SET secret_hash = 'replaced:' || key_id WHERE secret_hash = ? AND name != ?"
)
KEY_BY_NAME = "SELECT key_id FROM api_keys WHERE name = ?"
UPDATE_SEEDED_KEY = (
    "UPDATE api_keys SET tenant = ?, role = ?, secret_hash = ?, rpm = ?, source = 'env' "
    "WHERE key_id = ?"
)
INSERT_SEEDED_KEY = (
    f"INSERT INTO api_keys ({KEY_COLUMNS}, secret_hash) VALUES (?, ?, ?, ?, ?, 'env', ?, ?)"
)
KEYS_BY_SECRET = f"SELECT {KEY_COLUMNS}, secret_hash FROM api_keys"
KEY_BY_SECRET = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?"
ALL_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY name"
TENANT_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY name"
KEY_EXISTS = "SELECT 1 FROM api_keys WHERE key_id = ?"
ADD_REQUESTS = (
    "INSERT INTO key_usage (key_id, requests) VALUES (?, ?) "
    "ON CONFLICT (key_id) DO UPDATE SET requests = key_usage.requests + excluded.requests"
)
REQUESTS = "SELECT key_id, requests FROM key_usage"

_USAGE_FIELDS = ("input_tokens", "output_tokens", "tool_calls", "usd_millicents")
SQLITE_RUN_TOTALS = (
    "SELECT created_by, COUNT(*), "
    + ", ".join(
        f"TOTAL(COALESCE(json_extract(CAST(summary AS TEXT), '$.usage.{name}'), 0))"
        for name in _USAGE_FIELDS
    )
    + " FROM runs WHERE created_by IS NOT NULL GROUP BY created_by"
)
POSTGRES_RUN_TOTALS = (
    "SELECT created_by, COUNT(*), "
    + ", ".join(
        f"COALESCE(SUM((convert_from(summary, 'UTF8')::jsonb -> 'usage' ->> '{name}')::bigint), 0)"
        for name in _USAGE_FIELDS
    )
    + " FROM runs WHERE created_by IS NOT NULL GROUP BY created_by"
)

# -- leases: which node writes a run --------------------------------------------------------

# Taken when free, expired or already this node's: one statement, so two nodes racing for a run
# can never both get it (the row is the arbiter; an upsert's WHERE sees the committed row).
CLAIM_LEASE = (
    "INSERT INTO leases (run_id, node_id, expires_us) VALUES (?, ?, ?) "
    "ON CONFLICT (run_id) DO UPDATE SET node_id = excluded.node_id, "
    "expires_us = excluded.expires_us "
    "WHERE leases.node_id = excluded.node_id OR leases.expires_us <= ?"
)
# Every lease still naming the node, expired or not: one that expired while the node could not
# reach the database is still its own unless another node claimed it (a claim renames the row).
RENEW_LEASES = "UPDATE leases SET expires_us = ? WHERE node_id = ?"
HELD_LEASES = "SELECT run_id FROM leases WHERE node_id = ?"
RELEASE_LEASE = "DELETE FROM leases WHERE run_id = ? AND node_id = ?"
LEASE_OWNER = "SELECT node_id FROM leases WHERE run_id = ? AND expires_us > ?"
# Expired leases, claimed for this node in one statement. PostgreSQL locks the rows it picks
# and skips rows another node is claiming; SQLite has one writer, so its transaction is alone.
SQLITE_CLAIM_EXPIRED = (
    "UPDATE leases SET node_id = ?, expires_us = ? WHERE run_id IN ("
    "SELECT run_id FROM leases WHERE expires_us <= ? ORDER BY run_id LIMIT ?) RETURNING run_id"
)
POSTGRES_CLAIM_EXPIRED = (
    "UPDATE leases SET node_id = ?, expires_us = ? WHERE run_id IN ("
    "SELECT run_id FROM leases WHERE expires_us <= ? ORDER BY run_id LIMIT ? "
    "FOR UPDATE SKIP LOCKED) RETURNING run_id"
)

# -- messages: control actions carried to the node that owns a run --------------------------

INSERT_MESSAGE = (
    "INSERT INTO messages (message_id, run_id, node_id, body, created_us) VALUES (?, ?, ?, ?, ?)"
)
TAKE_MESSAGES = (
    "UPDATE messages SET taken = 1 WHERE node_id = ? AND taken = 0 "
    "RETURNING message_id, run_id, body"
)
REPLY_MESSAGE = "UPDATE messages SET reply = ? WHERE message_id = ?"
MESSAGE_REPLY = "SELECT reply FROM messages WHERE message_id = ?"
DELETE_MESSAGE = "DELETE FROM messages WHERE message_id = ?"

# -- the package registry: trusted publishers, published versions ----------------------------

PUBLISHER_COLUMNS = "name, public_key, trusted_by, created_at"
# A taken name or key inserts nothing (either unique constraint); the caller then asks which.
INSERT_PUBLISHER = (
    f"INSERT INTO publishers ({PUBLISHER_COLUMNS}) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
PUBLISHER_BY_NAME = f"SELECT {PUBLISHER_COLUMNS} FROM publishers WHERE name = ?"
PUBLISHER_BY_KEY = f"SELECT {PUBLISHER_COLUMNS} FROM publishers WHERE public_key = ?"
PUBLISHERS = f"SELECT {PUBLISHER_COLUMNS} FROM publishers ORDER BY name"

PACKAGE_COLUMNS = (
    "name, version, kind, description, content, content_hash, publisher_key, signature, "
    "published_by, published_at"
)
INSERT_PACKAGE = (
    f"INSERT INTO packages ({PACKAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (name, version) DO NOTHING"
)
PACKAGE_AT = f"SELECT {PACKAGE_COLUMNS} FROM packages WHERE name = ? AND version = ?"
PACKAGE_VERSIONS = f"SELECT {PACKAGE_COLUMNS} FROM packages WHERE name = ? ORDER BY version"
PACKAGES = f"SELECT {PACKAGE_COLUMNS} FROM packages ORDER BY name, version"


def publisher_params(publisher: Publisher) -> tuple[Any, ...]:
    return (publisher.name, publisher.public_key, publisher.trusted_by, publisher.created_at)


def publisher_of(row: Sequence[Any]) -> Publisher:
    return Publisher(str(row[0]), str(row[1]), row[2], str(row[3]))


def package_params(package: PackageRow) -> tuple[Any, ...]:
    return (
        package.name,
        package.version,
        package.kind,
        package.description,
        package.content,
        package.content_hash,
        package.publisher_key,
        package.signature,
        package.published_by,
        package.published_at,
    )


def package_of(row: Sequence[Any]) -> PackageRow:
    name, version, kind, description, content, digest, key, signature, by, at = row
    return PackageRow(
        str(name),
        str(version),
        str(kind),
        description,
        bytes(content),
        str(digest),
        str(key),
        str(signature),
        by,
        str(at),
    )


# -- what a write retried after a lost connection reads back --------------------------------
# A connection lost while its COMMIT was in flight leaves the outcome unknown; the PostgreSQL
# backend retries the write, and these let the retry find what the first attempt committed.

REVOCATION_OF = "SELECT tenant, revoked_at, revoked_by, reason FROM revocations WHERE writ_id = ?"
# The leases a node's claim set to exactly this expiry (what an earlier attempt claimed).
LEASES_EXPIRING_AT = "SELECT run_id FROM leases WHERE node_id = ? AND expires_us = ?"
# Messages taken under a token (nonzero, one per take), so a retried take returns what an
# earlier attempt of the same take marked taken.
TAKE_MESSAGES_AS = (
    "UPDATE messages SET taken = ? WHERE node_id = ? AND taken = 0 "
    "RETURNING message_id, run_id, body"
)
MESSAGES_TAKEN_AS = "SELECT message_id, run_id, body FROM messages WHERE node_id = ? AND taken = ?"


def postgres_placeholders(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (no statement here has a literal `?` or `%`)."""
    assert "%" not in sql, sql
    return sql.replace("?", "%s")
