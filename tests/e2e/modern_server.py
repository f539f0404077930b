"""A small MCP server on the official Python SDK (`mcp` 2.3.0, dual-era: it answers
`server/discover` and serves 2026-07-28 requests statelessly), for mcp_python_2026.sh: a tool
`add`, a prompt `greet` and a resource `modern://note`, over Streamable HTTP at /mcp; and a tool
`wait` that sleeps, whose cancelled calls the tool `cancelled` lists (a 2026 client cancels by
dropping its request, which the gateway must pass on).

Usage: python modern_server.py PORT
"""

import sys

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("modern-e2e", version="1")
CANCELLED: list[str] = []  # the tags of cancelled waits


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.prompt()
def greet(name: str) -> str:
    """A greeting for `name`."""
    return f"Hello, {name}!"


@server.resource("modern://note")
def note() -> str:
    """A note."""
    return "a note from a 2026-07-28 server"


@server.tool()
async def wait(tag: str, seconds: float = 10) -> str:
    """Waits `seconds`; a cancelled wait is listed by `cancelled`."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        CANCELLED.append(tag)
        raise
    return "waited"


@server.tool()
def cancelled() -> str:
    """The tags of the waits cancelled so far, comma-separated."""
    return ",".join(CANCELLED)


if __name__ == "__main__":
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
