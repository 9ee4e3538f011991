"""Fixtures of the storage conformance suite: every test runs once per backend.

`place` is where a test's data lives, parametrized over the backends: a SQLite file of the
test's own, or a PostgreSQL schema of the test's own (`CREATE SCHEMA t_<random>` in the database
`THYMOS_TEST_POSTGRES_URL` names, reached with `options=-csearch_path=t_<random>` so migrations
and tables land in it; dropped after the test). `place.new()` makes another `Storage` on the same
data; `storage` is one opened on it and `other_storage` a second one (another node on the same
store), each closed after the test.

Without `THYMOS_TEST_POSTGRES_URL` the PostgreSQL tests are skipped on a developer's machine and
FAIL in CI (`CI=true`): a skipped test never stands in for a feature there.

A test marked `@pytest.mark.shared_only` runs only on the backends several servers share
(`Storage.shared`), for the behaviour only they have (notices across instances).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import quote

import pytest

from thymos.storage import Storage, sqlite_storage

POSTGRES_URL_VARIABLE = "THYMOS_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgres")
SHARED_BACKENDS = ("postgres",)


@dataclass(frozen=True)
class Place:
    """Where one test's data lives, on one backend."""

    backend: str
    new: Callable[[], Storage]
    """A new (unopened) Storage on this data; each call is another instance, like another node."""
    sqlite_path: Path | None = None
    postgres_url: str | None = None
    """The URL a plain connection uses to reach this test's schema (search_path set)."""
    postgres_schema: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shared_only: run only on backends several servers share (Storage.shared)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "place" in metafunc.fixturenames:
        shared_only = metafunc.definition.get_closest_marker("shared_only") is not None
        backends = SHARED_BACKENDS if shared_only else BACKENDS
        metafunc.parametrize("place", backends, indirect=True)


def _postgres_storage(url: str) -> Storage:
    """`thymos.storage._postgres.postgres_storage`, imported when a PostgreSQL test runs (so the
    SQLite half of the suite needs neither the module nor its driver)."""
    from thymos.storage._postgres import postgres_storage

    return postgres_storage(url)


def _with_search_path(url: str, schema: str) -> str:
    """`url` with libpq's `options` set so every connection's search_path is `schema`."""
    option = quote(f"-csearch_path={schema}", safe="")
    return f"{url}{'&' if '?' in url else '?'}options={option}"


def _postgres_url_or_stop() -> str:
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{POSTGRES_URL_VARIABLE} is not set: CI must run the storage conformance suite on "
            "PostgreSQL (.ci/run creates a fresh database and sets it)",
            pytrace=False,
        )
    pytest.skip(
        f"PostgreSQL conformance needs a database: run with "
        f"{POSTGRES_URL_VARIABLE}=postgresql://postgres@127.0.0.1:5432/<db> (or use .ci/run)"
    )


@pytest.fixture
def sqlite_place(tmp_path: Path) -> Place:
    path = tmp_path / "conformance.sqlite3"
    return Place("sqlite", lambda: sqlite_storage(path), sqlite_path=path)


@pytest.fixture
def postgres_place() -> Iterator[Place]:
    import psycopg

    base = _postgres_url_or_stop()
    schema = f"t_{secrets.token_hex(8)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = _with_search_path(base, schema)
    try:
        yield Place(
            "postgres",
            lambda: _postgres_storage(url),
            postgres_url=url,
            postgres_schema=schema,
        )
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            # A test that left a connection in a transaction must not hang the drop forever.
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def place(request: pytest.FixtureRequest) -> Place:
    """This test's data on the backend of its parameter (see `pytest_generate_tests`)."""
    backend = cast(str, request.param)
    return cast(Place, request.getfixturevalue(f"{backend}_place"))


@pytest.fixture
async def storage(place: Place, anyio_backend: str) -> AsyncIterator[Storage]:
    """An opened Storage on this test's data; closed after the test."""
    opened = place.new()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def other_storage(place: Place, storage: Storage) -> AsyncIterator[Storage]:
    """A second opened Storage on the same data as `storage`: another node on the same store."""
    opened = place.new()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
