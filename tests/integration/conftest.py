"""Fixtures for the integration tier: a real SQLite ledger in a temporary folder and a Runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from thymos.runtime import Runtime, RuntimeConfig
from thymos.storage import SqliteLedgerStore
from thymos.tools import builtin_tools


@pytest.fixture
async def store(tmp_path: Path, anyio_backend: str) -> AsyncIterator[SqliteLedgerStore]:
    """An open SqliteLedgerStore on a file of its own (tests never share a database)."""
    ledger = SqliteLedgerStore(tmp_path / "ledger.sqlite3")
    await ledger.open()
    try:
        yield ledger
    finally:
        await ledger.close()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "workspace"
    folder.mkdir()
    (folder / "README.md").write_text("# Demo\n\nA workspace for tests.\n")
    return folder


@pytest.fixture
async def runtime(store: SqliteLedgerStore, workspace: Path) -> AsyncIterator[Runtime]:
    """A Runtime over the test's store with the built-in tools; shut down after the test."""
    service = Runtime(store=store, tools=builtin_tools(), config=RuntimeConfig(workspace=workspace))
    try:
        yield service
    finally:
        if not service.closed.is_set():
            await service.shutdown(5.0)
