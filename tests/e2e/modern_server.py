"""A small MCP server on the official Python SDK (`mcp` 2.3.0, dual-era: it answers
`server/discover` and serves 2026-07-28 requests statelessly), for mcp_python_2026.sh: a tool
`add`, a prompt `greet` and a resource `modern://note`, over Streamable HTTP at /mcp.

Usage: python modern_server.py PORT
"""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("modern-e2e", version="1")


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


if __name__ == "__main__":
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
