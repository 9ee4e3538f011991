"""The app factory: everything is built here and opened in the lifespan, nothing at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from thymos import __version__
from thymos.observability import AccessLog, Observer, start_tracing, tracing_installed
from thymos.runtime import ClusterConfig, Runtime, RuntimeConfig
from thymos.settings import Settings, SettingsError
from thymos.storage import KeySeed, Storage, StorageError, StorageUnusable, storage_for
from thymos.tools import McpHub, Sandbox, Workspace

from . import _errors, _openapi
from ._auth import Gateway
from ._guard import GuardPolicy, RequestGuard
from ._limits import BodyLimit
from ._routes_audit import router as audit_router
from ._routes_authority import router as authority_router
from ._routes_marketplace import router as marketplace_router
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


def open_storage(settings: Settings) -> Storage:
    """PostgreSQL when `THYMOS_POSTGRES_URL` is set, else the SQLite file; `StorageUnusable`
    when the URL is set but the extra is not installed (never a silent fallback)."""
    return storage_for(
        postgres_url=settings.postgres_url,
        sqlite_path=settings.sqlite_path,
        sqlite_synchronous=settings.sqlite_synchronous,
    )


async def check_storage(settings: Settings) -> None:
    """Open the configured storage once before serving (connect, migrate) and check the
    server's exposure against the keys it holds: `StorageUnusable` or `SettingsError` say
    what is wrong before anything listens."""
    storage = open_storage(settings)
    try:
        await storage.open()
    except StorageUnusable:
        raise
    except StorageError as exc:
        raise StorageUnusable(
            f"the {storage.backend} ledger cannot be opened: {exc.message}"
        ) from exc
    try:
        if storage.shared:
            check_exposure(settings, stored_keys=len(await storage.keys.list_keys()))
    finally:
        await storage.close()


def create_app(settings: Settings) -> FastAPI:
    """Build the app. Raises `SettingsError` or `PolicyError` (before anything listens) when the
    root key or the policy set cannot be loaded."""
    storage = open_storage(settings)
    if not storage.shared:
        # A shared database's keys are counted once it is open (`check_storage`).
        check_exposure(settings)
    warn_about_workspace(settings)
    root = load_root_key(settings)
    policy = load_policy(settings)
    tools = load_tools(settings)
    mcp_servers = load_mcp(settings)
    if settings.otel_endpoint is not None and not tracing_installed():
        raise SettingsError(
            "THYMOS_OTEL_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT) is set but the otel extra is "
            "not installed: pip install 'thymos[otel]'"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await storage.open()
        store = storage.ledger
        if storage.shared:
            check_exposure(settings, stored_keys=len(await storage.keys.list_keys()))
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
        # Tracing (the `otel` extra) is loaded only when an endpoint is configured.
        tracer = (
            None
            if settings.otel_endpoint is None
            else start_tracing(settings.otel_endpoint, version=__version__, node=settings.node)
        )
        runtime = Runtime(
            observer=Observer(tracer=tracer),
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
                max_steps_max=settings.max_steps_max,
                script_elements_max=settings.script_elements_max,
                subscribers_per_run_max=settings.subscribers_per_run_max,
                sandbox=settings.sandbox,
                auto_resume=settings.auto_resume,
                max_delegation_depth=settings.max_delegation_depth,
                secrets=settings.secret_values,
            ),
            root=root,
            policy=policy,
            mcp=mcp,
            cluster=ClusterConfig(
                node_id=settings.node, lease_ttl_s=settings.lease_ttl_s, shared=storage.shared
            ),
        )
        recovered = await runtime.recover()
        if recovered:
            log.info("recorded %d runs interrupted by the previous stop", recovered)
        app.state.runtime = runtime
        # API keys live beside the ledger: every backend has a key store.
        gateway = Gateway(storage.keys)
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
            await storage.close()
            if tracer is not None:
                # Exports what is buffered; the exporter's own timeouts bound the wait.
                await asyncio.to_thread(tracer.shutdown)

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
    app.add_middleware(BodyLimit, limit=settings.body_bytes_max)
    # Added last, so it runs first: nothing reads a body before the request is known acceptable.
    app.add_middleware(
        RequestGuard,
        policy=GuardPolicy.build(
            bind_host=settings.host,
            allowed_hosts=settings.allowed_hosts,
            cors_origins=settings.cors_origins,
        ),
    )
    # Outermost: one access-log line for every request the app sees, refused ones included.
    app.add_middleware(AccessLog)
    app.include_router(meta_router)
    app.include_router(runs_router)
    app.include_router(streams_router)
    app.include_router(authority_router)
    app.include_router(usage_router)
    app.include_router(audit_router)
    app.include_router(marketplace_router)
    _openapi.install(app)
    return app
