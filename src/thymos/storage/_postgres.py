"""The PostgreSQL backend: one database shared by several server processes (nodes).

Writes go through a few writer tasks fed by queues, as SQLite's single writer thread: a
submission is queued the moment it is made (so a run's pipelined appends keep their order: a run
always goes to the same writer), and each writer takes everything waiting, runs it in one
transaction with a savepoint per submission (a conflict fails only its own caller) and settles
each caller when the transaction commits. Each writer holds a connection of its own (it
reconnects on its own schedule when the server comes back); reads draw from a pool. A node thus
uses up to `pool_max` + `WRITERS` + 1 (listening) connections.

Notices are `pg_notify` calls made inside the writing transaction, so PostgreSQL delivers them
exactly when it commits, to every node listening (this one too), on a dedicated connection.

Losing the database loses and duplicates nothing: a write that fails because the connection or
the server went away is retried with backoff until it lands (runs pause meanwhile, then go on).
A connection lost while its COMMIT was in flight leaves the outcome unknown: the transaction's id
then tells whether it committed (`pg_xact_status`, hence PostgreSQL 13 or newer), and should the
server be unable to say, every write run again first reads back what an earlier attempt stored
(each write's comment says how). Reads fail with `StorageError` (503 `storage_unavailable`)
after one more try.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from thymos.core import Entry, ErrorCode, SignedHead, StoredRow, ThymosError

from . import _sql as sql
from ._contract import (
    KEY_SOURCES,
    ApiKey,
    AuditQuery,
    AuditRow,
    Checkpoint,
    Document,
    IdempotencyHit,
    KeyNameTaken,
    KeySeed,
    Message,
    Notice,
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
from ._keys import hash_secret, key_of, new_key_id, now_text
from ._migrations import POSTGRES_MIGRATIONS
from ._open import StorageUnusable

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]
Work = Callable[[Conn, bool], Awaitable[T]]
"""A write: what it does on a connection inside its savepoint, told (`retry`) when an earlier
attempt of it may have committed and the server could not say whether it did."""

log = logging.getLogger("thymos.storage.postgres")

WRITERS = 2
"""Writer tasks (and so transactions in flight at once); a run always goes to the same one."""
WRITE_GROUP_MAX = 256
"""Submissions grouped into one transaction, as SQLite's writer."""
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0
"""A write waiting for the database tries again after 50 ms, doubling to every 2 s."""
SERVER_VERSION_MIN = 130000
"""PostgreSQL 13: `pg_current_xact_id` and `pg_xact_status`, which settle a lost COMMIT."""
CONNECT_TIMEOUT_S = 5.0
"""Connecting, and waiting for a pooled connection (reads then answer 503; writes retry)."""
PING_TIMEOUT_S = 2.0
SWEEP_WAIT_S = 1.0
"""How long a read that found its connection dead waits for the pool's idle connections to be
checked before it tries again."""
POOL_RECONNECT_S = 10.0
"""The pool stops retrying a lost connection after this long and grows anew on demand, so it
comes back within seconds of the server rather than at the end of a long backoff."""
LISTEN_IDLE_S = 30.0
"""After this long without a notice the listening connection is checked (a vanished server
sends nothing, not even an error)."""
ORPHAN_TIMEOUT_MS = 30_000
"""`idle_in_transaction_session_timeout` of writer sessions: how long the server keeps a group
transaction whose client vanished before committing (its outcome and locks wait for it)."""
CLOSE_WAIT_S = 10.0
"""How long close waits for the writers to finish what is queued."""
CHANNEL = "thymos"
MIGRATION_LOCK = 0x7468796D6F73
"""`pg_advisory_xact_lock` key ("thymos") that serialises migrations of nodes starting at once."""
SEED_LOCK = MIGRATION_LOCK + 1
"""Serialises key seeding: nodes starting at once would otherwise both insert a new key."""
_SEQ_MAX = 2**63 - 1

# Connection parameters the server sets unless the URL does: a bounded connect, and TCP
# keepalives so a server that vanishes without a word is noticed in about 25 s.
_DEFAULT_PARAMS: dict[str, Any] = {
    "connect_timeout": int(CONNECT_TIMEOUT_S),
    "application_name": "thymos",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}

# SQLSTATE prefixes of failures that say nothing about the write itself: the connection or the
# server went away (08, 57P), it is short of resources (53), or the transaction lost a race and
# was rolled back whole (40001, 40P01); 25006 is a server that became a read-only standby.
_TRANSIENT_STATES = ("08", "53", "57P", "40001", "40P01", "25006")


def postgres_storage(url: str, *, pool_max: int = 8) -> Storage:
    """Storage on the PostgreSQL database at `url` (shared: several nodes may use it). Nothing
    connects until `open()`."""
    ledger = PostgresLedgerStore(url, pool_max=pool_max)
    return Storage("postgres", ledger, PostgresKeyStore(ledger), shared=True)


@dataclass(slots=True)
class _Job:
    work: Work[Any]
    future: asyncio.Future[Any]


_Results = list[tuple[_Job, Any, BaseException | None]]


class PostgresLedgerStore:
    backend = "postgres"

    def __init__(self, url: str, *, pool_max: int = 8) -> None:
        self._url = url
        self._pool_max = max(1, pool_max)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._queues: list[asyncio.Queue[_Job | None]] = []
        self._writers: list[asyncio.Task[None]] = []
        self._writer_conns: list[Conn | None] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[Notice], None]] = []
        self._params: dict[str, Any] = {}
        self._closing = False
        self._wake = asyncio.Event()
        self._away_at_close = False
        self._heads: dict[str, int] = {}
        """The last seq of each run this store's writers committed: an append that continues
        it skips the head query (see `append`)."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate (one transaction, one node at a time), listen, open the pool and
        start the writers. A database that cannot be used raises `StorageUnusable`."""
        if self._pool is not None:
            return
        try:
            given = conninfo_to_dict(self._url)
        except psycopg.Error as exc:
            raise StorageUnusable(
                f"THYMOS_POSTGRES_URL is not a valid PostgreSQL URL: {_scrub(str(exc), None)}"
            ) from None
        password = given.get("password")
        password = None if password is None else str(password)
        where = _describe(given)
        self._params = {k: v for k, v in _DEFAULT_PARAMS.items() if k not in given}

        def unusable(doing: str, exc: BaseException) -> StorageUnusable:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            return StorageUnusable(
                f"cannot {doing} the PostgreSQL database {where}: {_scrub(reason, password)}"
            )

        def cause(exc: BaseException) -> BaseException | None:
            """The driver's error to chain from, unless its text would show the password."""
            return exc if _scrub(str(exc), password) == str(exc) else None

        try:
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, **self._params)
        except (psycopg.Error, OSError) as exc:
            raise unusable("connect to", exc) from cause(exc)
        version = conn.info.server_version
        if version < SERVER_VERSION_MIN:
            await conn.close()
            raise StorageUnusable(
                f"the PostgreSQL database {where} runs server version {version // 10000}: "
                "PostgreSQL 13 or newer is needed"
            )
        try:
            await self._migrate(conn)
            await conn.execute(f"LISTEN {CHANNEL}")
        except (psycopg.Error, OSError) as exc:
            await conn.close()
            raise unusable("migrate", exc) from cause(exc)
        # No `check` on each checkout: after a restart it would meet the dead connections one
        # by one with a growing pause between them. A read that meets one sweeps them all
        # instead (`_sweep`) and tries once more.
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._url,
            kwargs={"autocommit": True, **self._params},
            min_size=min(2, self._pool_max),
            max_size=self._pool_max,
            open=False,
            timeout=CONNECT_TIMEOUT_S,
            reconnect_timeout=POOL_RECONNECT_S,
            name="thymos",
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except (psycopg.Error, OSError) as exc:
            await pool.close()
            await conn.close()
            raise unusable("open a connection pool on", exc) from cause(exc)
        self._pool = pool
        self._closing = False
        self._away_at_close = False
        self._wake = asyncio.Event()
        self._queues = [asyncio.Queue() for _ in range(WRITERS)]
        self._writer_conns = [None] * WRITERS
        self._writers = [
            asyncio.create_task(self._write_loop(i, q), name=f"thymos-postgres-writer-{i}")
            for i, q in enumerate(self._queues)
        ]
        self._listener_task = asyncio.create_task(self._listen(conn), name="thymos-postgres-listen")

    async def close(self) -> None:
        """Finish what is queued (fail it with `StorageError` if the database is away), stop
        listening and close the pool."""
        pool = self._pool
        if pool is None:
            return
        self._closing = True
        self._wake.set()
        for q in self._queues:
            q.put_nowait(None)
        if self._writers:
            _, late = await asyncio.wait(self._writers, timeout=CLOSE_WAIT_S)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for q in self._queues:
            while not q.empty():
                job = q.get_nowait()
                if job is not None:
                    _settle(job.future, None, StorageError("the ledger is closed"))
        self._writers, self._queues = [], []
        for background in (self._listener_task, self._sweeper):
            if background is not None and not background.done():
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        self._listener_task = None
        self._sweeper = None
        self._pool = None
        await pool.close(timeout=CLOSE_WAIT_S)

    async def _migrate(self, conn: Conn) -> None:
        """Apply the migrations this database lacks, all in one transaction, under an advisory
        lock: two nodes starting together never both apply one."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"
            )
            cursor = await conn.execute("SELECT MAX(version) FROM schema_version")
            row = await cursor.fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            for version, statements in enumerate(POSTGRES_MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                log.info("PostgreSQL schema migrated to version %d", version)

    # -- the writers -------------------------------------------------------------------------

    async def _write_loop(self, index: int, queue: asyncio.Queue[_Job | None]) -> None:
        try:
            while True:
                job = await queue.get()
                if job is None:
                    return
                group = [job]
                stop = False
                while len(group) < WRITE_GROUP_MAX:
                    try:
                        more = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if more is None:
                        stop = True
                        break
                    group.append(more)
                await self._run_group(index, group)
                if stop:
                    return
        finally:
            conn, self._writer_conns[index] = self._writer_conns[index], None
            if conn is not None:
                await conn.close()

    async def _run_group(self, index: int, group: list[_Job]) -> None:
        """Run the group in one transaction, again and again while the database is away, until
        it commits or the store closes.

        An attempt that failed before its COMMIT was sent left nothing: the next one runs the
        jobs afresh. One whose connection was lost with the COMMIT in flight may have landed:
        its transaction id says (`pg_xact_status`), and if it committed, its results are the
        callers' answers. Only when the server cannot say are the jobs run again told it is a
        retry, and each reads back what an earlier attempt may have stored."""
        delay = RETRY_FIRST_S
        waited = False
        retry = False
        unknown: _Transient | None = None
        results: _Results
        try:
            while True:
                if self._closing and self._away_at_close:
                    failure = StorageError("the ledger closed while the database was away")
                    results = [(job, None, failure) for job in group]
                    break
                try:
                    if unknown is not None and unknown.xid is not None:
                        status = await self._outcome(index, unknown.xid)
                        if status == "committed":
                            results = unknown.results
                            break
                        if status != "in progress":
                            # Aborted: nothing landed. None: nobody can say any more.
                            retry = status is None
                            unknown = None
                    if unknown is None:
                        results = await self._attempt(index, group, retry)
                        if waited:
                            log.warning("the database answers again; waiting writes are stored")
                        break
                except (psycopg.Error, _Transient) as caught:
                    exc = caught.error if isinstance(caught, _Transient) else caught
                    if not isinstance(caught, _Transient) and not _transient(exc):
                        failure = StorageError(f"the PostgreSQL transaction failed: {exc}")
                        failure.__cause__ = exc
                        results = [(job, None, failure) for job in group]
                        break
                    if isinstance(caught, _Transient) and caught.xid is not None:
                        unknown = caught
                    if self._closing:
                        self._away_at_close = True
                        continue
                    if not waited:
                        log.warning("the database does not answer; writes wait and retry: %s", exc)
                    waited = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_S)
        except asyncio.CancelledError:
            for job in group:
                _settle(job.future, None, StorageError("the ledger is closed"))
            raise
        except Exception as exc:  # a bug here must not leave callers waiting forever
            log.exception("a PostgreSQL write group failed")
            results = [(job, None, exc) for job in group]
        for job, value, error in results:
            _settle(job.future, value, error)

    async def _writer_conn(self, index: int) -> Conn:
        """The writer's own connection, made again when it was lost."""
        conn = self._writer_conns[index]
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, **self._params)
            try:
                # A writer never idles inside a transaction; if this client vanishes mid-group,
                # the server ends the orphaned transaction (and frees its locks) in seconds.
                await conn.execute(f"SET idle_in_transaction_session_timeout = {ORPHAN_TIMEOUT_MS}")
            except BaseException:
                await conn.close()
                raise
            self._writer_conns[index] = conn
        return conn

    async def _attempt(self, index: int, group: list[_Job], retry: bool) -> _Results:
        """One transaction for the whole group, a savepoint per job, on the writer's own
        connection. A transient failure anywhere raises `_Transient` (the group is tried
        again); any other fails only its job."""
        conn = await self._writer_conn(index)
        try:
            # First without savepoints (two round trips fewer per job): a job that fails rolls
            # the whole transaction back, and the group runs again with a savepoint per job.
            return await self._transact(index, conn, group, retry, isolate=False)
        except _Isolate as isolate:
            if len(group) == 1:
                return [(group[0], None, isolate.failure)]
        return await self._transact(index, conn, group, retry, isolate=True)

    async def _transact(
        self, index: int, conn: Conn, group: list[_Job], retry: bool, *, isolate: bool
    ) -> _Results:
        results: _Results = []
        xid: str | None = None
        committing = False
        try:
            async with conn.transaction():
                row = await _one(conn, "SELECT pg_current_xact_id()::text")
                xid = None if row is None else str(row[0])
                notices: list[str] = []
                heads: dict[str, int] = {}
                for job in group:
                    job_notices: list[str] = []
                    job_heads: dict[str, int] = {}
                    token = _NOTICES.set(job_notices)
                    heads_token = _HEADS.set(_JobHeads(heads, job_heads))
                    try:
                        if isolate:
                            async with conn.transaction():
                                value = await job.work(conn, retry)
                        else:
                            value = await job.work(conn, retry)
                    except psycopg.Error as exc:
                        if conn.broken or _transient(exc):
                            raise
                        failure = StorageError(f"PostgreSQL refused a write: {exc}")
                        failure.__cause__ = exc
                        if not isolate:
                            raise _Isolate(failure) from exc
                        results.append((job, None, failure))
                    except Exception as exc:
                        if not isolate:
                            raise _Isolate(exc) from exc
                        results.append((job, None, exc))
                    else:
                        results.append((job, value, None))
                        notices.extend(job_notices)
                        heads.update(job_heads)
                    finally:
                        _NOTICES.reset(token)
                        _HEADS.reset(heads_token)
                if notices:
                    # Every notice of the group in one statement, delivered at COMMIT.
                    await conn.execute(
                        "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload",
                        (CHANNEL, list(dict.fromkeys(notices))),
                    )
                committing = True  # leaving the block sends COMMIT
        except psycopg.Error as exc:
            self._heads.clear()  # whatever landed, the next appends ask the database
            if conn.broken or _transient(exc):
                # The next attempt starts on a fresh connection, whatever state this one is in.
                self._writer_conns[index] = None
                await conn.close()
                raise _Transient(exc, xid if committing else None, results) from exc
            raise
        if len(self._heads) > HEADS_KEPT:
            self._heads.clear()
        self._heads.update(heads)
        return results

    async def _outcome(self, index: int, xid: str) -> str | None:
        """`committed`, `aborted` or `in progress`: what became of transaction `xid`; None when
        the server cannot say (too old, or a server without `pg_xact_status`)."""
        conn = await self._writer_conn(index)
        try:
            row = await _one(conn, "SELECT pg_xact_status(CAST(? AS xid8))", (xid,))
        except psycopg.Error as exc:
            if conn.broken or _transient(exc):
                raise
            return None
        return None if row is None or row[0] is None else str(row[0])

    def _submit(self, route: str, work: Work[T]) -> asyncio.Future[T]:
        """Queue `work` now on the writer `route` maps to; the future settles when its
        transaction commits. Work of one route is applied in submission order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._pool is None or self._closing or not self._queues:
            future.set_exception(StorageError("the ledger is closed"))
            return future
        self._queues[hash(route) % len(self._queues)].put_nowait(_Job(work, future))
        return future

    async def _write(self, route: str, work: Work[T]) -> T:
        return await self._submit(route, work)

    # -- readers -----------------------------------------------------------------------------

    async def _read(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection. A connection lost under it (the server restarted,
        or dropped it) is tried once more after the pool's idle connections are checked; then
        (or when no connection comes in time) `StorageError`."""
        try:
            return await self._read_once(work)
        except psycopg.Error as exc:
            if not _transient(exc) or isinstance(exc, PoolTimeout) or self._pool is None:
                raise _read_failed(exc) from exc
        await self._sweep()
        try:
            return await self._read_once(work)
        except psycopg.Error as exc:
            raise _read_failed(exc) from exc

    async def _sweep(self) -> None:
        """Check every idle pooled connection (dead ones are replaced): one sweep at a time,
        waited for at most `SWEEP_WAIT_S` (and never cancelled midway, which would lose
        connections)."""
        pool = self._pool
        if pool is None:
            return
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(pool.check(), name="thymos-postgres-sweep")
            self._sweeper.add_done_callback(_retrieve)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._sweeper), SWEEP_WAIT_S)

    async def _read_once(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        pool = self._pool
        if pool is None:
            raise StorageError("the ledger is closed")
        async with pool.connection(timeout=CONNECT_TIMEOUT_S) as conn:
            return await work(conn)

    async def ping(self) -> bool:
        """True when the database answers within `PING_TIMEOUT_S`; never raises."""
        pool = self._pool
        if pool is None or self._closing:
            return False
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                row = await self._read(functools.partial(_one, statement="SELECT 1"))
            return row is not None and row[0] == 1
        except Exception:
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
        payload = _payload(Notice("entries", record.run_id, 0))

        async def work(conn: Conn, retry: bool) -> None:
            if await _one(conn, sql.RUN_EXISTS, (record.run_id,)):
                # Retried: the run row with our seq-0 entry means the earlier attempt committed
                # (run, entry, checkpoint and idempotency row land together).
                if retry:
                    row = await _one(conn, sql.ENTRY_AT, (record.run_id, 0))
                    if row is not None and row[0] == first.id:
                        return
                raise SeqConflict(record.run_id, 0)
            try:
                await _execute(conn, sql.INSERT_RUN, sql.run_params(record))
            except pg_errors.UniqueViolation as exc:  # another node created it meanwhile
                raise SeqConflict(record.run_id, 0) from exc
            await _insert_entries(conn, record.run_id, [first])
            if checkpoint is not None:
                await _execute(conn, sql.INSERT_CHECKPOINT, (record.run_id, 0, checkpoint.world))
            if idempotency is not None:
                try:
                    await _execute(
                        conn,
                        sql.INSERT_IDEMPOTENCY,
                        (record.tenant, idempotency[0], idempotency[1], record.run_id),
                    )
                except pg_errors.UniqueViolation as exc:
                    raise ThymosError(
                        ErrorCode.IDEMPOTENCY_CONFLICT, "this Idempotency-Key is already in use"
                    ) from exc
            await _notify(conn, payload)

        await self._write(record.run_id, work)

    def append(
        self,
        run_id: str,
        entries: Sequence[Entry],
        update: RunUpdate | None,
        checkpoint: Checkpoint | None = None,
        head: SignedHead | None = None,
    ) -> asyncio.Future[None]:
        async def work(conn: Conn, retry: bool) -> None:
            # Retried: our first entry stored at its seq means the earlier attempt committed
            # (a batch lands whole). An entry's id hashes its bytes, run and seq: the same id
            # there is this very entry, never another writer's.
            if retry:
                row = await _one(conn, sql.ENTRY_AT, (run_id, entries[0].seq))
                if row is not None and row[0] == entries[0].id:
                    return
            # Continuity: the batch must start right after the stored head, so a writer that
            # lost an earlier append can never leave a gap. When it continues what this store
            # last committed (or staged earlier in this transaction) the head is known: a row
            # another node stored beyond it would make the insert below conflict, never gap.
            known = _HEADS.get()
            expected = None if known is None else known.head(run_id, self._heads)
            if expected is not None and entries[0].seq == expected + 1:
                stored = expected
            else:
                row = await _one(conn, sql.HEAD_SEQ, (run_id,))
                stored = -1 if row is None or row[0] is None else int(row[0])
            if entries[0].seq != stored + 1:
                raise SeqConflict(run_id, entries[0].seq)
            # Consecutive within the batch too: a gap inside it would pass the head check.
            for offset, entry in enumerate(entries):
                if entry.seq != stored + 1 + offset:
                    raise SeqConflict(run_id, entry.seq)
            await _insert_entries(conn, run_id, entries)
            if update is not None:
                await _execute(
                    conn,
                    sql.UPDATE_RUN,
                    (update.status, update.updated_at, orjson.dumps(update.summary), run_id),
                )
            if checkpoint is not None:
                await _execute(
                    conn, sql.UPSERT_CHECKPOINT, (run_id, checkpoint.seq, checkpoint.world)
                )
            if head is not None:
                await _execute(
                    conn,
                    sql.INSERT_SIGNED_HEAD,
                    (run_id, head.seq, head.entry_id, head.signed_at, head.signature),
                )
            await _notify(conn, _payload(Notice("entries", run_id, entries[-1].seq)))
            if known is not None:
                known.job[run_id] = entries[-1].seq

        return self._submit(run_id, work)

    # -- reads -------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord | None:
        async def work(conn: Conn) -> RunRecord | None:
            row = await _one(conn, sql.GET_RUN, (run_id,))
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

        async def work(conn: Conn) -> list[RunRecord]:
            return [sql.record_of(row) for row in await _all(conn, query, (*params, limit))]

        return await self._read(work)

    async def runs_with_status(self, statuses: Sequence[str]) -> list[RunRecord]:
        if not statuses:  # `IN ()` is a syntax error here (SQLite accepts it and finds none)
            return await self._read(_nothing)
        query = sql.runs_with_status(len(statuses))

        async def work(conn: Conn) -> list[RunRecord]:
            return [sql.record_of(row) for row in await _all(conn, query, tuple(statuses))]

        return await self._read(work)

    async def runs_interrupted(self) -> list[RunRecord]:
        async def work(conn: Conn) -> list[RunRecord]:
            return [sql.record_of(row) for row in await _all(conn, sql.POSTGRES_RUNS_INTERRUPTED)]

        return await self._read(work)

    async def read_rows(self, run_id: str, *, after_seq: int, limit: int) -> list[StoredRow]:
        async def work(conn: Conn) -> list[StoredRow]:
            rows = await _all(conn, sql.READ_ROWS, (run_id, after_seq, limit))
            return [StoredRow(seq, ident, bytes(raw)) for seq, ident, raw in rows]

        return await self._read(work)

    async def read_rows_range(
        self, run_id: str, *, after_seq: int, upto_seq: int
    ) -> list[StoredRow]:
        async def work(conn: Conn) -> list[StoredRow]:
            rows = await _all(conn, sql.READ_ROWS_RANGE, (run_id, after_seq, upto_seq))
            return [StoredRow(seq, ident, bytes(raw)) for seq, ident, raw in rows]

        return await self._read(work)

    async def latest_checkpoint(self, run_id: str, *, at_or_before: int) -> Checkpoint | None:
        async def work(conn: Conn) -> Checkpoint | None:
            row = await _one(conn, sql.LATEST_CHECKPOINT, (run_id, at_or_before))
            return Checkpoint(run_id, row[0], bytes(row[1])) if row else None

        return await self._read(work)

    async def find_entry(self, run_id: str, entry_id: str) -> StoredRow | None:
        async def work(conn: Conn) -> StoredRow | None:
            row = await _one(conn, sql.FIND_ENTRY, (run_id, entry_id))
            return StoredRow(row[0], row[1], bytes(row[2])) if row else None

        return await self._read(work)

    async def find_run_by_writ(self, writ_id: str) -> RunRecord | None:
        async def work(conn: Conn) -> RunRecord | None:
            row = await _one(conn, sql.RUN_BY_WRIT, (writ_id,))
            return sql.record_of(row) if row else None

        return await self._read(work)

    async def revoke(
        self, writ_id: str, *, tenant: str, revoked_at: str, revoked_by: str, reason: str | None
    ) -> bool:
        values = (tenant, revoked_at, revoked_by, reason)

        async def work(conn: Conn, retry: bool) -> bool:
            cursor = await _execute(conn, sql.INSERT_REVOCATION, (writ_id, *values))
            if cursor.rowcount == 1:
                return True
            # Retried: a row holding exactly these values (the revocation time included) is the
            # one the earlier attempt committed, so this call did revoke the writ.
            if retry:
                row = await _one(conn, sql.REVOCATION_OF, (writ_id,))
                return row is not None and tuple(row) == values
            return False

        return await self._write(writ_id, work)

    async def revocations(self) -> list[str]:
        async def work(conn: Conn) -> list[str]:
            return [row[0] for row in await _all(conn, sql.REVOCATIONS)]

        return await self._read(work)

    async def put_documents(self, documents: Sequence[Document]) -> None:
        rows = [(d.hash, d.kind, d.body) for d in documents]

        # Retried as it is: a document already kept is left as it is.
        async def work(conn: Conn, retry: bool) -> None:
            if rows:
                async with conn.cursor() as cursor:
                    await cursor.executemany(_pg(sql.INSERT_DOCUMENT), rows)

        await self._write(rows[0][0] if rows else "", work)

    async def documents(self, hashes: Sequence[str]) -> dict[str, Document]:
        wanted = sorted(set(hashes))

        async def work(conn: Conn) -> dict[str, Document]:
            found: dict[str, Document] = {}
            for start in range(0, len(wanted), sql.DOCUMENTS_CHUNK):
                chunk = wanted[start : start + sql.DOCUMENTS_CHUNK]
                for ident, kind, body in await _all(conn, sql.documents_in(len(chunk)), chunk):
                    found[ident] = Document(ident, kind, bytes(body))
            return found

        return await self._read(work) if wanted else {}

    async def signed_heads(
        self, run_id: str, *, after_seq: int = -1, upto_seq: int | None = None
    ) -> list[SignedHead]:
        upto = _SEQ_MAX if upto_seq is None else upto_seq

        async def work(conn: Conn) -> list[SignedHead]:
            rows = await _all(conn, sql.SIGNED_HEADS, (run_id, after_seq, upto))
            return [SignedHead(run_id, seq, ident, at, sig) for seq, ident, at, sig in rows]

        return await self._read(work)

    async def find_idempotency(self, tenant: str, key: str) -> IdempotencyHit | None:
        async def work(conn: Conn) -> IdempotencyHit | None:
            row = await _one(conn, sql.FIND_IDEMPOTENCY, (tenant, key))
            return IdempotencyHit(row[0], row[1]) if row else None

        return await self._read(work)

    # -- audit -------------------------------------------------------------------------------

    async def audit_entries(self, query: AuditQuery, *, limit: int) -> list[AuditRow]:
        statement, params = sql.audit(query, count=False)

        async def work(conn: Conn) -> list[AuditRow]:
            rows = await _all(conn, statement, (*params, limit))
            return [AuditRow(r, seq, i, k, at, bytes(raw)) for r, seq, i, k, at, raw in rows]

        return await self._read(work)

    async def audit_count(self, query: AuditQuery) -> int:
        statement, params = sql.audit(query, count=True)

        async def work(conn: Conn) -> int:
            row = await _one(conn, statement, params)
            return 0 if row is None else int(row[0])

        return await self._read(work)

    # -- leases ------------------------------------------------------------------------------

    async def claim_lease(self, run_id: str, node_id: str, *, now_us: int, ttl_us: int) -> bool:
        # Retried as it is: a lease the earlier attempt took is this node's now, which the
        # statement takes again (True).
        async def work(conn: Conn, retry: bool) -> bool:
            cursor = await _execute(
                conn, sql.CLAIM_LEASE, (run_id, node_id, now_us + ttl_us, now_us)
            )
            return cursor.rowcount == 1

        return await self._write(run_id, work)

    async def renew_leases(self, node_id: str, *, now_us: int, ttl_us: int) -> set[str]:
        # Retried as it is: renewing to the same expiry again changes nothing.
        async def work(conn: Conn, retry: bool) -> set[str]:
            await _execute(conn, sql.RENEW_LEASES, (now_us + ttl_us, node_id))
            return {row[0] for row in await _all(conn, sql.HELD_LEASES, (node_id,))}

        return await self._write(node_id, work)

    async def release_lease(self, run_id: str, node_id: str) -> None:
        # Retried as it is: a lease already given up is not there to delete.
        async def work(conn: Conn, retry: bool) -> None:
            await _execute(conn, sql.RELEASE_LEASE, (run_id, node_id))

        await self._write(run_id, work)

    async def claim_expired_leases(
        self, node_id: str, *, now_us: int, ttl_us: int, limit: int
    ) -> list[str]:
        expires = now_us + ttl_us

        async def work(conn: Conn, retry: bool) -> list[str]:
            rows = await _all(conn, sql.POSTGRES_CLAIM_EXPIRED, (node_id, expires, now_us, limit))
            claimed = {row[0] for row in rows}
            # Retried: leases the earlier attempt claimed are this node's now and no longer
            # expired; they carry exactly the expiry it set, so they are found by it (else this
            # node would renew runs it never takes over). A run this node claimed otherwise at
            # the very same microsecond may come back too; taking over a run it drives is a
            # no-op for the runtime.
            if retry:
                held = await _all(conn, sql.LEASES_EXPIRING_AT, (node_id, expires))
                claimed.update(row[0] for row in held)
            return sorted(claimed)

        return await self._write(node_id, work)

    async def lease_owner(self, run_id: str, *, now_us: int) -> str | None:
        async def work(conn: Conn) -> str | None:
            row = await _one(conn, sql.LEASE_OWNER, (run_id, now_us))
            return str(row[0]) if row else None

        return await self._read(work)

    # -- messages ----------------------------------------------------------------------------

    async def send_message(
        self, message_id: str, run_id: str, node_id: str, body: bytes, *, now_us: int
    ) -> None:
        payload = _payload(Notice("messages", node_id))

        async def work(conn: Conn, retry: bool) -> None:
            # Retried: a message with this id (ids are unique) is the one the earlier attempt
            # left. The notice is sent again either way: a repeated notice costs a re-read.
            if not (retry and await _one(conn, sql.MESSAGE_REPLY, (message_id,))):
                await _execute(
                    conn, sql.INSERT_MESSAGE, (message_id, run_id, node_id, body, now_us)
                )
            await _notify(conn, payload)

        await self._write(message_id, work)

    async def take_messages(self, node_id: str) -> list[Message]:
        # Messages are marked taken with a token of this call (any nonzero `taken` means taken),
        # so a retry returns what an earlier attempt marked, which would otherwise be lost.
        token = 2 + secrets.randbelow(2**62)

        async def work(conn: Conn, retry: bool) -> list[Message]:
            if retry:
                await _execute(conn, sql.TAKE_MESSAGES_AS, (token, node_id))
                rows = await _all(conn, sql.MESSAGES_TAKEN_AS, (node_id, token))
            else:
                rows = await _all(conn, sql.TAKE_MESSAGES_AS, (token, node_id))
            return [Message(ident, run_id, bytes(body)) for ident, run_id, body in rows]

        return await self._write(node_id, work)

    async def reply_message(self, message_id: str, body: bytes) -> None:
        payload = _payload(Notice("replies", message_id))

        # Retried as it is: the same reply written again, and a repeated notice is harmless.
        async def work(conn: Conn, retry: bool) -> None:
            await _execute(conn, sql.REPLY_MESSAGE, (body, message_id))
            await _notify(conn, payload)

        await self._write(message_id, work)

    async def message_reply(self, message_id: str) -> bytes | None:
        async def work(conn: Conn) -> bytes | None:
            row = await _one(conn, sql.MESSAGE_REPLY, (message_id,))
            return None if row is None or row[0] is None else bytes(row[0])

        return await self._read(work)

    async def delete_message(self, message_id: str) -> None:
        # Retried as it is: a message already deleted is not there to delete.
        async def work(conn: Conn, retry: bool) -> None:
            await _execute(conn, sql.DELETE_MESSAGE, (message_id,))

        await self._write(message_id, work)

    # -- the package registry ----------------------------------------------------------------

    async def add_publisher(self, publisher: Publisher) -> None:
        params = sql.publisher_params(publisher)

        async def work(conn: Conn, retry: bool) -> None:
            cursor = await _execute(conn, sql.INSERT_PUBLISHER, params)
            if cursor.rowcount == 1:
                return
            row = await _one(conn, sql.PUBLISHER_BY_NAME, (publisher.name,))
            # Retried: a row holding exactly these values (the time included) is the one an
            # earlier attempt committed.
            if retry and row is not None and tuple(row) == params:
                return
            if row is not None:
                raise PublisherExists("name", publisher.name)
            raise PublisherExists("public_key", publisher.public_key)

        await self._write("publishers", work)

    async def publishers(self) -> list[Publisher]:
        async def work(conn: Conn) -> list[Publisher]:
            return [sql.publisher_of(row) for row in await _all(conn, sql.PUBLISHERS)]

        return await self._read(work)

    async def publisher_by_key(self, public_key: str) -> Publisher | None:
        async def work(conn: Conn) -> Publisher | None:
            row = await _one(conn, sql.PUBLISHER_BY_KEY, (public_key,))
            return sql.publisher_of(row) if row else None

        return await self._read(work)

    async def put_package(self, package: PackageRow) -> None:
        params = sql.package_params(package)

        async def work(conn: Conn, retry: bool) -> None:
            cursor = await _execute(conn, sql.INSERT_PACKAGE, params)
            if cursor.rowcount == 1:
                return
            # Retried: the very row an earlier attempt stored (its time included) is ours.
            if retry:
                row = await _one(conn, sql.PACKAGE_AT, (package.name, package.version))
                if row is not None and sql.package_of(row) == package:
                    return
            raise PackageExists(package.name, package.version)

        await self._write(f"package:{package.name}", work)

    async def package_versions(self, name: str) -> list[PackageRow]:
        async def work(conn: Conn) -> list[PackageRow]:
            return [sql.package_of(row) for row in await _all(conn, sql.PACKAGE_VERSIONS, (name,))]

        return await self._read(work)

    async def packages(self) -> list[PackageRow]:
        async def work(conn: Conn) -> list[PackageRow]:
            return [sql.package_of(row) for row in await _all(conn, sql.PACKAGES)]

        return await self._read(work)

    # -- notices -----------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[Notice], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Notice], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def _listen(self, conn: Conn | None) -> None:
        """Deliver every notice on the channel to the listeners, on a connection of its own;
        reconnect with backoff when it is lost (notices sent meanwhile are missed: listeners
        re-read on their keep-alive)."""
        delay = RETRY_FIRST_S
        try:
            while True:
                if conn is None:
                    try:
                        conn = await psycopg.AsyncConnection.connect(
                            self._url, autocommit=True, **self._params
                        )
                        await conn.execute(f"LISTEN {CHANNEL}")
                    except (psycopg.Error, OSError) as exc:
                        if conn is not None:
                            await conn.close()
                            conn = None
                        log.debug("LISTEN: cannot reconnect yet: %s", exc)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, RETRY_MAX_S)
                        continue
                    log.info("LISTEN: listening for notices again")
                    delay = RETRY_FIRST_S
                try:
                    async for notify in conn.notifies(timeout=LISTEN_IDLE_S):
                        self._dispatch(notify.payload)
                    # Quiet for a while: make sure the server is still there.
                    await conn.execute("SELECT 1")
                except (psycopg.Error, OSError) as exc:
                    log.warning("LISTEN: the connection was lost; reconnecting: %s", exc)
                    await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    def _dispatch(self, payload: str) -> None:
        notice = _parse_notice(payload)
        if notice is None:
            log.debug("ignoring a notice with an unknown payload %r", payload)
            return
        for listener in list(self._listeners):
            try:
                listener(notice)
            except Exception:
                log.exception("a notice listener failed")


# -- API keys -----------------------------------------------------------------------------------


class PostgresKeyStore:
    """API keys and request counters in the same PostgreSQL database, through the ledger store's
    writers and pool (as SQLite's key store borrows its ledger's)."""

    _ROUTE = "api_keys"

    def __init__(self, ledger: PostgresLedgerStore) -> None:
        self._ledger = ledger

    async def create(
        self, *, name: str, tenant: str, role: str, secret: str, rpm: int | None, source: str
    ) -> ApiKey:
        """Store a new key (its secret's hash only). A taken name raises `KeyNameTaken`."""
        assert source in KEY_SOURCES
        key = ApiKey(new_key_id(), name, tenant, role, rpm, source, now_text())
        digest = hash_secret(secret)

        async def work(conn: Conn, retry: bool) -> None:
            # Retried: a key with our new id is the one the earlier attempt stored.
            if retry and await _one(conn, sql.KEY_EXISTS, (key.key_id,)):
                return
            if await _one(conn, sql.KEY_NAME_TAKEN, (name,)):
                raise KeyNameTaken(name)
            if await _one(conn, sql.KEY_SECRET_TAKEN, (digest,)):
                # Only possible if a caller reuses a secret; never say which key holds it.
                raise StorageError("that secret is already used by another key")
            try:
                await _execute(
                    conn,
                    sql.INSERT_KEY,
                    (key.key_id, name, tenant, role, rpm, source, key.created_at, digest),
                )
            except pg_errors.UniqueViolation as exc:  # another node stored one meanwhile
                if await _one(conn, sql.KEY_NAME_TAKEN, (name,)) is None:
                    raise StorageError("that secret is already used by another key") from exc
                raise KeyNameTaken(name) from exc

        await self._ledger._write(self._ROUTE, work)
        return key

    async def seed(self, seeds: Sequence[KeySeed]) -> None:
        """Make the env-seeded keys exactly `seeds`, in one transaction (see `SqliteKeyStore.seed`).
        Nodes starting together seed one after the other. Retried as it is: seeding again makes
        the same keys (a key an earlier attempt inserted is found by name and kept)."""
        rows = [(s, hash_secret(s.secret)) for s in seeds]
        now = now_text()

        async def work(conn: Conn, retry: bool) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEED_LOCK,))
            names = {s.name for s, _ in rows}
            stale = [
                str(key_id) for key_id, name in await _all(conn, sql.ENV_KEYS) if name not in names
            ]
            for key_id in stale:
                await _execute(conn, sql.DELETE_KEY_USAGE, (key_id,))
                await _execute(conn, sql.DELETE_KEY, (key_id,))
            # Free every secret hash about to be assigned first, so two keys swapping secrets
            # (or a seed taking over a CLI key's secret) never trips the UNIQUE constraint midway.
            for seed, digest in rows:
                await _execute(conn, sql.FREE_SECRET, (digest, seed.name))
            for seed, digest in rows:
                found = await _one(conn, sql.KEY_BY_NAME, (seed.name,))
                if found:
                    await _execute(
                        conn,
                        sql.UPDATE_SEEDED_KEY,
                        (seed.tenant, seed.role, digest, seed.rpm, found[0]),
                    )
                else:
                    await _execute(
                        conn,
                        sql.INSERT_SEEDED_KEY,
                        (new_key_id(), seed.name, seed.tenant, seed.role, seed.rpm, now, digest),
                    )

        await self._ledger._write(self._ROUTE, work)

    async def by_secret_hashes(self) -> dict[str, ApiKey]:
        """Every key, by the hash of its secret: the gateway's lookup table."""

        async def work(conn: Conn) -> dict[str, ApiKey]:
            rows = await _all(conn, sql.KEYS_BY_SECRET)
            return {str(row[-1]): key_of(row[:-1]) for row in rows}

        return await self._ledger._read(work)

    async def find(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, if any."""
        digest = hash_secret(secret)

        async def work(conn: Conn) -> ApiKey | None:
            row = await _one(conn, sql.KEY_BY_SECRET, (digest,))
            return key_of(row) if row else None

        return await self._ledger._read(work)

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Keys ordered by name; all of them, or one tenant's."""

        async def work(conn: Conn) -> list[ApiKey]:
            if tenant is None:
                rows = await _all(conn, sql.ALL_KEYS)
            else:
                rows = await _all(conn, sql.TENANT_KEYS, (tenant,))
            return [key_of(row) for row in rows]

        return await self._ledger._read(work)

    async def add_requests(self, counts: Mapping[str, int]) -> None:
        """Add request counts (key id -> requests) to the stored counters, in one transaction.
        Counts for keys deleted meanwhile are dropped.

        Retried as it is: the one write that is not idempotent. Only a connection lost while
        the COMMIT was in flight can make the retry add a batch twice; counters are a report
        (rate limits are kept in memory), and over-counting one flush then is preferred to
        dropping counts whenever the database blinks."""
        items = [(key_id, n) for key_id, n in counts.items() if n > 0]
        if not items:
            return

        async def work(conn: Conn, retry: bool) -> None:
            for key_id, n in items:
                if await _one(conn, sql.KEY_EXISTS, (key_id,)):
                    await _execute(conn, sql.ADD_REQUESTS, (key_id, n))

        await self._ledger._write(self._ROUTE, work)

    async def requests(self) -> dict[str, int]:
        """Stored request counts by key id."""

        async def work(conn: Conn) -> dict[str, int]:
            return {str(key_id): int(n) for key_id, n in await _all(conn, sql.REQUESTS)}

        return await self._ledger._read(work)

    async def run_totals(self) -> dict[str, RunTotals]:
        """Runs created and their usage, by creating key id (see `SqliteKeyStore.run_totals`)."""

        async def work(conn: Conn) -> dict[str, RunTotals]:
            # SUM of BIGINT is NUMERIC: psycopg gives Decimal, made int here.
            return {
                str(row[0]): RunTotals(*(int(v or 0) for v in row[1:]))
                for row in await _all(conn, sql.POSTGRES_RUN_TOTALS)
            }

        return await self._ledger._read(work)


# -- helpers ------------------------------------------------------------------------------------


@functools.cache
def _pg(statement: str) -> str:
    """A statement of `_sql` with psycopg's placeholders (converted once per statement)."""
    return sql.postgres_placeholders(statement)


async def _execute(
    conn: Conn, statement: str, params: Sequence[Any] = ()
) -> psycopg.AsyncCursor[TupleRow]:
    return await conn.execute(_pg(statement), params)


async def _one(conn: Conn, statement: str, params: Sequence[Any] = ()) -> TupleRow | None:
    cursor = await _execute(conn, statement, params)
    return await cursor.fetchone()


async def _all(conn: Conn, statement: str, params: Sequence[Any] = ()) -> list[TupleRow]:
    cursor = await _execute(conn, statement, params)
    return await cursor.fetchall()


async def _nothing(conn: Conn) -> list[RunRecord]:
    return []


async def _insert_entries(conn: Conn, run_id: str, entries: Sequence[Entry]) -> None:
    try:
        async with conn.cursor() as cursor:
            await cursor.executemany(_pg(sql.INSERT_ENTRY), sql.entry_params(run_id, entries))
    except psycopg.IntegrityError as exc:
        raise SeqConflict(run_id, entries[0].seq) from exc


_NOTICES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "thymos_notices", default=None
)
"""The notices of the writer's job in progress: sent together with its group's last statement
(`_transact`), so a group of appends costs one `pg_notify` round trip, not one per job."""


async def _notify(conn: Conn, payload: str) -> None:
    """Send a notice with the current transaction: PostgreSQL delivers it when (and only if)
    the transaction commits. Inside a writer's group it is collected and sent once the job has
    succeeded (a job that fails sends none)."""
    pending = _NOTICES.get()
    if pending is not None:
        pending.append(payload)
        return
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _payload(notice: Notice) -> str:
    """`entries:<run id>:<seq>`, `messages:<node id>`, `replies:<message id>`."""
    if notice.topic == "entries":
        return f"entries:{notice.key}:{notice.seq}"
    return f"{notice.topic}:{notice.key}"


def _parse_notice(payload: str) -> Notice | None:
    topic, sep, rest = payload.partition(":")
    if not sep or not rest:
        return None
    if topic == "entries":
        key, sep, seq = rest.rpartition(":")
        try:
            return Notice(topic, key, int(seq)) if sep and key else None
        except ValueError:
            return None
    if topic in ("messages", "replies"):
        return Notice(topic, rest)
    return None


def _transient(exc: BaseException) -> bool:
    """True for a failure of the connection or the server rather than of the statement: the
    same work may succeed once the database is back."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        # Raised by the client: a lost connection, a pool that gave no connection in time.
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith(_TRANSIENT_STATES)


def _read_failed(exc: psycopg.Error) -> StorageError:
    return StorageError(f"a PostgreSQL read failed: {' '.join(str(exc).split())}")


def _describe(params: Mapping[str, Any]) -> str:
    """Which database a URL names: host, port and database, never the password."""
    host = params.get("host") or params.get("hostaddr") or "localhost (default socket)"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "(default)"
    user = params.get("user")
    as_user = f" as user {user!r}" if user else ""
    return f"{dbname!r} on {host}:{port}{as_user}"


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_PARAM_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def _scrub(text: str, password: str | None) -> str:
    """`text` without the password (drivers may echo the connection string they choke on)."""
    if password:
        text = text.replace(password, "***")
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _PARAM_PASSWORD.sub(r"\1***", text)


@dataclass(slots=True)
class _JobHeads:
    """Heads for the writer's job in progress: the group's (staged by earlier jobs of this
    transaction) over the store's committed ones; the job's own land in `job`, kept only if
    it succeeds."""

    group: dict[str, int]
    job: dict[str, int]

    def head(self, run_id: str, committed: Mapping[str, int]) -> int | None:
        found = self.group.get(run_id)
        return committed.get(run_id) if found is None else found


_HEADS: contextvars.ContextVar[_JobHeads | None] = contextvars.ContextVar(
    "thymos_heads", default=None
)
HEADS_KEPT = 100_000
"""Runs whose head the store remembers (forgotten all at once past this; they are asked again)."""


class _Isolate(Exception):
    """A job failed in a group run without savepoints: the transaction is rolled back and the
    group runs again with a savepoint per job (`failure` is the job's own error)."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__(str(failure))
        self.failure = failure


class _Transient(Exception):
    """A write attempt lost its connection or server (`error` says how); the group is retried.
    `xid` is set when the COMMIT was in flight (it may have landed, with `results`)."""

    def __init__(self, error: psycopg.Error, xid: str | None, results: _Results) -> None:
        super().__init__(str(error))
        self.error = error
        self.xid = xid
        self.results = results


def _retrieve(task: asyncio.Task[None]) -> None:
    """Consume a background task's outcome (a failed sweep needs no report)."""
    if not task.cancelled():
        task.exception()


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the write happened or not, the ledger says which
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
