"""Tools: the one contract, the registry, and the built-in capabilities (one module per tool).

**Architecture Invariant:** a tool returns an output and proposed deltas; it never writes the
ledger or the world. File tools never leave the workspace.
"""

from collections.abc import Sequence

from ._commands import Shell, TestRun, detect_test_command
from ._contract import Tool, ToolContext, ToolFailure, ToolOutcome, ToolRegistry, WorldView
from ._delegate import Delegate
from ._fs_read import FsRead
from ._fs_write import FILE_KIND, FsPatch, FsWrite
from ._grep import Grep
from ._http_fetch import HttpFetch
from ._kv import KvGet, KvSet
from ._manifests import ManifestError, ManifestTool, load_manifests, parse_manifest
from ._mcp import (
    McpHub,
    McpServer,
    McpServerConfig,
    McpTool,
    load_mcp_config,
    parse_mcp_server,
)
from ._pool import ToolPool
from ._repo_map import RepoMap
from ._sandbox import Sandbox, SandboxSupport
from ._workspace import Workspace

READ_ONLY_DEFAULT_SCOPES = ("repo_map", "fs_read", "grep", "kv_get")
"""What a run gets when it names no tool scopes: the read-only built-in tools."""


def builtin_tools(
    test_command: Sequence[str] | None = None, http_allow: frozenset[str] = frozenset()
) -> ToolRegistry:
    """A registry holding the built-in tools (`test_command`: `THYMOS_TEST_COMMAND`, split;
    `http_allow`: `THYMOS_HTTP_ALLOW`, the hosts `http_fetch` may reach whatever they resolve
    to)."""
    return ToolRegistry(
        [
            RepoMap(),
            FsRead(),
            Grep(),
            FsWrite(),
            FsPatch(),
            TestRun(test_command),
            Shell(),
            HttpFetch(http_allow),
            KvGet(),
            KvSet(),
            Delegate(),
        ]
    )


__all__ = [
    "FILE_KIND",
    "READ_ONLY_DEFAULT_SCOPES",
    "Delegate",
    "FsPatch",
    "FsRead",
    "FsWrite",
    "Grep",
    "HttpFetch",
    "KvGet",
    "KvSet",
    "ManifestError",
    "ManifestTool",
    "McpHub",
    "McpServer",
    "McpServerConfig",
    "McpTool",
    "RepoMap",
    "Sandbox",
    "SandboxSupport",
    "Shell",
    "TestRun",
    "Tool",
    "ToolContext",
    "ToolFailure",
    "ToolOutcome",
    "ToolPool",
    "ToolRegistry",
    "Workspace",
    "WorldView",
    "builtin_tools",
    "detect_test_command",
    "load_manifests",
    "load_mcp_config",
    "parse_manifest",
    "parse_mcp_server",
]
