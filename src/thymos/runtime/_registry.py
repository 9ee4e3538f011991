"""Each tenant's registry ledger, and the tools and policies it makes available to its runs.

A tenant's registry ledger records what its keys did in the marketplace, each entry naming the
key: a publisher trusted, a package published, a tool package installed or uninstalled, a
policy package activated or deactivated (`RegistryKind`). It is stored as a run's ledger is
(under `registry_ledger_id(tenant)`, its row marked `REGISTRY_STATUS`), so it chains, verifies
and shows in `/audit/entries` like one, but it is never listed or driven as a run.

The ledger is also the state: folding it gives the packages the tenant has installed and the
policy packages it has activated (`RegistryState`). `TenantViews` turns that state into what a
run of the tenant sees, a `TenantView`: the server's tools plus the installed packages' tools
(as a `ToolRegistry` and its `ToolCatalog`), and the server's policy set plus the activated
packages' policies (one `PolicySet`). A tenant with nothing installed shares the server's view.
Every view's policy set and catalog are stored as documents before any decision can name them,
so replay re-runs a decision against exactly the set and catalog it was made under.

A change is checked before it is recorded: the candidate view is built first (tools whose names
are free, a policy set that validates, an MCP server that starts and lists its tools), so a
refused install leaves no entry and changes nothing. Another node's change is read from the
ledger when a run of the tenant starts, and whenever this node learns of new entries in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy
import orjson

from thymos.core import (
    CorruptEntry,
    Entry,
    ErrorCode,
    RegistryKind,
    RunSpec,
    ThymosError,
    parse_envelope,
    registry_ledger_id,
    rfc3339_from_us,
    seal,
)
from thymos.governance import (
    PACKAGE_POLICY_PREFIX,
    PolicyError,
    PolicyFile,
    PolicySet,
    ToolCatalog,
)
from thymos.storage import (
    REGISTRY_STATUS,
    ClusterStore,
    Notice,
    PackageRow,
    RunRecord,
    SeqConflict,
)
from thymos.tools import (
    HttpFetch,
    ManifestError,
    ManifestTool,
    McpServer,
    McpServerConfig,
    McpTool,
    Sandbox,
    Tool,
    ToolRegistry,
    parse_manifest,
    parse_mcp_server,
)

from ._clock import Clock

log = logging.getLogger("thymos.runtime")

MCP_INSTALL_TIMEOUT_S = 20.0
"""How long an install waits for a package's MCP server to start and list its tools."""
_RECORD_ATTEMPTS = 8
"""Appends tried when other nodes keep taking the ledger's next seq first."""
_SOURCE = Path("(package content)")


@dataclass(frozen=True, slots=True)
class Installed:
    """A tool package the tenant installed: which version, its content hash, and its tools."""

    name: str
    version: str
    kind: str
    content_hash: str
    tools: tuple[str, ...]
    by: Mapping[str, Any]
    at: str

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "content_hash": self.content_hash,
            "tools": list(self.tools),
            "installed_by": dict(self.by),
            "installed_at": self.at,
        }


@dataclass(frozen=True, slots=True)
class Activated:
    """A policy package the tenant activated: which version, its content hash, its policy ids."""

    name: str
    version: str
    content_hash: str
    policies: tuple[str, ...]
    by: Mapping[str, Any]
    at: str

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": "policy",
            "content_hash": self.content_hash,
            "policies": list(self.policies),
            "activated_by": dict(self.by),
            "activated_at": self.at,
        }


@dataclass(slots=True)
class RegistryState:
    """The fold of one tenant's registry ledger."""

    head_seq: int = -1
    head_id: str | None = None
    installed: dict[str, Installed] = field(default_factory=dict)
    activated: dict[str, Activated] = field(default_factory=dict)

    def fold(self, entry: Entry) -> None:
        body = entry.body
        match entry.kind:
            case RegistryKind.PACKAGE_INSTALLED:
                self.installed[body["name"]] = Installed(
                    body["name"],
                    body["version"],
                    body["kind"],
                    body["content_hash"],
                    tuple(body["tools"]),
                    body["by"],
                    entry.time,
                )
            case RegistryKind.PACKAGE_UNINSTALLED:
                self.installed.pop(body["name"], None)
            case RegistryKind.POLICY_ACTIVATED:
                self.activated[body["name"]] = Activated(
                    body["name"],
                    body["version"],
                    body["content_hash"],
                    tuple(body["policies"]),
                    body["by"],
                    entry.time,
                )
            case RegistryKind.POLICY_DEACTIVATED:
                self.activated.pop(body["name"], None)
            case _:
                pass  # trusted publishers and publishes change no tenant's tools or policies
        self.head_seq, self.head_id = entry.seq, entry.id

    def copy(self) -> RegistryState:
        return RegistryState(
            self.head_seq, self.head_id, dict(self.installed), dict(self.activated)
        )


@dataclass(frozen=True, slots=True)
class TenantView:
    """What a tenant's runs may use: tools (the registry and its catalog) and the policy set."""

    tools: ToolRegistry
    catalog: ToolCatalog
    policy: PolicySet


def run_entities(view: TenantView, run_id: str, spec: RunSpec) -> cedarpy.Entities:
    """The Cedar entities of a run under a view: the run, its tenant, and every tool the view
    holds."""
    tools = [s for s in (view.catalog.get(n) for n in view.catalog.names()) if s is not None]
    return view.policy.entities(run_id=run_id, tenant=spec.tenant, task=spec.task, tools=tools)


def policy_file(package: PackageRow) -> PolicyFile:
    """An activated policy package as a file of the policy set."""
    cedar = orjson.loads(package.content)["cedar"]
    return PolicyFile(f"{PACKAGE_POLICY_PREFIX}{package.name}@{package.version}", cedar)


def _conflict(code: ErrorCode, message: str, **details: Any) -> ThymosError:
    return ThymosError(code, message, details)


class TenantViews:
    """Every tenant's registry state and view on this node; records registry entries."""

    def __init__(
        self,
        store: ClusterStore,
        clock: Clock,
        *,
        tools: ToolRegistry,
        policy: PolicySet,
        sandbox: Sandbox,
        keep: Any,
        shared: bool = False,
    ) -> None:
        self._store = store
        self._shared = shared
        """Other nodes write this storage too: a tenant's ledger is re-read before it is used
        (on storage only this process writes, what it recorded is all there is)."""
        self._clock = clock
        self._sandbox = sandbox
        self._keep = keep
        """`async (policy, catalog) -> None`: store a view's documents by hash."""
        self.base = TenantView(tools, ToolCatalog(tools.specs()), policy)
        self._states: dict[str, RegistryState] = {}
        self._views: dict[str, TenantView] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._servers: dict[tuple[str, str, str], McpServer] = {}
        """Started MCP servers of installed packages, by (tenant, package, content hash)."""
        http = tools.get("http_fetch")
        self._http = http if isinstance(http, HttpFetch) else None
        self._ledgers: dict[str, str] = {}
        """Tenant by registry ledger id, for the tenants this node has read."""
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Follow other nodes' registry entries: a notice of one re-reads its tenant's ledger
        (a lost notice delays it until the tenant's next run starts here)."""
        self._store.add_listener(self._on_notice)

    def _on_notice(self, notice: Notice) -> None:
        tenant = self._ledgers.get(notice.key) if notice.topic == "entries" else None
        if tenant is None:
            return
        task = asyncio.get_running_loop().create_task(self._refresh_quietly(tenant))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_quietly(self, tenant: str) -> None:
        try:
            await self.refresh(tenant)
        except Exception:
            log.exception("tenant %s's registry ledger could not be read", tenant)

    def current(self, tenant: str) -> TenantView:
        """The tenant's view as this node last read it (no IO: every decision asks)."""
        return self._views.get(tenant, self.base)

    def state(self, tenant: str) -> RegistryState:
        return self._states.get(tenant) or RegistryState()

    def _lock(self, tenant: str) -> asyncio.Lock:
        self._ledgers.setdefault(registry_ledger_id(tenant), tenant)
        return self._locks.setdefault(tenant, asyncio.Lock())

    async def view(self, tenant: str) -> TenantView:
        """The tenant's view with every registry entry stored so far (one indexed read when
        nothing changed; none on storage only this process writes, once read): what a run about
        to start uses."""
        if not self._shared and tenant in self._states:
            return self.current(tenant)
        async with self._lock(tenant):
            await self._refresh(tenant)
            return self.current(tenant)

    async def refresh(self, tenant: str) -> None:
        """Read entries another node recorded (called when this node learns of them)."""
        async with self._lock(tenant):
            await self._refresh(tenant)

    async def _refresh(self, tenant: str) -> None:
        state = self._states.get(tenant)
        folded = RegistryState() if state is None else state.copy()
        ledger = registry_ledger_id(tenant)
        while True:
            rows = await self._store.read_rows(ledger, after_seq=folded.head_seq, limit=500)
            for row in rows:
                try:
                    folded.fold(parse_envelope(row.raw, run_id=ledger, seq=row.seq))
                except (CorruptEntry, KeyError, TypeError, ValueError):
                    log.error("tenant %s's registry ledger is damaged at seq %d", tenant, row.seq)
                    return
            if len(rows) < 500:
                break
        if state is not None and folded.head_seq == state.head_seq:
            return
        self._views[tenant] = await self._build(tenant, folded)
        self._states[tenant] = folded

    async def _build(self, tenant: str, state: RegistryState) -> TenantView:
        """The view a state gives (`ThymosError` when it cannot be built: a tool name taken, a
        policy set that does not validate, an MCP server that does not start)."""
        if not state.installed and not state.activated:
            return self.base
        registry = ToolRegistry(self.base.tools.tools())
        for installed in sorted(state.installed.values(), key=lambda i: i.name):
            row = await self._package(installed.name, installed.version, installed.content_hash)
            for tool in await self.package_tools(tenant, row):
                if registry.get(tool.spec.name) is not None:
                    raise _conflict(
                        ErrorCode.TOOL_NAME_TAKEN,
                        f"{row.name}@{row.version} provides {tool.spec.name}, which is already a "
                        "tool's name",
                        tool=tool.spec.name,
                        name=row.name,
                    )
                registry.register(tool)
        policy = self.base.policy
        if state.activated:
            files = [PolicyFile(name, text) for name, text in self.base.policy.document()]
            for activated in sorted(state.activated.values(), key=lambda a: a.name):
                row = await self._package(activated.name, activated.version, activated.content_hash)
                files.append(policy_file(row))
            try:
                policy = PolicySet(files)
            except PolicyError as exc:
                raise _conflict(
                    ErrorCode.POLICY_CONFLICT,
                    f"the policy set with the activated packages does not validate: {exc}",
                    file=exc.file,
                ) from None
        catalog = ToolCatalog(registry.specs())
        await self._keep(policy, catalog)
        return TenantView(registry, catalog, policy)

    async def _package(self, name: str, version: str, content_hash: str) -> PackageRow:
        for row in await self._store.package_versions(name):
            if row.version == version and row.content_hash == content_hash:
                return row
        raise _conflict(
            ErrorCode.PACKAGE_NOT_FOUND,
            f"{name}@{version} is recorded as installed but is not in the registry",
            name=name,
            version=version,
        )

    async def package_tools(self, tenant: str, row: PackageRow) -> list[Tool]:
        """The tools a `tool_manifest` or `mcp_server` package gives the tenant's runs (its
        MCP server is started here, once per tenant and content, and kept while installed)."""
        content = orjson.loads(row.content)
        if row.kind == "tool_manifest":
            try:
                spec, executor = parse_manifest(content, _SOURCE)
            except ManifestError as exc:  # checked at publish: only a changed rule gets here
                raise _conflict(
                    ErrorCode.INVALID_PACKAGE_CONTENT, f"{row.name}: {exc}", name=row.name
                ) from None
            assert self._http is not None, "http_fetch is a built-in tool"
            return [ManifestTool(spec, executor, self._http)]
        ((server_name, entry),) = content.items()
        try:
            config = parse_mcp_server(server_name, entry, _SOURCE, f"content.{server_name}")
        except ManifestError as exc:
            raise _conflict(
                ErrorCode.INVALID_PACKAGE_CONTENT, f"{row.name}: {exc}", name=row.name
            ) from None
        server = await self._server(tenant, row, config)
        return [McpTool(server, tool) for tool in server.tools]

    async def _server(self, tenant: str, row: PackageRow, config: McpServerConfig) -> McpServer:
        key = (tenant, row.name, row.content_hash)
        server = self._servers.get(key)
        if server is None:
            server = McpServer(config, self._sandbox)
            server.start()
            self._servers[key] = server
        if not await server.wait_ready(MCP_INSTALL_TIMEOUT_S):
            error = server.error or "it did not list its tools in time"
            self._servers.pop(key, None)
            await server.stop()
            raise _conflict(
                ErrorCode.MCP_SERVER_UNAVAILABLE,
                f"{row.name}@{row.version}'s MCP server {config.name} did not start: {error}",
                name=row.name,
                server=config.name,
            )
        return server

    async def _stop_unused(self) -> None:
        """Stop the MCP servers no tenant's state installs any more."""
        wanted = {
            (tenant, installed.name, installed.content_hash)
            for tenant, state in self._states.items()
            for installed in state.installed.values()
        }
        for key in [k for k in self._servers if k not in wanted]:
            await self._servers.pop(key).stop()

    async def record(
        self,
        tenant: str,
        kind: RegistryKind,
        body: Mapping[str, Any],
        *,
        change: Any = None,
    ) -> Entry:
        """Append an entry to the tenant's registry ledger. `change`, when given, is `(state) ->
        None` applied to a copy of the state first: the view it gives is built (and must be
        buildable) before the entry is recorded, and becomes the tenant's view after."""
        async with self._lock(tenant):
            for _ in range(_RECORD_ATTEMPTS):
                await self._refresh(tenant)
                state = self.state(tenant)
                view = None
                if change is not None:
                    candidate = state.copy()
                    change(candidate)
                    try:
                        view = await self._build(tenant, candidate)
                    except BaseException:
                        await self._stop_unused()  # an MCP server started for the refused change
                        raise
                entry = seal(
                    run_id=registry_ledger_id(tenant),
                    seq=state.head_seq + 1,
                    parent=state.head_id,
                    kind=kind,
                    time=rfc3339_from_us(self._clock.now_us()),
                    body=body,
                )
                try:
                    await self._append(tenant, entry)
                except SeqConflict:
                    continue  # another node recorded first: read it, decide again
                folded = state.copy()
                folded.fold(entry)
                self._states[tenant] = folded
                if view is not None:
                    self._views[tenant] = view
                with contextlib.suppress(Exception):
                    await self._stop_unused()
                return entry
        raise ThymosError(
            ErrorCode.STORAGE_UNAVAILABLE,
            "the registry ledger kept changing under this request; retry it",
            {"retry_after_s": 1},
        )

    async def _append(self, tenant: str, entry: Entry) -> None:
        if entry.seq == 0:
            record = RunRecord(
                run_id=entry.run_id,
                tenant=tenant,
                status=REGISTRY_STATUS,
                created_at=entry.time,
                updated_at=entry.time,
                spec={"registry": tenant},
                summary={},
            )
            await self._store.create_run(record, entry)
        else:
            await self._store.append(entry.run_id, [entry], None)

    async def stop(self) -> None:
        self._store.remove_listener(self._on_notice)
        for task in list(self._tasks):
            task.cancel()
        servers, self._servers = list(self._servers.values()), {}
        await asyncio.gather(*(server.stop() for server in servers), return_exceptions=True)
