"""What only the SQLite backend does (the contract every backend keeps is proved on all of them
by `tests/conformance`).

Its single writer thread groups concurrent submissions into shared transactions, each in its own
savepoint so that one conflict fails only its own caller; its migrations are recorded in
`schema_version` and applied once each.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conformance._chains import (
    TIME,
    Chain,
    append,
    create,
    expected_rows,
    rows_of,
    run_id_at,
    verifies,
)
from thymos.storage import RunUpdate, SeqConflict, SqliteLedgerStore
from thymos.storage._migrations import SQLITE_MIGRATIONS

# Other integration tests build chains with these helpers (they live with the conformance suite).
__all__ = ["Chain", "append", "create", "run_id_at"]


def _count_groups(store: SqliteLedgerStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group the writer runs from now on."""
    group_sizes: list[int] = []
    run_group = store._run_group

    def counting(conn: sqlite3.Connection, group: list[Any]) -> None:
        group_sizes.append(len(group))
        run_group(conn, group)

    monkeypatch.setattr(store, "_run_group", counting)
    return group_sizes


@pytest.mark.anyio
async def test_concurrent_appenders_on_different_runs_share_transactions(
    store: SqliteLedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many runs appending at once all land, each chain intact, and the writer groups
    submissions from different runs into shared transactions, running each exactly once."""
    group_sizes = _count_groups(store, monkeypatch)
    chains = [Chain(run_id_at(i)) for i in range(40)]
    await asyncio.gather(*(create(store, chain) for chain in chains))

    async def writer(chain: Chain, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(15):
            await append(store, chain, rng.randint(1, 3))

    await asyncio.gather(*(writer(chain, i) for i, chain in enumerate(chains)))
    for chain in chains:
        rows = await rows_of(store, chain.run_id)
        assert rows == expected_rows(chain)
        assert verifies(chain.run_id, rows)
    assert max(group_sizes) > 1, "concurrent appends should share transactions"
    assert sum(group_sizes) == 40 + 40 * 15, "every submission ran exactly once"
    assert len(group_sizes) < sum(group_sizes)


@pytest.mark.anyio
async def test_a_failing_append_does_not_fail_the_others_in_its_group(
    store: SqliteLedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one submission in a grouped transaction conflicts, only its caller gets SeqConflict;
    every other submission of the same transaction is committed."""
    chains = [Chain(run_id_at(i)) for i in range(8)]
    for chain in chains:
        await create(store, chain)
        await append(store, chain, 1)
    group_sizes = _count_groups(store, monkeypatch)

    # Hold the writer thread inside a job so that every append below queues up behind it and
    # is taken as one group.
    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    holder = asyncio.ensure_future(store._write(hold))
    await asyncio.to_thread(started.wait, 10)

    async def good(chain: Chain) -> None:
        await append(store, chain, 2)

    bad_chain = chains[3]
    stale = [bad_chain.entries[1]]  # seq 1 is taken: this submission conflicts
    bad = asyncio.ensure_future(
        store.append(bad_chain.run_id, stale, RunUpdate("failed", TIME, {"bad": True}))
    )
    goods = [asyncio.ensure_future(good(c)) for c in chains if c is not bad_chain]
    while store._queue.qsize() < len(chains):  # noqa: ASYNC110 - the queue has no async signal
        await asyncio.sleep(0.001)
    release.set()
    await holder
    results = await asyncio.gather(bad, *goods, return_exceptions=True)
    assert isinstance(results[0], SeqConflict)
    assert all(result is None for result in results[1:]), results
    assert group_sizes and group_sizes[-1] == len(chains)
    for chain in chains:
        assert await rows_of(store, chain.run_id) == expected_rows(chain)
    record = await store.get_run(bad_chain.run_id)
    assert record is not None
    assert record.status == "running"


@pytest.mark.anyio
async def test_reopening_applies_each_migration_once(tmp_path: Path, anyio_backend: str) -> None:
    """Every migration is recorded in `schema_version` once: opening the file again (data in
    it) applies none of them twice."""
    path = tmp_path / "ledger.sqlite3"
    for _ in range(2):
        store = SqliteLedgerStore(path)
        await store.open()
        chain = Chain(run_id_at(len(await store.runs_with_status(["running"]))))
        await create(store, chain)
        await store.close()
    with sqlite3.connect(path) as conn:
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
        runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()
    conn.close()
    assert versions == [(v,) for v in range(1, len(SQLITE_MIGRATIONS) + 1)]
    assert runs == (2,)
