"""`thymos keys create|list`: manage API keys in the server's storage: the PostgreSQL database
of `THYMOS_POSTGRES_URL` when it is set (every node of a cluster sees them), else the ledger
database of a data dir.

Data (the new secret, the key list) goes to stdout; messages go to stderr. A secret is shown
once, at creation, and is never stored: the database keeps only its hash.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from thymos.settings import KEY_NAME, KEY_ROLES, KEY_RPM_MAX, Settings
from thymos.storage import ApiKey, KeyNameTaken, KeyStore, StorageError, storage_for

T = TypeVar("T")

keys_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Manage API keys (stored hashed)."
)

SECRET_PREFIX = "thy_"
SECRET_BYTES = 30
"""240 random bits, 40 URL-safe base64 characters: far beyond guessing, so a fast hash is safe."""

DataDirOption = Annotated[
    Path | None,
    typer.Option(help="Where the ledger lives (THYMOS_DATA_DIR; default ./.thymos)"),
]


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def _data_dir(option: Path | None) -> Path:
    if option is not None:
        return option
    # The CLI is the edge: it may read the environment, like `load_settings` does for serve.
    from_env = os.environ.get("THYMOS_DATA_DIR")
    return Path(from_env) if from_env else Settings().data_dir


def _fail(message: str) -> typer.Exit:
    typer.echo(f"thymos: {message}", err=True)
    return typer.Exit(2)


async def _with_keys(data_dir: Path, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    storage = storage_for(
        postgres_url=os.environ.get("THYMOS_POSTGRES_URL") or None,
        sqlite_path=Settings(data_dir=data_dir).sqlite_path,
    )
    await storage.open()
    try:
        return await work(storage.keys)
    finally:
        await storage.close()


@keys_app.command("create")
def create_command(
    name: Annotated[str, typer.Option(help="A unique name for the key")],
    tenant: Annotated[str, typer.Option(help="The tenant whose runs the key sees")],
    role: Annotated[str, typer.Option(help="admin, operator or viewer")],
    rpm: Annotated[
        int | None, typer.Option(help="Requests per minute allowed (default: unlimited)")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create an API key and print its secret once (it cannot be shown again)."""
    if not KEY_NAME.fullmatch(name):
        raise _fail("--name must be 1-64 letters, digits, '.', '_' or '-'")
    if not KEY_NAME.fullmatch(tenant):
        raise _fail("--tenant must be 1-64 letters, digits, '.', '_' or '-'")
    if role not in KEY_ROLES:
        raise _fail(f"--role must be one of {', '.join(KEY_ROLES)}")
    if rpm is not None and not 1 <= rpm <= KEY_RPM_MAX:
        raise _fail(f"--rpm must be from 1 to {KEY_RPM_MAX}")
    secret = new_secret()

    async def work(keys: KeyStore) -> ApiKey:
        return await keys.create(
            name=name, tenant=tenant, role=role, secret=secret, rpm=rpm, source="cli"
        )

    try:
        key = asyncio.run(_with_keys(_data_dir(data_dir), work))
    except KeyNameTaken:
        raise _fail(f"an API key named {name!r} already exists") from None
    except StorageError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"created key {key.name!r} (tenant {key.tenant}, role {key.role}); "
        "store the secret now, it is not shown again",
        err=True,
    )
    typer.echo(secret)


@keys_app.command("list")
def list_command(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """List API keys: name, tenant, role, rate limit (never secrets or hashes)."""

    async def work(keys: KeyStore) -> list[ApiKey]:
        return await keys.list_keys(tenant)

    where = _data_dir(data_dir)
    if not Settings(data_dir=where).sqlite_path.exists():
        raise _fail(f"there is no Thymos ledger in {str(where)!r}")
    try:
        found = asyncio.run(_with_keys(where, work))
    except StorageError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        rows = [
            {
                "name": k.name,
                "tenant": k.tenant,
                "role": k.role,
                "rpm": k.rpm,
                "source": k.source,
                "created_at": k.created_at,
            }
            for k in found
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not found:
        typer.echo("no API keys (the server is open)", err=True)
        return
    header = ("NAME", "TENANT", "ROLE", "RPM", "SOURCE", "CREATED")
    table = [header] + [
        (k.name, k.tenant, k.role, "-" if k.rpm is None else str(k.rpm), k.source, k.created_at)
        for k in found
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        typer.echo(line.rstrip())
