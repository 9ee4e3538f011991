"""MCP servers as tool sources, through the official `mcp` SDK.

`THYMOS_MCP_CONFIG` names a JSON file in the format MCP clients share,

    {"mcpServers": {"NAME": {"command": "...", "args": [...], "env": {...}}}}     (stdio)
    {"mcpServers": {"NAME": {"url": "http://..."}}}                                (streamable HTTP)

each optionally with `effect`, `risk` (defaults `external`, `medium`) and `timeout_secs`
(default 30); OpenThymos's `{"servers": {"NAME": ["command", "arg", ...]}}` is read too.

Each server is held by a supervisor task: it starts the server (a stdio server as a sandboxed
child process: namespaces, Landlock, the workspace writable only for `write` servers, the
network only for `external` ones), initializes a session, lists its tools, then pings it; when
the server dies or stops answering, it is started again with exponential backoff, and its state
shows in `/health` and `/ready`. Its tools are registered as `mcp_NAME_TOOL`, with the server's
input schemas, and every call passes the same governance as any tool; a call is bounded by the
server's timeout, and a result with `isError` is a tool failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thymos.core import Effect, Risk, ToolFailureCode, ToolSource, ToolSpec

from ._contract import ToolContext, ToolFailure, ToolOutcome

if TYPE_CHECKING:
    # The SDK is imported when a server is started (it costs every `thymos` start about half
    # a second, and most servers configure no MCP server).
    from mcp import ClientSession
from ._manifests import ManifestError
from ._sandbox import Sandbox

log = logging.getLogger("thymos.tools.mcp")

MCP_TIMEOUT_S_DEFAULT = 30.0
MCP_TIMEOUT_S_MAX = 600.0
MCP_START_TIMEOUT_S = 30.0
PING_INTERVAL_S = 5.0
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_TOOL_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    name: str
    command: tuple[str, ...] = ()
    url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    effect: Effect = Effect.EXTERNAL
    risk: Risk = Risk.MEDIUM
    timeout_s: float = MCP_TIMEOUT_S_DEFAULT


def load_mcp_config(path: Path) -> list[McpServerConfig]:
    """The servers of a config file; `ManifestError` names the field that is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(path, "(file)", f"is not a readable JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(path, "(file)", "must hold a JSON object")
    servers = data.get("mcpServers", data.get("servers"))
    if not isinstance(servers, dict):
        raise ManifestError(path, "mcpServers", "must be an object of servers by name")
    return [
        parse_mcp_server(name, raw, path, f"mcpServers.{name}")
        for name, raw in sorted(servers.items())
    ]


def parse_mcp_server(name: str, raw: Any, file: Path, where: str) -> McpServerConfig:
    """Validate one `mcpServers` entry already read as JSON (a config file's, or a marketplace
    package's content); `file` and `where` only name it in a `ManifestError`. No IO."""
    if not _NAME.fullmatch(name):
        raise ManifestError(file, where, "a server name is 1 to 64 of A-Z a-z 0-9 _ -")
    if isinstance(raw, list):  # OpenThymos's form: the command and its arguments
        raw = {"command": raw[0] if raw else None, "args": raw[1:]}
    if not isinstance(raw, dict):
        raise ManifestError(file, where, "must be an object")
    command: tuple[str, ...] = ()
    url = raw.get("url")
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ManifestError(file, f"{where}.url", "must be an http(s) URL")
    else:
        program, args = raw.get("command"), raw.get("args", [])
        if not isinstance(program, str) or not program:
            raise ManifestError(file, f"{where}.command", "is missing (or give a url)")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ManifestError(file, f"{where}.args", "must be a list of strings")
        command = (program, *args)
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ManifestError(file, f"{where}.env", "must be an object of strings")
    try:
        effect = Effect(raw.get("effect", Effect.EXTERNAL.value))
    except ValueError:
        raise ManifestError(file, f"{where}.effect", "is not an effect class") from None
    try:
        risk = Risk(raw.get("risk", Risk.MEDIUM.value))
    except ValueError:
        raise ManifestError(file, f"{where}.risk", "is not a risk class") from None
    timeout = raw.get("timeout_secs", MCP_TIMEOUT_S_DEFAULT)
    if not isinstance(timeout, int | float) or not 0 < timeout <= MCP_TIMEOUT_S_MAX:
        raise ManifestError(
            file, f"{where}.timeout_secs", f"must be a number from 1 to {MCP_TIMEOUT_S_MAX:g}"
        )
    return McpServerConfig(name, command, url, env, effect, risk, float(timeout))


class McpServer:
    """One server, held open by its supervisor task and restarted when it dies."""

    def __init__(self, config: McpServerConfig, sandbox: Sandbox) -> None:
        self.config = config
        self.sandbox = sandbox
        self.status = "starting"
        self.restarts = 0
        self.error: str | None = None
        self.tools: list[Any] = []
        self._session: ClientSession | None = None
        self._ready = asyncio.Event()
        self._broken = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"mcp-{self.config.name}")

    async def wait_ready(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self._ready.is_set()

    async def stop(self) -> None:
        self._stopping.set()
        self._broken.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    def state(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "tools": len(self.tools),
            "restarts": self.restarts,
            "error": self.error,
        }

    async def _supervise(self) -> None:
        from mcp import ClientSession

        attempt = 0
        while not self._stopping.is_set():
            scratch = tempfile.mkdtemp(prefix="thymos-mcp-")
            try:
                async with self._transport(scratch) as streams:
                    read, write = streams[0], streams[1]
                    async with ClientSession(read, write) as session:
                        await asyncio.wait_for(session.initialize(), MCP_START_TIMEOUT_S)
                        listed = await asyncio.wait_for(session.list_tools(), MCP_START_TIMEOUT_S)
                        if not self._ready.is_set():
                            self.tools = list(listed.tools)
                        self._session = session
                        self._broken.clear()
                        self.status, self.error, attempt = "ready", None, 0
                        self._ready.set()
                        await self._watch(session)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self.error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("MCP server %s stopped: %s", self.config.name, self.error)
            finally:
                self._session = None
                shutil.rmtree(scratch, ignore_errors=True)
            if self._stopping.is_set():
                return
            self.status = "restarting"
            self.restarts += 1
            await asyncio.sleep(RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)])
            attempt += 1

    async def _watch(self, session: ClientSession) -> None:
        """Return when the server must be restarted: a failed call marked it broken, or it
        stopped answering pings."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._broken.wait(), PING_INTERVAL_S)
            if self._broken.is_set():
                return
            await asyncio.wait_for(session.send_ping(), self.config.timeout_s)

    def _transport(self, scratch: str) -> Any:
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client
        from mcp.client.streamable_http import streamable_http_client

        config = self.config
        if config.url is not None:
            return streamable_http_client(config.url)
        command, env = self.sandbox.command(
            config.command,
            write=config.effect.rank >= Effect.WRITE.rank,
            network=config.effect.rank >= Effect.EXTERNAL.rank,
            scratch=scratch,
            cpu_s=None,
            env=config.env,
        )
        params = StdioServerParameters(
            command=command[0], args=command[1:], env=env, cwd=str(self.sandbox.workspace.root)
        )
        return stdio_client(params)

    async def call(self, tool: str, args: Mapping[str, Any]) -> Any:
        session = self._session
        if session is None or self.status != "ready" or self._broken.is_set():
            raise ToolFailure(
                ToolFailureCode.UNAVAILABLE,
                f"MCP server {self.config.name} is {self.status}; try again later",
            )
        try:
            return await asyncio.wait_for(
                session.call_tool(tool, dict(args)), self.config.timeout_s
            )
        except TimeoutError:
            self._broken.set()  # a server that hangs is restarted
            self.status = "restarting"
            raise ToolFailure(
                ToolFailureCode.TIMED_OUT,
                f"MCP server {self.config.name} did not answer within {self.config.timeout_s:g} s",
            ) from None
        except ToolFailure:
            raise
        except Exception as exc:
            self._broken.set()
            self.status = "restarting"
            raise ToolFailure(
                ToolFailureCode.CONNECTION_FAILED,
                f"MCP server {self.config.name} failed: {type(exc).__name__}",
            ) from None


class McpTool:
    """One tool of an MCP server, registered as `mcp_SERVER_TOOL`."""

    def __init__(self, server: McpServer, tool: Any) -> None:
        self.server = server
        self.remote_name = str(tool.name)
        schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
        if schema.get("type") != "object":
            schema = {"type": "object"}
        name = _TOOL_NAME_UNSAFE.sub("_", f"mcp_{server.config.name}_{self.remote_name}")
        self.spec = ToolSpec(
            name=name[:128],
            description=str(tool.description or tool.title or self.remote_name)[:2000],
            input_schema=schema,
            effect=server.config.effect,
            risk=server.config.risk,
            idempotent=bool(getattr(tool.annotations, "idempotent_hint", False) or False),
            compensable=False,
            source=ToolSource.MCP,
        )

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome:
        result = await self.server.call(self.remote_name, args)
        content = [item.model_dump(mode="json", exclude_none=True) for item in result.content]
        if getattr(result, "is_error", False):
            text = " ".join(str(c.get("text", "")) for c in content if c.get("type") == "text")
            raise ToolFailure(
                ToolFailureCode.TOOL_ERROR, text[:2000] or "the tool reported an error"
            )
        output: dict[str, Any] = {"content": content}
        structured = getattr(result, "structured_content", None)
        if structured is not None:
            output["structured"] = structured
        return ToolOutcome(output)


class McpHub:
    """Every configured server: started together, tools discovered, stopped together."""

    def __init__(self, configs: list[McpServerConfig], sandbox: Sandbox) -> None:
        self.servers = [McpServer(config, sandbox) for config in configs]

    async def start(self, timeout_s: float = MCP_START_TIMEOUT_S) -> list[McpTool]:
        """Start every server and wait (bounded) for their first tool lists; a server that is
        not ready in time is logged and keeps retrying, with no tools registered."""
        for server in self.servers:
            server.start()
        tools: list[McpTool] = []
        for server in self.servers:
            if await server.wait_ready(timeout_s):
                tools.extend(McpTool(server, tool) for tool in server.tools)
            else:
                log.error(
                    "MCP server %s is not ready: %s", server.config.name, server.error or "timeout"
                )
        return tools

    @property
    def ready(self) -> bool:
        return all(server.status == "ready" for server in self.servers)

    def state(self) -> dict[str, Any]:
        return {server.config.name: server.state() for server in self.servers}

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers))
