"""The app factory: everything is built here and opened in the lifespan, nothing at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from thymos import __version__
from thymos.runtime import Runtime, RuntimeConfig
from thymos.settings import Settings
from thymos.storage import KeySeed, LedgerStore, SqliteKeyStore, SqliteLedgerStore
from thymos.tools import builtin_tools

from . import _errors
from ._auth import Gateway
from ._body import schema_components
from ._limits import BodyLimit
from ._models import ApprovalBody, CreateRunBody, RevokeBody
from ._routes_authority import router as authority_router
from ._routes_meta import router as meta_router
from ._routes_runs import router as runs_router
from ._routes_streams import router as streams_router
from ._routes_usage import router as usage_router
from ._setup import check_exposure, load_policy, load_root_key

log = logging.getLogger("thymos.api")


def open_store(settings: Settings) -> LedgerStore:
    if settings.postgres_url:
        log.warning(
            "THYMOS_POSTGRES_URL is set but this build has no PostgreSQL backend; using SQLite"
        )
    return SqliteLedgerStore(settings.sqlite_path, synchronous=settings.sqlite_synchronous)


def create_app(settings: Settings) -> FastAPI:
    """Build the app. Raises `SettingsError` or `PolicyError` (before anything listens) when the
    root key or the policy set cannot be loaded."""
    check_exposure(settings)
    root = load_root_key(settings)
    policy = load_policy(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        await store.open()
        runtime = Runtime(
            store=store,
            tools=builtin_tools(),
            config=RuntimeConfig(
                workspace=settings.workspace,
                mode=settings.mode,
                default_provider=settings.default_provider,
            ),
            root=root,
            policy=policy,
        )
        recovered = await runtime.recover()
        if recovered:
            log.info("recorded %d runs interrupted by the previous stop", recovered)
        app.state.runtime = runtime
        # API keys live beside the ledger; a backend without a key store serves an open server.
        gateway = Gateway(SqliteKeyStore(store) if isinstance(store, SqliteLedgerStore) else None)
        await gateway.start(
            tuple(KeySeed(k.name, k.tenant, k.role, k.secret, k.rpm) for k in settings.api_keys)
        )
        app.state.gateway = gateway
        try:
            yield
        finally:
            if not runtime.closed.is_set():
                await runtime.shutdown(settings.shutdown_grace_s)
            await gateway.stop()
            await store.close()

    app = FastAPI(
        title="Thymos",
        version=__version__,
        summary="A governed agent runtime: cognition proposes, the runtime governs, the ledger records.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    _errors.install(app)
    app.add_middleware(BodyLimit)
    app.include_router(meta_router)
    app.include_router(runs_router)
    app.include_router(streams_router)
    app.include_router(authority_router)
    app.include_router(usage_router)
    _add_body_schemas(app)
    return app


def _add_body_schemas(app: FastAPI) -> None:
    """Bodies are parsed by `parse_body`, so their schemas are added to the document here."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(
                schema_components(CreateRunBody, ApprovalBody, RevokeBody)
            )
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
