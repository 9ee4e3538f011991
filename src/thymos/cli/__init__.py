"""The `thymos` command line: `serve`, `bench`, and (later) client commands."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from thymos import __version__
from thymos.settings import SettingsError, load_settings, parse_addr

from ._keys import keys_app
from ._package import package_app

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Thymos: a governed agent runtime."
)


@app.command("serve")
def serve_command(
    addr: Annotated[
        str | None, typer.Option(help="HOST:PORT to bind (THYMOS_ADDR; default 127.0.0.1:3001)")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the ledger lives (THYMOS_DATA_DIR; default ./.thymos)"),
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option(help="The folder file tools may read (THYMOS_WORKSPACE; default .)"),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow an open server on a non-loopback address")
    ] = False,
) -> None:
    """Run the Thymos server."""
    try:
        host = port = None
        if addr is not None:
            host, port = parse_addr(addr)
        settings = load_settings(
            host=host, port=port, data_dir=data_dir, workspace=workspace, insecure=insecure or None
        )
    except SettingsError as exc:
        typer.echo(f"thymos: {exc}", err=True)
        raise typer.Exit(2) from None
    from thymos.observability import configure_logging

    from ._logs import redact_logs

    # Records are redacted as they are made (whatever handler gets them), and every line is
    # redacted again as it is formatted (bound context, extra fields, tracebacks).
    redact_logs(settings.secret_values)
    configure_logging(
        log_format=settings.log_format, level=settings.log_level, secrets=settings.secret_values
    )
    from thymos.governance import PolicyError
    from thymos.storage import StorageUnusable
    from thymos.tools import ManifestError

    from ._serve import serve

    try:
        serve(settings)
    except SettingsError as exc:
        typer.echo(f"thymos: {exc}", err=True)
        raise typer.Exit(2) from None
    except PolicyError as exc:
        typer.echo(
            f"thymos: invalid policy {exc.file}:{exc.line}:{exc.column}: {exc.reason}", err=True
        )
        raise typer.Exit(2) from None
    except ManifestError as exc:
        typer.echo(f"thymos: invalid tool source {exc.file}: {exc.field}: {exc.reason}", err=True)
        raise typer.Exit(2) from None
    except StorageUnusable as exc:
        typer.echo(f"thymos: {exc.message}", err=True)
        raise typer.Exit(2) from None


class BenchBackend(StrEnum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


BENCH_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@app.command("bench")
def bench_command(
    entries: Annotated[
        int, typer.Option(help="Ledger length for the replay and flatness figures")
    ] = 100_000,
    runs: Annotated[int, typer.Option(help="End-to-end mock runs over HTTP")] = 400,
    clients: Annotated[int, typer.Option(help="Concurrent HTTP clients")] = 16,
    audit_entries: Annotated[
        int,
        typer.Option(help="Ledger length for the audit figures (listing, count, CSV); 0 skips"),
    ] = 1_000_000,
    backend: Annotated[
        BenchBackend,
        typer.Option(
            case_sensitive=False,
            help="sqlite: the default bench; postgres: PostgreSQL next to SQLite "
            "(storage appends, governance overhead, replay, HTTP runs on one and two nodes)",
        ),
    ] = BenchBackend.SQLITE,
    parked_runs: Annotated[
        int, typer.Option(help="Runs left waiting for approval (memory per parked run); 0 skips")
    ] = 10_000,
    subscribers: Annotated[
        int, typer.Option(help="SSE subscribers of one live run (delivery time); 0 skips")
    ] = 1000,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Every figure on small sizes (seconds, not minutes): proves the bench works; "
            "its figures are not the targets' measure",
        ),
    ] = False,
    postgres_url: Annotated[
        str | None,
        typer.Option(
            help="The PostgreSQL server for --backend postgres (the bench creates a database "
            f"there and drops it); default THYMOS_POSTGRES_URL, else {BENCH_POSTGRES_URL}",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Measure replay rate, governance overhead per intent and end-to-end runs per second
    (with --backend postgres: PostgreSQL next to SQLite, one and two nodes)."""
    if backend is BenchBackend.SQLITE:
        from thymos.bench import main as bench_main

        for name, value in (
            ("--audit-entries", audit_entries),
            ("--parked-runs", parked_runs),
            ("--subscribers", subscribers),
        ):
            if value < 0:
                typer.echo(f"thymos: {name} must be 0 or more", err=True)
                raise typer.Exit(2)
        if quick:
            bench_main(
                entries=2000,
                runs=20,
                clients=4,
                audit_entries=0,
                parked_runs=200,
                subscribers=20,
                full_sync_counts=(1, 4),
                sse_steps=5,
            )
            return
        bench_main(
            entries=entries,
            runs=runs,
            clients=clients,
            audit_entries=audit_entries,
            parked_runs=parked_runs,
            subscribers=subscribers,
            full_sync_counts=(1, 16, 64),
        )
        return
    for name, value, low in (
        ("--entries", entries, 1000),
        ("--runs", runs, 0),
        ("--clients", clients, 1),
    ):
        if value < low:
            typer.echo(f"thymos: {name} must be at least {low} with --backend postgres", err=True)
            raise typer.Exit(2)
    url = postgres_url or os.environ.get("THYMOS_POSTGRES_URL") or BENCH_POSTGRES_URL
    try:
        from thymos.bench._backends import BenchSetupError, check_url
        from thymos.bench._backends import main as backends_main
    except ImportError as exc:
        typer.echo(
            f"thymos: --backend postgres needs the PostgreSQL driver ({exc.name or exc}): "
            "install the postgres extra (pip install 'thymos[postgres]')",
            err=True,
        )
        raise typer.Exit(2) from None
    try:
        check_url(url)
        backends_main(entries=entries, runs=runs, clients=clients, postgres_url=url)
    except BenchSetupError as exc:
        typer.echo(f"thymos: {exc}", err=True)
        raise typer.Exit(2) from None


app.add_typer(keys_app, name="keys")
app.add_typer(package_app, name="package")


@app.command("providers")
def providers_command() -> None:
    """List the cognition providers, which is the default, and which are usable here."""
    from thymos.cognition import ProviderEnv

    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(f"thymos: {exc}", err=True)
        raise typer.Exit(2) from None
    env: ProviderEnv = settings.providers
    default = env.default_provider(settings.default_provider)
    for item in env.listing():
        mark = "*" if item["name"] == default else " "
        state = (
            "usable"
            if item["usable"]
            else "not in this build"
            if not item["available"]
            else f"needs {item['key_variable']}"
        )
        typer.echo(
            f"{mark} {item['name']:<11} {state:<28} {item['default_model'] or '-':<48} "
            f"{item['base_url'] or '-'}"
        )


@app.command("version")
def version_command() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
