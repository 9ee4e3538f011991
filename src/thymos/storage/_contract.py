"""The ledger storage contract: one async interface, one module per backend.

Every backend guarantees: appends are atomic (a batch of entries and the run's updated summary and
checkpoint land together or not at all); `(run_id, seq)` is unique, so a second writer can never
fork a chain (`SeqConflict`); stored envelope bytes come back verbatim; a read after an
acknowledged append sees it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from thymos.core import Entry, ErrorCode, SignedHead, StoredRow, ThymosError


class StorageError(ThymosError):
    """The backend failed (it is away, full, or refused); chained from the driver's error."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.NOT_READY, message)


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
class IdempotencyHit:
    body_hash: str
    run_id: str


class LedgerStore(Protocol):
    """The one async storage interface (SQLite today; PostgreSQL slots in with the same contract)."""

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
