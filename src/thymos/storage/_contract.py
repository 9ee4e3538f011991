"""The storage contract: one async interface per persistent concern, one module per backend.

`Storage` bundles what one server keeps: its ledger and runs (`LedgerStore`, with idempotency
keys, revocations, documents and signed heads), its API keys and their usage (`KeyStore`), run
ownership (`Leases`), control actions carried to a run's owner (`Mailbox`) and new-entry notices
(`Notices`). Every backend implements all of them; `tests/conformance` holds each to this
contract on every backend.

Every backend guarantees: appends are atomic (a batch of entries and the run's updated summary and
checkpoint land together or not at all); `(run_id, seq)` is unique, so a second writer can never
fork a chain (`SeqConflict`); stored envelope bytes come back verbatim; a read after an
acknowledged append sees it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from thymos.core import Entry, ErrorCode, SignedHead, StoredRow, ThymosError


class StorageError(ThymosError):
    """The backend failed (it is away, full, or refused); chained from the driver's error.
    Answered 503 `storage_unavailable`: the request may be retried."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.STORAGE_UNAVAILABLE, message, {"retry_after_s": 1})


class SeqConflict(ThymosError):
    """Another append already holds one of these `(run_id, seq)` slots."""

    def __init__(self, run_id: str, seq: int) -> None:
        super().__init__(
            ErrorCode.SEQ_CONFLICT, f"run {run_id} already has an entry at seq {seq}", {"seq": seq}
        )


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The stored row of a run: identity, status and the summary folded from its ledger."""

    run_id: str
    tenant: str
    status: str
    created_at: str
    updated_at: str
    spec: dict[str, Any]
    summary: dict[str, Any]
    created_by: str | None = None
    """The API key that created the run (None on an open server)."""
    writ_id: str | None = None
    """The id of the run's writ (what `POST /writs/:id/revoke` names)."""
    parent_run_id: str | None = None
    """The run whose `delegate` call started this one (None for a run started otherwise)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A snapshot of a run's world as of `seq` (every commit up to and including it)."""

    run_id: str
    seq: int
    world: bytes


@dataclass(frozen=True, slots=True)
class RunUpdate:
    """What changes on the run row with an append."""

    status: str
    updated_at: str
    summary: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Document:
    """A content-addressed document: `body` is canonical JSON whose BLAKE3 is `hash` (readers
    check it; storage only keeps the bytes)."""

    hash: str
    kind: str
    body: bytes


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which entries an audit listing or count covers: one tenant's (None: every tenant's),
    optionally one run's, of some kinds, created at or after `since` and before `until`
    (ledger times, RFC 3339 with microseconds, which sort as text), after the position
    `after` = (created_at, run_id, seq) of the previous page's last entry."""

    tenant: str | None
    run_id: str | None = None
    kinds: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    after: tuple[str, str, int] | None = None


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One entry as the audit listing reads it: its place, and its verbatim envelope."""

    run_id: str
    seq: int
    id: str
    kind: str
    created_at: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyHit:
    body_hash: str
    run_id: str


class LedgerStore(Protocol):
    """Runs and their ledgers, with what proves them (documents, signed heads), idempotency keys
    and revocations: the same contract on every backend."""

    backend: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def create_run(
        self,
        record: RunRecord,
        first: Entry,
        idempotency: tuple[str, str] | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        """Insert the run row and its seq-0 entry atomically. `idempotency` is (key, body_hash);
        `checkpoint` (at seq 0) is the world a branch starts from, stored in the same
        transaction."""
        ...

    def append(
        self,
        run_id: str,
        entries: Sequence[Entry],
        update: RunUpdate | None,
        checkpoint: Checkpoint | None = None,
        head: SignedHead | None = None,
    ) -> Awaitable[None]:
        """Submit an append now and return what to await for its durability. Appends submitted
        by one caller are applied in submission order, so a run's writer can pipeline several
        and wait once (and a failed one makes every later one of that run fail too, by the
        continuity rule below).

        Append entries (consecutive seqs, continuing the stored head) and, when given, update
        the run row, store a checkpoint and the signed head of the batch, atomically. A seq that is taken or leaves a gap is
        `SeqConflict`."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def list_runs(
        self,
        *,
        tenant: str | None,
        status: str | None,
        before: str | None,
        limit: int,
        parent_run_id: str | None = None,
    ) -> list[RunRecord]:
        """Runs newest first (by run id, which sorts by creation time), older than `before`;
        with `parent_run_id`, only that run's children."""
        ...

    async def runs_with_status(self, statuses: Sequence[str]) -> list[RunRecord]: ...

    async def runs_interrupted(self) -> list[RunRecord]:
        """Runs whose latest end is `interrupted` (the server stopped under them), oldest
        first."""
        ...

    async def read_rows(self, run_id: str, *, after_seq: int, limit: int) -> list[StoredRow]:
        """Stored rows with seq > after_seq, in seq order."""
        ...

    async def read_rows_range(
        self, run_id: str, *, after_seq: int, upto_seq: int
    ) -> list[StoredRow]:
        """Stored rows with after_seq < seq <= upto_seq, in seq order."""
        ...

    async def latest_checkpoint(self, run_id: str, *, at_or_before: int) -> Checkpoint | None: ...

    async def find_entry(self, run_id: str, entry_id: str) -> StoredRow | None:
        """The stored row of the run's entry with this id (None when the run has none: an id
        of another run's entry is not found here)."""
        ...

    async def find_idempotency(self, tenant: str, key: str) -> IdempotencyHit | None: ...

    async def find_run_by_writ(self, writ_id: str) -> RunRecord | None: ...

    async def revoke(
        self, writ_id: str, *, tenant: str, revoked_at: str, revoked_by: str, reason: str | None
    ) -> bool:
        """Persist a revocation; False if that writ was already revoked."""
        ...

    async def revocations(self) -> list[str]: ...

    async def put_documents(self, documents: Sequence[Document]) -> None:
        """Keep documents by hash (one already kept is left as it is)."""
        ...

    async def documents(self, hashes: Sequence[str]) -> dict[str, Document]:
        """The kept documents among `hashes` (absent ones are simply missing)."""
        ...

    async def signed_heads(
        self, run_id: str, *, after_seq: int = -1, upto_seq: int | None = None
    ) -> list[SignedHead]:
        """The run's signed heads with after_seq < seq <= upto_seq, in seq order."""
        ...

    async def audit_entries(self, query: AuditQuery, *, limit: int) -> list[AuditRow]:
        """Up to `limit` entries the query covers, in `(created_at, run_id, seq)` order."""
        ...

    async def audit_count(self, query: AuditQuery) -> int:
        """How many entries the query covers (its `after` is ignored): what paging through
        `audit_entries` from the start yields."""
        ...


# -- API keys ---------------------------------------------------------------------------------

KEY_SOURCES = ("cli", "env")


class KeyNameTaken(StorageError):
    """A key with this name already exists (names are unique across tenants)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an API key named {name!r} already exists")
        self.name = name


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


class KeyStore(Protocol):
    """API keys (only a hash of each secret) and per-key request counters."""

    async def create(
        self, *, name: str, tenant: str, role: str, secret: str, rpm: int | None, source: str
    ) -> ApiKey:
        """Store a new key. A taken name raises `KeyNameTaken`."""
        ...

    async def seed(self, seeds: Sequence[KeySeed]) -> None:
        """Make the env-seeded keys exactly `seeds`, in one transaction: upsert by name (a key
        keeps its id, and so its usage), delete env keys no longer listed, leave CLI keys alone
        unless a seed names them."""
        ...

    async def by_secret_hashes(self) -> dict[str, ApiKey]:
        """Every key, by the hash of its secret: the gateway's lookup table."""
        ...

    async def find(self, secret: str) -> ApiKey | None: ...

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Keys ordered by name; all of them, or one tenant's."""
        ...

    async def add_requests(self, counts: Mapping[str, int]) -> None:
        """Add request counts (key id -> requests); counts of deleted keys are dropped."""
        ...

    async def requests(self) -> dict[str, int]: ...

    async def run_totals(self) -> dict[str, RunTotals]:
        """Runs created and their stored usage, by creating key id."""
        ...


# -- run ownership, messages and notices --------------------------------------------------------


class Leases(Protocol):
    """Which node writes a run: a lease row per run, held by one node until it expires.

    Times are the caller's clock in microseconds (nodes' clocks must agree to well within the
    lease's time to live). A node renews its leases on a heartbeat; a node that stops renewing
    loses them when they expire, and another node may then claim its runs."""

    async def claim_lease(self, run_id: str, node_id: str, *, now_us: int, ttl_us: int) -> bool:
        """Take the run's lease for `node_id` if it is free, expired or already its own; True
        when `node_id` holds it now. Two nodes racing for one run never both win."""
        ...

    async def renew_leases(self, node_id: str, *, now_us: int, ttl_us: int) -> set[str]:
        """Extend every lease still naming `node_id` (one that expired but that no other node
        claimed is still its own); the run ids it holds afterwards."""
        ...

    async def release_lease(self, run_id: str, node_id: str) -> None:
        """Give the run's lease up (only if `node_id` holds it)."""
        ...

    async def claim_expired_leases(
        self, node_id: str, *, now_us: int, ttl_us: int, limit: int
    ) -> list[str]:
        """Claim for `node_id` up to `limit` runs whose lease expired (their node stopped
        renewing); a run another node is claiming at the same moment is skipped, never shared."""
        ...

    async def lease_owner(self, run_id: str, *, now_us: int) -> str | None:
        """The node holding the run's unexpired lease, if any."""
        ...


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    run_id: str
    body: bytes


class Mailbox(Protocol):
    """Control actions (a vote, a cancel) carried to the node that owns a run, and its reply."""

    async def send_message(
        self, message_id: str, run_id: str, node_id: str, body: bytes, *, now_us: int
    ) -> None:
        """Leave a message for `node_id` and notify it (`Notice("messages", node_id)`)."""
        ...

    async def take_messages(self, node_id: str) -> list[Message]:
        """The messages for `node_id` not taken yet, each taken once."""
        ...

    async def reply_message(self, message_id: str, body: bytes) -> None:
        """Record the reply and notify the sender (`Notice("replies", message_id)`)."""
        ...

    async def message_reply(self, message_id: str) -> bytes | None:
        """The reply, once there is one."""
        ...

    async def delete_message(self, message_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Notice:
    """Something another node may be waiting for: `entries` (run id, head seq after an
    append), `messages` (node id) or `replies` (message id)."""

    topic: str
    key: str
    seq: int = -1


class Notices(Protocol):
    """Notices of appends, messages and replies, from every node on the same storage (and
    this one). Delivery is prompt but not guaranteed: a listener re-reads storage on each
    notice and also on its own keep-alive, so a lost notice only delays it."""

    def add_listener(self, listener: Callable[[Notice], None]) -> None:
        """Call `listener` on the event loop for every notice from now on."""
        ...

    def remove_listener(self, listener: Callable[[Notice], None]) -> None: ...


# -- the package registry -----------------------------------------------------------------------


class PublisherExists(ThymosError):
    """A publisher with this name, or with this public key, is already trusted."""

    def __init__(self, field: str, value: str) -> None:
        super().__init__(
            ErrorCode.PUBLISHER_EXISTS,
            f"a publisher with this {field.replace('_', ' ')} is already trusted",
            {"field": field},
        )
        self.field, self.value = field, value


class PackageExists(ThymosError):
    """This version of this package is already published (published versions never change)."""

    def __init__(self, name: str, version: str) -> None:
        super().__init__(
            ErrorCode.PACKAGE_VERSION_EXISTS,
            f"{name}@{version} is already published; publish a new version",
            {"name": name, "version": version},
        )
        self.name, self.version = name, version


@dataclass(frozen=True, slots=True)
class Publisher:
    """A publisher an admin trusted: its name and hex Ed25519 public key."""

    name: str
    public_key: str
    trusted_by: str | None
    """The API key id of the admin who trusted it (None on an open server)."""
    created_at: str


@dataclass(frozen=True, slots=True)
class PackageRow:
    """One published version as stored. Storage keeps plain data: what a version means and how
    versions order is the marketplace's (`thymos.marketplace`), never storage's."""

    name: str
    version: str
    """The version exactly as published (build metadata included)."""
    kind: str
    description: str | None
    content: bytes
    """The RFC 8785 bytes of the content (their BLAKE3 is `content_hash`)."""
    content_hash: str
    publisher_key: str
    signature: str
    published_by: str | None
    """The API key id that published it (None on an open server)."""
    published_at: str


class MarketplaceStore(Protocol):
    """Trusted publishers and published package versions: written once, never changed."""

    async def add_publisher(self, publisher: Publisher) -> None:
        """Trust a publisher; a taken name or key raises `PublisherExists` (naming which)."""
        ...

    async def publishers(self) -> list[Publisher]:
        """Every trusted publisher, by name."""
        ...

    async def publisher_by_key(self, public_key: str) -> Publisher | None: ...

    async def put_package(self, package: PackageRow) -> None:
        """Store a version; a `(name, version)` already stored raises `PackageExists`."""
        ...

    async def package_versions(self, name: str) -> list[PackageRow]:
        """Every stored version of the package (in no particular order; none when unknown)."""
        ...

    async def packages(self) -> list[PackageRow]:
        """Every stored version of every package, by name."""
        ...


class ClusterStore(LedgerStore, Leases, Mailbox, Notices, MarketplaceStore, Protocol):
    """A ledger store that also holds leases, messages, notices and the package registry (every
    backend's is)."""


@dataclass(frozen=True, slots=True)
class Storage:
    """Every persistent concern of one server, on one backend. `ledger` owns the connections:
    open and close go through it."""

    backend: str
    ledger: ClusterStore
    keys: KeyStore
    shared: bool
    """True when several server processes may use this storage at once (PostgreSQL)."""

    async def open(self) -> None:
        await self.ledger.open()

    async def close(self) -> None:
        await self.ledger.close()
