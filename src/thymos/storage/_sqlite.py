"""The embedded SQLite backend: one writer thread grouping appends, a few reader threads.

Concurrent runs submit appends to a queue; the writer thread takes everything waiting, runs it in
one transaction and resolves the callers' futures with one hand-off to their event loop. When a
submission fails, the transaction is rolled back and the group run again with each submission in
its own savepoint, so one conflict fails only its own caller. The writer keeps the head of every
run it wrote (this process is the file's only writer), so an append that continues it skips the
head query. Readers use their own connections on a small pool; WAL lets them read while the
writer writes.
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

from . import _sql as sql
from ._contract import (
    AuditQuery,
    AuditRow,
    Checkpoint,
    Document,
    IdempotencyHit,
    Message,
    Notice,
    PackageExists,
    PackageRow,
    Publisher,
    PublisherExists,
    RunRecord,
    RunUpdate,
    SeqConflict,
    StorageError,
)
from ._migrations import SQLITE_MIGRATIONS

T = TypeVar("T")

HEADS_KEPT_MAX = 100_000
"""Run heads the writer remembers (forgotten all at once past it: they are read again)."""
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
        self._listeners: list[Callable[[Notice], None]] = []
        self._heads: dict[str, int] = {}
        """The writer thread's: each run's head seq as of its last commit."""
        self._staged_heads: dict[str, int] = {}
        """The writer thread's: heads written by the transaction in progress."""

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
        try:
            results = self._attempt(conn, group, savepoints=False)
            if results is None:
                # A submission failed: run the group again, each in its own savepoint, so the
                # failure is its caller's alone.
                results = self._attempt(conn, group, savepoints=True)
            assert results is not None
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._staged_heads.clear()
            failure = StorageError(f"the SQLite transaction failed: {exc}")
            failure.__cause__ = exc
            results = [(job, None, failure) for job in group]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]]
        by_loop = {}
        for result in results:
            by_loop.setdefault(result[0].loop, []).append(result)
        for loop, settled in by_loop.items():
            loop.call_soon_threadsafe(_settle_all, settled)

    def _attempt(
        self, conn: sqlite3.Connection, group: list[_Job], *, savepoints: bool
    ) -> list[tuple[_Job, Any, BaseException | None]] | None:
        """Run the group in one transaction and commit it; without savepoints, None (and
        nothing committed) as soon as one submission fails."""
        results: list[tuple[_Job, Any, BaseException | None]] = []
        self._staged_heads.clear()
        conn.execute("BEGIN IMMEDIATE")
        for job in group:
            if not savepoints:
                try:
                    value = job.work(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    return None
                results.append((job, value, None))
                continue
            conn.execute("SAVEPOINT job")
            staged = dict(self._staged_heads)
            try:
                value = job.work(conn)
            except BaseException as exc:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                self._staged_heads = staged
                results.append((job, None, exc))
            else:
                conn.execute("RELEASE job")
                results.append((job, value, None))
        conn.execute("COMMIT")
        if len(self._heads) > HEADS_KEPT_MAX:
            self._heads.clear()
        self._heads.update(self._staged_heads)
        self._staged_heads.clear()
        return results

    def _head(self, conn: sqlite3.Connection, run_id: str) -> int:
        """The run's stored head seq (-1: none), from what this writer wrote when it can."""
        known = self._staged_heads.get(run_id)
        if known is None:
            known = self._heads.get(run_id)
        if known is not None:
            return known
        row = conn.execute(sql.HEAD_SEQ, (run_id,)).fetchone()
        return -1 if row is None or row[0] is None else int(row[0])

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
            if conn.execute(sql.RUN_EXISTS, (record.run_id,)).fetchone():
                raise SeqConflict(record.run_id, 0)
            conn.execute(sql.INSERT_RUN, sql.run_params(record))
            _insert_entries(conn, record.run_id, [first])
            self._staged_heads[record.run_id] = 0
            if checkpoint is not None:
                conn.execute(sql.INSERT_CHECKPOINT, (record.run_id, 0, checkpoint.world))
            if idempotency is not None:
                try:
                    conn.execute(
                        sql.INSERT_IDEMPOTENCY,
                        (record.tenant, idempotency[0], idempotency[1], record.run_id),
                    )
                except sqlite3.IntegrityError as exc:
                    raise ThymosError(
                        ErrorCode.IDEMPOTENCY_CONFLICT, "this Idempotency-Key is already in use"
                    ) from exc

        await self._write(work)
        self._notify(Notice("entries", record.run_id, 0))

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
            stored = self._head(conn, run_id)
            if entries[0].seq != stored + 1:
                raise SeqConflict(run_id, entries[0].seq)
            # Consecutive within the batch too: a gap inside it would pass the head check.
            for offset, entry in enumerate(entries):
                if entry.seq != stored + 1 + offset:
                    raise SeqConflict(run_id, entry.seq)
            _insert_entries(conn, run_id, entries)
            self._staged_heads[run_id] = entries[-1].seq
            if update is not None:
                conn.execute(
                    sql.UPDATE_RUN,
                    (update.status, update.updated_at, orjson.dumps(update.summary), run_id),
                )
            if checkpoint is not None:
                conn.execute(sql.UPSERT_CHECKPOINT, (run_id, checkpoint.seq, checkpoint.world))
            if head is not None:
                conn.execute(
                    sql.INSERT_SIGNED_HEAD,
                    (run_id, head.seq, head.entry_id, head.signed_at, head.signature),
                )

        future = self._submit(work)
        notice = Notice("entries", run_id, entries[-1].seq)

        def notify(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._notify(notice)

        future.add_done_callback(notify)
        return future

    # -- reads -------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord | None:
        def work(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(sql.GET_RUN, (run_id,)).fetchone()
            return sql.record_of(row) if row else None

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
        query, params = sql.list_runs(
            tenant=tenant, status=status, before=before, parent_run_id=parent_run_id
        )

        def work(conn: sqlite3.Connection) -> list[RunRecord]:
            return [sql.record_of(row) for row in conn.execute(query, (*params, limit))]

        return await self._read(work)

    async def runs_with_status(self, statuses: Sequence[str]) -> list[RunRecord]:
        query = sql.runs_with_status(len(statuses))

        def work(conn: sqlite3.Connection) -> list[RunRecord]:
            return [sql.record_of(row) for row in conn.execute(query, tuple(statuses))]

        return await self._read(work)

    async def runs_interrupted(self) -> list[RunRecord]:
        def work(conn: sqlite3.Connection) -> list[RunRecord]:
            return [sql.record_of(row) for row in conn.execute(sql.SQLITE_RUNS_INTERRUPTED)]

        return await self._read(work)

    async def read_rows(self, run_id: str, *, after_seq: int, limit: int) -> list[StoredRow]:
        def work(conn: sqlite3.Connection) -> list[StoredRow]:
            cursor = conn.execute(sql.READ_ROWS, (run_id, after_seq, limit))
            return [StoredRow(seq, ident, bytes(raw)) for seq, ident, raw in cursor]

        return await self._read(work)

    async def read_rows_range(
        self, run_id: str, *, after_seq: int, upto_seq: int
    ) -> list[StoredRow]:
        def work(conn: sqlite3.Connection) -> list[StoredRow]:
            cursor = conn.execute(sql.READ_ROWS_RANGE, (run_id, after_seq, upto_seq))
            return [StoredRow(seq, ident, bytes(raw)) for seq, ident, raw in cursor]

        return await self._read(work)

    async def latest_checkpoint(self, run_id: str, *, at_or_before: int) -> Checkpoint | None:
        def work(conn: sqlite3.Connection) -> Checkpoint | None:
            row = conn.execute(sql.LATEST_CHECKPOINT, (run_id, at_or_before)).fetchone()
            return Checkpoint(run_id, row[0], bytes(row[1])) if row else None

        return await self._read(work)

    async def find_entry(self, run_id: str, entry_id: str) -> StoredRow | None:
        def work(conn: sqlite3.Connection) -> StoredRow | None:
            row = conn.execute(sql.FIND_ENTRY, (run_id, entry_id)).fetchone()
            return StoredRow(row[0], row[1], bytes(row[2])) if row else None

        return await self._read(work)

    async def find_run_by_writ(self, writ_id: str) -> RunRecord | None:
        def work(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(sql.RUN_BY_WRIT, (writ_id,)).fetchone()
            return sql.record_of(row) if row else None

        return await self._read(work)

    async def revoke(
        self, writ_id: str, *, tenant: str, revoked_at: str, revoked_by: str, reason: str | None
    ) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                sql.INSERT_REVOCATION, (writ_id, tenant, revoked_at, revoked_by, reason)
            )
            return cursor.rowcount == 1

        return await self._write(work)

    async def revocations(self) -> list[str]:
        def work(conn: sqlite3.Connection) -> list[str]:
            return [row[0] for row in conn.execute(sql.REVOCATIONS)]

        return await self._read(work)

    async def put_documents(self, documents: Sequence[Document]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(sql.INSERT_DOCUMENT, [(d.hash, d.kind, d.body) for d in documents])

        await self._write(work)

    async def documents(self, hashes: Sequence[str]) -> dict[str, Document]:
        wanted = sorted(set(hashes))

        def work(conn: sqlite3.Connection) -> dict[str, Document]:
            found: dict[str, Document] = {}
            for start in range(0, len(wanted), sql.DOCUMENTS_CHUNK):
                chunk = wanted[start : start + sql.DOCUMENTS_CHUNK]
                for ident, kind, body in conn.execute(sql.documents_in(len(chunk)), chunk):
                    found[ident] = Document(ident, kind, bytes(body))
            return found

        return await self._read(work) if wanted else {}

    async def signed_heads(
        self, run_id: str, *, after_seq: int = -1, upto_seq: int | None = None
    ) -> list[SignedHead]:
        upto = _SEQ_MAX if upto_seq is None else upto_seq

        def work(conn: sqlite3.Connection) -> list[SignedHead]:
            cursor = conn.execute(sql.SIGNED_HEADS, (run_id, after_seq, upto))
            return [SignedHead(run_id, seq, ident, at, sig) for seq, ident, at, sig in cursor]

        return await self._read(work)

    async def find_idempotency(self, tenant: str, key: str) -> IdempotencyHit | None:
        def work(conn: sqlite3.Connection) -> IdempotencyHit | None:
            row = conn.execute(sql.FIND_IDEMPOTENCY, (tenant, key)).fetchone()
            return IdempotencyHit(row[0], row[1]) if row else None

        return await self._read(work)

    # -- audit -------------------------------------------------------------------------------

    async def audit_entries(self, query: AuditQuery, *, limit: int) -> list[AuditRow]:
        statement, params = sql.audit(query, count=False)

        def work(conn: sqlite3.Connection) -> list[AuditRow]:
            cursor = conn.execute(statement, (*params, limit))
            return [AuditRow(r, seq, i, k, at, bytes(raw)) for r, seq, i, k, at, raw in cursor]

        return await self._read(work)

    async def audit_count(self, query: AuditQuery) -> int:
        statement, params = sql.audit(query, count=True)

        def work(conn: sqlite3.Connection) -> int:
            return int(conn.execute(statement, params).fetchone()[0])

        return await self._read(work)

    # -- leases ------------------------------------------------------------------------------

    async def claim_lease(self, run_id: str, node_id: str, *, now_us: int, ttl_us: int) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(sql.CLAIM_LEASE, (run_id, node_id, now_us + ttl_us, now_us))
            return cursor.rowcount == 1

        return await self._write(work)

    async def renew_leases(self, node_id: str, *, now_us: int, ttl_us: int) -> set[str]:
        def work(conn: sqlite3.Connection) -> set[str]:
            conn.execute(sql.RENEW_LEASES, (now_us + ttl_us, node_id))
            return {row[0] for row in conn.execute(sql.HELD_LEASES, (node_id,))}

        return await self._write(work)

    async def release_lease(self, run_id: str, node_id: str) -> None:
        await self._write(lambda conn: conn.execute(sql.RELEASE_LEASE, (run_id, node_id)))

    async def claim_expired_leases(
        self, node_id: str, *, now_us: int, ttl_us: int, limit: int
    ) -> list[str]:
        def work(conn: sqlite3.Connection) -> list[str]:
            cursor = conn.execute(
                sql.SQLITE_CLAIM_EXPIRED, (node_id, now_us + ttl_us, now_us, limit)
            )
            return sorted(row[0] for row in cursor)

        return await self._write(work)

    async def lease_owner(self, run_id: str, *, now_us: int) -> str | None:
        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(sql.LEASE_OWNER, (run_id, now_us)).fetchone()
            return str(row[0]) if row else None

        return await self._read(work)

    # -- messages ----------------------------------------------------------------------------

    async def send_message(
        self, message_id: str, run_id: str, node_id: str, body: bytes, *, now_us: int
    ) -> None:
        await self._write(
            lambda conn: conn.execute(
                sql.INSERT_MESSAGE, (message_id, run_id, node_id, body, now_us)
            )
        )
        self._notify(Notice("messages", node_id))

    async def take_messages(self, node_id: str) -> list[Message]:
        def work(conn: sqlite3.Connection) -> list[Message]:
            rows = conn.execute(sql.TAKE_MESSAGES, (node_id,)).fetchall()
            return [Message(ident, run_id, bytes(body)) for ident, run_id, body in rows]

        return await self._write(work)

    async def reply_message(self, message_id: str, body: bytes) -> None:
        await self._write(lambda conn: conn.execute(sql.REPLY_MESSAGE, (body, message_id)))
        self._notify(Notice("replies", message_id))

    async def message_reply(self, message_id: str) -> bytes | None:
        def work(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(sql.MESSAGE_REPLY, (message_id,)).fetchone()
            return None if row is None or row[0] is None else bytes(row[0])

        return await self._read(work)

    async def delete_message(self, message_id: str) -> None:
        await self._write(lambda conn: conn.execute(sql.DELETE_MESSAGE, (message_id,)))

    # -- the package registry ----------------------------------------------------------------

    async def add_publisher(self, publisher: Publisher) -> None:
        def work(conn: sqlite3.Connection) -> None:
            if conn.execute(sql.INSERT_PUBLISHER, sql.publisher_params(publisher)).rowcount == 1:
                return
            if conn.execute(sql.PUBLISHER_BY_NAME, (publisher.name,)).fetchone():
                raise PublisherExists("name", publisher.name)
            raise PublisherExists("public_key", publisher.public_key)

        await self._write(work)

    async def publishers(self) -> list[Publisher]:
        def work(conn: sqlite3.Connection) -> list[Publisher]:
            return [sql.publisher_of(row) for row in conn.execute(sql.PUBLISHERS)]

        return await self._read(work)

    async def publisher_by_key(self, public_key: str) -> Publisher | None:
        def work(conn: sqlite3.Connection) -> Publisher | None:
            row = conn.execute(sql.PUBLISHER_BY_KEY, (public_key,)).fetchone()
            return sql.publisher_of(row) if row else None

        return await self._read(work)

    async def put_package(self, package: PackageRow) -> None:
        def work(conn: sqlite3.Connection) -> None:
            if conn.execute(sql.INSERT_PACKAGE, sql.package_params(package)).rowcount != 1:
                raise PackageExists(package.name, package.version)

        await self._write(work)

    async def package_versions(self, name: str) -> list[PackageRow]:
        def work(conn: sqlite3.Connection) -> list[PackageRow]:
            return [sql.package_of(row) for row in conn.execute(sql.PACKAGE_VERSIONS, (name,))]

        return await self._read(work)

    async def packages(self) -> list[PackageRow]:
        def work(conn: sqlite3.Connection) -> list[PackageRow]:
            return [sql.package_of(row) for row in conn.execute(sql.PACKAGES)]

        return await self._read(work)

    # -- notices -----------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[Notice], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Notice], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, notice: Notice) -> None:
        """One process owns a SQLite file: its notices are delivered in-process."""
        for listener in list(self._listeners):
            listener(notice)


def _insert_entries(conn: sqlite3.Connection, run_id: str, entries: Sequence[Entry]) -> None:
    try:
        conn.executemany(sql.INSERT_ENTRY, sql.entry_params(run_id, entries))
    except sqlite3.IntegrityError as exc:
        raise SeqConflict(run_id, entries[0].seq) from exc


def _settle_all(results: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for job, value, error in results:
        _settle(job.future, value, error)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the write happened or not, the ledger says which
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
