"""An MCP server that misbehaves on request: `hang` never answers, `crash` exits the process."""

import os
import sys
import time

from mcp.server import MCPServer

app = MCPServer("flaky")


@app.tool()
def echo(text: str) -> str:
    """Echo the text."""
    return text


@app.tool()
def hang() -> str:
    """Never answers."""
    time.sleep(3600)
    return "never"


@app.tool()
def crash() -> str:
    """Exits the server."""
    os._exit(1)


if len(sys.argv) == 3 and sys.argv[1] == "--http":
    app.run("streamable-http", port=int(sys.argv[2]))
else:
    app.run()
