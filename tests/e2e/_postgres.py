"""A fresh PostgreSQL database for a black-box test, on the server `THYMOS_TEST_POSTGRES_URL`
names (`.ci/run` sets it). Without it the test is skipped on a developer's machine and fails
under `CI=true`: a skipped test never stands in for a feature in CI."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

URL_VARIABLE = "THYMOS_TEST_POSTGRES_URL"


def server_url() -> str:
    url = os.environ.get(URL_VARIABLE)
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(f"{URL_VARIABLE} is not set: .ci/run creates a database and sets it")
    pytest.skip(f"set {URL_VARIABLE}=postgresql://postgres@127.0.0.1:5432/postgres to run this")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def fresh_database() -> Iterator[str]:
    """A new empty database (its URL), dropped afterwards even if servers still hold it."""
    admin = server_url()
    name = f"thymos_e2e_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_connections(url: str) -> int:
    """End every other connection to the database of `url` (as a failover or an operator
    would); how many were ended."""
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return sum(1 for (ended,) in rows if ended)
