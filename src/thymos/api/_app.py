"""The app factory: everything is built here and opened in the lifespan, nothing at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from thymos import __version__
from thymos.runtime import Runtime, RuntimeConfig
from thymos.settings import Settings
from thymos.storage import KeySeed, LedgerStore, SqliteKeyStore, SqliteLedgerStore
from thymos.tools import McpHub, Sandbox, Workspace

from . import _errors, _openapi
from ._auth import Gateway
from ._guard import GuardPolicy, RequestGuard
from ._limits import BodyLimit
from ._routes_authority import router as authority_router
from ._routes_meta import router as meta_router
from ._routes_runs import router as runs_router
from ._routes_streams import router as streams_router
from ._routes_usage import router as usage_router
from ._setup import (
    check_exposure,
    load_mcp,
    load_policy,
    load_root_key,
    load_tools,
    warn_about_workspace,
)

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
    warn_about_workspace(settings)
    root = load_root_key(settings)
    policy = load_policy(settings)
    tools = load_tools(settings)
    mcp_servers = load_mcp(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        await store.open()
        # MCP servers start first: their tools are registered before runs can scope them.
        mcp = None
        if mcp_servers:
            sandbox = Sandbox(Workspace.of(settings.workspace, settings.protected_paths))
            await sandbox.probe()
            mcp = McpHub(mcp_servers, sandbox)
            for tool in await mcp.start():
                if tools.get(tool.spec.name) is not None:
                    log.error(
                        "MCP tool %s is already a tool's name: not registered", tool.spec.name
                    )
                    continue
                tools.register(tool)
        runtime = Runtime(
            store=store,
            tools=tools,
            config=RuntimeConfig(
                workspace=settings.workspace,
                mode=settings.mode,
                default_provider=settings.providers.default_provider(settings.default_provider),
                providers=settings.providers,
                prices=settings.prices,
                protected=settings.protected_paths,
                runs_active_max=settings.runs_active_max,
                sandbox=settings.sandbox,
                auto_resume=settings.auto_resume,
                max_delegation_depth=settings.max_delegation_depth,
                secrets=settings.secret_values,
            ),
            root=root,
            policy=policy,
            mcp=mcp,
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
            if mcp is not None:
                await mcp.stop()
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
    # Added last, so it runs first: nothing reads a body before the request is known acceptable.
    app.add_middleware(
        RequestGuard,
        policy=GuardPolicy.build(
            bind_host=settings.host,
            allowed_hosts=settings.allowed_hosts,
            cors_origins=settings.cors_origins,
        ),
    )
    app.include_router(meta_router)
    app.include_router(runs_router)
    app.include_router(streams_router)
    app.include_router(authority_router)
    app.include_router(usage_router)
    _openapi.install(app)
    return app
