"""The backends' migrations are kept in step: as many of them for each dialect, and once each
backend has opened (and so migrated) a fresh store, the same tables with the same column names.

The one test of the suite that reads schema metadata directly (`sqlite_master` and `pragma
table_info`, PostgreSQL's `information_schema`), through a plain connection."""

from __future__ import annotations

import sqlite3

import pytest

from thymos.storage._migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS

from .conftest import Place


async def _migrated(place: Place) -> None:
    storage = place.new()
    await storage.open()
    await storage.close()


def _sqlite_columns(place: Place) -> dict[str, set[str]]:
    assert place.sqlite_path is not None
    with sqlite3.connect(place.sqlite_path) as conn:
        tables = [
            str(name)
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        columns = {
            table: {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}
            for table in tables
        }
    conn.close()
    return columns


def _postgres_columns(place: Place) -> dict[str, set[str]]:
    import psycopg

    assert place.postgres_url is not None
    columns: dict[str, set[str]] = {}
    with psycopg.connect(place.postgres_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = %s",
            (place.postgres_schema,),
        ).fetchall()
    for table, column in rows:
        columns.setdefault(str(table), set()).add(str(column))
    return columns


def test_both_dialects_have_as_many_migrations() -> None:
    """Every migration is written for both dialects: the lists are the same length."""
    assert len(POSTGRES_MIGRATIONS) == len(SQLITE_MIGRATIONS)


@pytest.mark.anyio
async def test_both_backends_migrate_to_the_same_tables_and_columns(
    sqlite_place: Place, postgres_place: Place, anyio_backend: str
) -> None:
    """After opening a fresh store on each backend, both hold the same tables, each with the
    same column names."""
    await _migrated(sqlite_place)
    await _migrated(postgres_place)
    sqlite_columns = _sqlite_columns(sqlite_place)
    postgres_columns = _postgres_columns(postgres_place)
    assert "entries" in sqlite_columns
    assert sorted(postgres_columns) == sorted(sqlite_columns)
    for table, columns in sqlite_columns.items():
        assert postgres_columns[table] == columns, table
