"""The embedded SQLite backend: one writer thread grouping appends, a few reader threads.

Concurrent runs submit appends to a queue; the writer thread takes everything waiting, runs it in
one transaction (each submission inside its own savepoint, so one conflict fails only its own
caller) and resolves each caller's future. Readers use their own connections on a small pool;
WAL lets them read while the writer writes.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from thymos.core import Entry, ErrorCode, SignedHead, StoredRow, ThymosError

from ._contract import (
    Checkpoint,
    Document,
    IdempotencyHit,
    RunRecord,
    RunUpdate,
    SeqConflict,
    StorageError,
)
from ._migrations import SQLITE_MIGRATIONS

T = TypeVar("T")

WRITE_GROUP_MAX = 256
"""Submissions grouped into one transaction; bounds how long one transaction holds the lock."""

READER_THREADS = 4
_SEQ_MAX = 2**63 - 1

_PRAGMAS = (
    # WAL lets readers proceed while the single writer commits.
    "PRAGMA journal_mode=WAL",
    # NORMAL: a commit survives a crash of the process (the WAL is in the OS); only a power loss
    # can lose the last transactions, never corrupt the file. THYMOS_SQLITE_SYNCHRONOUS=full
    # trades a disk flush per transaction for power-loss durability.
    "PRAGMA synchronous={synchronous}",
    # Readers and a second process wait for the lock instead of failing at once.
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
)


@dataclass(slots=True)
class _Job:
    work: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves so the writer controls transactions.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in _PRAGMAS:
        conn.execute(pragma.format(synchronous=synchronous))
    return conn


def _record(row: sqlite3.Row | tuple[Any, ...]) -> RunRecord:
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


_RUN_COLUMNS = (
    "run_id, tenant, status, created_at, updated_at, spec, summary, created_by, writ_id, "
    "parent_run_id"
)


class SqliteLedgerStore:
    backend = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self._path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = _connect(self._path, self._synchronous)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the SQLite ledger at {self._path}: {exc}") from exc
        self._migrate(conn)
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="thymos-sqlite-writer", daemon=True
        )
        self._writer.start()
        self._readers = ThreadPoolExecutor(
            READER_THREADS, thread_name_prefix="thymos-sqlite-reader"
        )

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        with self._conns_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] if row and row[0] is not None else 0
        for version, statements in enumerate(SQLITE_MIGRATIONS, start=1):
            if version <= current:
                continue
            conn.execute("BEGIN IMMEDIATE")
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")

    # -- the writer --------------------------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                group = [job]
                stop = False
                while len(group) < WRITE_GROUP_MAX:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    group.append(more)
                self._run_group(conn, group)
                if stop:
                    return
        finally:
            conn.close()

    def _run_group(self, conn: sqlite3.Connection, group: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in group:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.work(conn)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, None, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, value, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StorageError(f"the SQLite transaction failed: {exc}")
            failure.__cause__ = exc
            results = [(job, None, failure) for job in group]
        for job, value, error in results:
            job.loop.call_soon_threadsafe(_settle, job.future, value, error)

    def _submit(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue `work` for the writer now; the future settles when its transaction commits.
        Work is applied in submission order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._writer is None:
            future.set_exception(StorageError("the ledger is closed"))
            return future
        self._queue.put(_Job(work, loop, future))
        return future

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(work)

    # -- readers -----------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self._path, self._synchronous)
            self._local.conn = conn
            with self._conns_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._readers is None:
            raise StorageError("the ledger is closed")
        loop = asyncio.get_running_loop()

        def run() -> T:
            try:
                return work(self._reader())
            except sqlite3.Error as exc:
                raise StorageError(f"a SQLite read failed: {exc}") from exc

        return await loop.run_in_executor(self._readers, run)

    async def ping(self) -> bool:
        try:
            return bool(await self._read(lambda c: c.execute("SELECT 1").fetchone()[0] == 1))
        except StorageError:
            return False

    # -- writes ------------------------------------------------------------------------------

    async def create_run(
        self,
        record: RunRecord,
        first: Entry,
        idempotency: tuple[str, str] | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        assert first.seq == 0
        assert first.run_id == record.run_id
        assert checkpoint is None or (checkpoint.run_id, checkpoint.seq) == (record.run_id, 0)

        def work(conn: sqlite3.Connection) -> None:
            exists = conn.execute(
                "SELECT 1 FROM runs WHERE run_id = ?", (record.run_id,)
            ).fetchone()
            if exists:
                raise SeqConflict(record.run_id, 0)
            conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
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
                ),
            )
            _insert_entries(conn, record.run_id, [first])
            if checkpoint is not None:
                conn.execute(
                    "INSERT INTO checkpoints (run_id, seq, world) VALUES (?, ?, ?)",
                    (record.run_id, 0, checkpoint.world),
                )
            if idempotency is not None:
                try:
                    conn.execute(
                        "INSERT INTO idempotency (tenant, key, body_hash, run_id) VALUES (?, ?, ?, ?)",
                        (record.tenant, idempotency[0], idempotency[1], record.run_id),
                    )
                except sqlite3.IntegrityError as exc:
                    raise ThymosError(
                        ErrorCode.IDEMPOTENCY_CONFLICT, "this Idempotency-Key is already in use"
                    ) from exc

        await self._write(work)

    def append(
        self,
        run_id: str,
        entries: Sequence[Entry],
        update: RunUpdate | None,
        checkpoint: Checkpoint | None = None,
        head: SignedHead | None = None,
    ) -> asyncio.Future[None]:
        def work(conn: sqlite3.Connection) -> None:
            # Continuity: the batch must start right after the stored head, so a writer that
            # lost an earlier append can never leave a gap.
            row = conn.execute(
                "SELECT MAX(seq) FROM entries WHERE run_id = ?", (run_id,)
            ).fetchone()
            stored = -1 if row is None or row[0] is None else int(row[0])
            if entries[0].seq != stored + 1:
                raise SeqConflict(run_id, entries[0].seq)
            # Consecutive within the batch too: a gap inside it would pass the head check.
            for offset, entry in enumerate(entries):
                if entry.seq != stored + 1 + offset:
                    raise SeqConflict(run_id, entry.seq)
            _insert_entries(conn, run_id, entries)
            if update is not None:
                conn.execute(
                    "UPDATE runs SET status = ?, updated_at = ?, summary = ? WHERE run_id = ?",
                    (update.status, update.updated_at, orjson.dumps(update.summary), run_id),
                )
            if checkpoint is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO checkpoints (run_id, seq, world) VALUES (?, ?, ?)",
                    (run_id, checkpoint.seq, checkpoint.world),
                )
            if head is not None:
                conn.execute(
                    "INSERT INTO signed_heads (run_id, seq, entry_id, signed_at, signature) VALUES (?, ?, ?, ?, ?)",
                    (run_id, head.seq, head.entry_id, head.signed_at, head.signature),
                )

        return self._submit(work)

    # -- reads -------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord | None:
        def work(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            return _record(row) if row else None

        return await self._read(work)

    async def list_runs(
        self,
        *,
        tenant: str | None,
        status: str | None,
        before: str | None,
        limit: int,
        parent_run_id: str | None = None,
    ) -> list[RunRecord]:
        clauses, params = [], []
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        if parent_run_id is not None:
            clauses.append("parent_run_id = ?")
            params.append(parent_run_id)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if before is not None:
            clauses.append("run_id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY run_id DESC LIMIT ?"

        def work(conn: sqlite3.Connection) -> list[RunRecord]:
            return [_record(row) for row in conn.execute(sql, (*params, limit))]

        return await self._read(work)

    async def runs_with_status(self, statuses: Sequence[str]) -> list[RunRecord]:
        marks = ", ".join("?" for _ in statuses)

        def work(conn: sqlite3.Connection) -> list[RunRecord]:
            sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE status IN ({marks}) ORDER BY run_id"
            return [_record(row) for row in conn.execute(sql, tuple(statuses))]

        return await self._read(work)

    async def runs_interrupted(self) -> list[RunRecord]:
        def work(conn: sqlite3.Connection) -> list[RunRecord]:
            sql = (
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE status = 'failed' "
                "AND json_extract(CAST(summary AS TEXT), '$.terminated_by') = 'interrupted' "
                "ORDER BY run_id"
            )
            return [_record(row) for row in conn.execute(sql)]

        return await self._read(work)

    async def read_rows(self, run_id: str, *, after_seq: int, limit: int) -> list[StoredRow]:
        def work(conn: sqlite3.Connection) -> list[StoredRow]:
            cursor = conn.execute(
                "SELECT seq, id, envelope FROM entries WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (run_id, after_seq, limit),
            )
            return [StoredRow(seq, ident, bytes(raw)) for seq, ident, raw in cursor]

        return await self._read(work)

    async def read_rows_range(
        self, run_id: str, *, after_seq: int, upto_seq: int
    ) -> list[StoredRow]:
        def work(conn: sqlite3.Connection) -> list[StoredRow]:
            cursor = conn.execute(
                "SELECT seq, id, envelope FROM entries WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
                (run_id, after_seq, upto_seq),
            )
            return [StoredRow(seq, ident, bytes(raw)) for seq, ident, raw in cursor]

        return await self._read(work)

    async def latest_checkpoint(self, run_id: str, *, at_or_before: int) -> Checkpoint | None:
        def work(conn: sqlite3.Connection) -> Checkpoint | None:
            row = conn.execute(
                "SELECT seq, world FROM checkpoints WHERE run_id = ? AND seq <= ? ORDER BY seq DESC LIMIT 1",
                (run_id, at_or_before),
            ).fetchone()
            return Checkpoint(run_id, row[0], bytes(row[1])) if row else None

        return await self._read(work)

    async def find_entry(self, run_id: str, entry_id: str) -> StoredRow | None:
        def work(conn: sqlite3.Connection) -> StoredRow | None:
            # Among the run's own rows (its primary key's range): no index on ids, which would
            # cost every append; only branch creation looks an entry up by id.
            row = conn.execute(
                "SELECT seq, id, envelope FROM entries WHERE run_id = ? AND id = ?",
                (run_id, entry_id),
            ).fetchone()
            return StoredRow(row[0], row[1], bytes(row[2])) if row else None

        return await self._read(work)

    async def find_run_by_writ(self, writ_id: str) -> RunRecord | None:
        def work(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE writ_id = ?", (writ_id,)
            ).fetchone()
            return _record(row) if row else None

        return await self._read(work)

    async def revoke(
        self, writ_id: str, *, tenant: str, revoked_at: str, revoked_by: str, reason: str | None
    ) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO revocations (writ_id, tenant, revoked_at, revoked_by, reason) VALUES (?, ?, ?, ?, ?)",
                (writ_id, tenant, revoked_at, revoked_by, reason),
            )
            return cursor.rowcount == 1

        return await self._write(work)

    async def revocations(self) -> list[str]:
        def work(conn: sqlite3.Connection) -> list[str]:
            return [row[0] for row in conn.execute("SELECT writ_id FROM revocations")]

        return await self._read(work)

    async def put_documents(self, documents: Sequence[Document]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO documents (hash, kind, body) VALUES (?, ?, ?)",
                [(d.hash, d.kind, d.body) for d in documents],
            )

        await self._write(work)

    async def documents(self, hashes: Sequence[str]) -> dict[str, Document]:
        wanted = sorted(set(hashes))

        def work(conn: sqlite3.Connection) -> dict[str, Document]:
            found: dict[str, Document] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                for ident, kind, body in conn.execute(
                    f"SELECT hash, kind, body FROM documents WHERE hash IN ({marks})", chunk
                ):
                    found[ident] = Document(ident, kind, bytes(body))
            return found

        return await self._read(work) if wanted else {}

    async def signed_heads(
        self, run_id: str, *, after_seq: int = -1, upto_seq: int | None = None
    ) -> list[SignedHead]:
        upto = _SEQ_MAX if upto_seq is None else upto_seq

        def work(conn: sqlite3.Connection) -> list[SignedHead]:
            cursor = conn.execute(
                "SELECT seq, entry_id, signed_at, signature FROM signed_heads WHERE run_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
                (run_id, after_seq, upto),
            )
            return [SignedHead(run_id, seq, ident, at, sig) for seq, ident, at, sig in cursor]

        return await self._read(work)

    async def find_idempotency(self, tenant: str, key: str) -> IdempotencyHit | None:
        def work(conn: sqlite3.Connection) -> IdempotencyHit | None:
            row = conn.execute(
                "SELECT body_hash, run_id FROM idempotency WHERE tenant = ? AND key = ?",
                (tenant, key),
            ).fetchone()
            return IdempotencyHit(row[0], row[1]) if row else None

        return await self._read(work)


def _insert_entries(conn: sqlite3.Connection, run_id: str, entries: Sequence[Entry]) -> None:
    try:
        conn.executemany(
            "INSERT INTO entries (run_id, seq, id, kind, created_at, envelope) VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, e.seq, e.id, e.kind, e.time, e.raw) for e in entries],
        )
    except sqlite3.IntegrityError as exc:
        raise SeqConflict(run_id, entries[0].seq) from exc


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the write happened or not, the ledger says which
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
