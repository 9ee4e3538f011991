"""The one contract every tool meets, and the registry that holds them.

A tool is given a read-only view of the world and its workspace; it returns an output (JSON) and
the deltas it proposes. It never writes the ledger or the world itself: the runtime commits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from thymos.core import Delta, Resource, ToolFailureCode, ToolSpec, Usage, match_scope

if TYPE_CHECKING:
    from ._pool import ToolPool
    from ._sandbox import Sandbox
    from ._workspace import Workspace


class WorldView(Protocol):
    """Read access to the world as it stands before this call."""

    def get(self, kind: str, ident: str) -> Resource | None: ...


@dataclass(frozen=True, slots=True)
class ToolContext:
    run_id: str
    workspace: Workspace
    world: WorldView
    pool: ToolPool
    """Where blocking work runs (never asyncio's default executor)."""
    sandbox: Sandbox
    """Where child processes run (`Sandbox.run`), confined to the workspace."""
    delegate: Callable[[Mapping[str, Any]], Awaitable[ToolOutcome]] | None = None
    """How `delegate` starts a child run and waits for its end: a hook the runtime gives the
    one call it executes (None where the runtime offers no delegation)."""


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    output: Any
    deltas: tuple[Delta, ...] = ()
    delegated_usage: Usage | None = None
    """What a child run spent for this call (`delegate` only): recorded with the commit and
    added to the run's usage, so a parent pays for what its child used, not for its carve-out."""


class ToolFailure(Exception):
    """The tool ran and failed in a way cognition should hear about (recorded as tool_failure)."""

    def __init__(self, code: ToolFailureCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Tool(Protocol):
    @property
    def spec(self) -> ToolSpec: ...

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> ToolOutcome: ...


class ToolRegistry:
    """Registered capabilities by name; scopes are exact names or globs over these names."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        name = tool.spec.name
        assert name not in self._tools, f"tool {name} registered twice"
        self._tools[name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def tools(self) -> list[Tool]:
        """Every registered tool, by name."""
        return [tool for _, tool in sorted(self._tools.items())]

    def specs(self) -> dict[str, ToolSpec]:
        return {name: tool.spec for name, tool in sorted(self._tools.items())}

    def match(self, scope: str) -> list[str]:
        """Registered names a scope covers (an exact name or a glob such as `fs_*`)."""
        return match_scope(self._tools, scope)
