"""An MCP server on the official Python SDK (`mcp` 2.3.0) for policies.sh, whose every tool call
is appended to a log file (one tool name a line), so that the test can tell which calls reached
it: `read_note` (read-only), `transfer(amount)` and `delete_repo(name)` (destructive), and
`send_email(to)` (which the test's policy makes ask for approval). Streamable HTTP at /mcp.

Usage: python policy_upstream.py PORT CALLS_LOG
"""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("policy-e2e", version="1")
CALLS = sys.argv[2]
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True)


def called(name: str) -> None:
    with open(CALLS, "a") as out:
        out.write(name + "\n")


@server.tool(annotations=READ_ONLY)
def read_note() -> str:
    """Reads the note."""
    called("read_note")
    return "a note"


@server.tool(annotations=DESTRUCTIVE)
def transfer(amount: int) -> str:
    """Transfers `amount`."""
    called("transfer")
    return f"transferred {amount}"


@server.tool(annotations=DESTRUCTIVE)
def delete_repo(name: str) -> str:
    """Deletes the repository `name`."""
    called("delete_repo")
    return f"deleted {name}"


@server.tool(annotations=DESTRUCTIVE)
def send_email(to: str) -> str:
    """Sends an email to `to`."""
    called("send_email")
    return f"sent to {to}"


if __name__ == "__main__":
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
