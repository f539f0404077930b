"""The official MCP Python SDK on keygate's aggregated route, over the session's whole life.

Two integrations of `@modelcontextprotocol/server-everything` are attached: one speaking
Streamable HTTP (slug HTTP_SLUG, a process this script starts on HTTP_PORT and restarts), one the
legacy HTTP+SSE transport of 2024-11-05 (slug SSE_SLUG). With one SDK session:

1. initialize; tools/list has both integrations' tools; echo and get-sum through the HTTP+SSE one
   answer, as does echo through the Streamable one;
2. the Streamable upstream restarts and forgets its sessions (it then answers them 400): tools/list
   and tools/call in the old session fail with keygate's -32001 "initialize again", never a list
   without its tools and never the upstream's own "No valid session ID";
3. a new session works again; closing it (the SDK's DELETE) ends it: a request that still carries
   its Mcp-Session-Id is answered 404.

Usage: python aggregated_lifecycle.py MCP_URL EMAIL PASSWORD HTTP_SLUG SSE_SLUG EVERYTHING_JS HTTP_PORT
"""

import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from headless_oauth import Failure, check, find_failure, oauth_provider
from server_everything import PASSED, TRACE, log, step, texts, traced_client

SESSION_EXPIRED = -32001  # keygate: an integration's session expired; initialize again


class Upstream:
    """A server-everything process on a fixed port, restartable."""

    def __init__(self, script: str, port: int, log_path: str) -> None:
        self.script, self.port, self.log_path = script, port, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PORT": str(self.port)}
        with open(self.log_path, "a") as out:
            self.proc = subprocess.Popen(["node", self.script, "streamableHttp"], env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise Failure(f"server-everything did not listen on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def session_ids() -> list[str]:
    """The Mcp-Session-Id of every initialize the gateway answered, in order (from the trace)."""
    return [line.split("session=", 1)[1] for line in TRACE if line.startswith("<- session=")]


async def note_session(response: httpx2.Response) -> None:
    sid = response.headers.get("mcp-session-id")
    if sid and response.request.method == "POST" and sid not in session_ids():
        TRACE.append(f"<- session={sid}")


async def expect_initialize_again(what: str, call) -> None:
    try:
        result = await step(what, call)
    except MCPError as e:
        check(e.code == SESSION_EXPIRED, f"{what}: error {e.code} {e.message!r}, expected {SESSION_EXPIRED}")
        check("No valid session" not in e.message, f"{what}: the upstream's own error leaked: {e.message!r}")
        log(f"{what} after the upstream restarted: JSON-RPC {e.code} {e.message!r}")
        return
    raise Failure(f"{what} after the upstream restarted answered {str(result)[:300]}, expected error {SESSION_EXPIRED}")


async def run(mcp_url: str, email: str, password: str, http_slug: str, sse_slug: str, upstream: Upstream) -> None:
    provider, storage, _ = oauth_provider(mcp_url, email, password, "aggregated-lifecycle-e2e")

    def client() -> httpx2.AsyncClient:
        c = traced_client(auth=provider)
        c.event_hooks["response"].append(note_session)
        return c

    # 1 + 2: one session, across the upstream's restart.
    async with client() as http, streamable_http_client(mcp_url, http_client=http) as (r, w):
        async with ClientSession(r, w) as session:
            await step("initialize", session.initialize)
            names = {t.name for t in (await step("tools/list", session.list_tools)).tools}
            for slug in (http_slug, sse_slug):
                check({f"{slug}_echo", f"{slug}_get-sum"} <= names, f"tools/list lacks {slug}'s tools: {sorted(names)}")
            log(f"tools/list: {len(names)} tools, from {http_slug} (Streamable HTTP) and {sse_slug} (HTTP+SSE)")
            r1 = await step("echo via HTTP+SSE", lambda: session.call_tool(f"{sse_slug}_echo", {"message": "over sse"}))
            check(not r1.is_error and texts(r1) == "Echo: over sse", f"{sse_slug}_echo answered {r1!r}")
            r2 = await step("get-sum via HTTP+SSE", lambda: session.call_tool(f"{sse_slug}_get-sum", {"a": 2, "b": 40}))
            check(not r2.is_error and "42" in texts(r2), f"{sse_slug}_get-sum answered {r2!r}")
            log(f"tools/call {sse_slug}_echo and {sse_slug}_get-sum (HTTP+SSE upstream): {texts(r1)!r}, {texts(r2)!r}")
            r3 = await step("echo via Streamable HTTP", lambda: session.call_tool(f"{http_slug}_echo", {"message": "before"}))
            check(texts(r3) == "Echo: before", f"{http_slug}_echo answered {r3!r}")

            upstream.stop()
            upstream.start()
            log("the Streamable HTTP upstream restarted (its sessions are gone)")
            await expect_initialize_again("tools/list", session.list_tools)
            await expect_initialize_again(
                "tools/call", lambda: session.call_tool(f"{http_slug}_echo", {"message": "after"}))

    # 3: a new session works; once closed (DELETE), its id is refused.
    async with client() as http, streamable_http_client(mcp_url, http_client=http) as (r, w):
        async with ClientSession(r, w) as session:
            await step("initialize (new session)", session.initialize)
            r4 = await step("echo in the new session", lambda: session.call_tool(f"{http_slug}_echo", {"message": "again"}))
            check(texts(r4) == "Echo: again", f"{http_slug}_echo in the new session answered {r4!r}")
            log("a new session: tools/call works again")
    closed = session_ids()[-1]
    deletes = [t for t in TRACE if t.startswith("<- ") and " DELETE " in t]
    check(any(t.startswith("<- 200 ") for t in deletes), f"the SDK's DELETE was not answered 200: {deletes}")
    headers = {"Authorization": f"Bearer {storage.tokens.access_token}", "Mcp-Session-Id": closed,
               "MCP-Protocol-Version": "2025-06-18", "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(10)) as raw:
        resp = await raw.post(mcp_url, json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, headers=headers)
    body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    check(resp.status_code == 404 and body.get("id") == 9 and body.get("error", {}).get("code") == SESSION_EXPIRED,
          f"a request in the closed session answered {resp.status_code} {resp.text[:300]}")
    log(f"after DELETE, tools/list in that session: {resp.status_code} {body['error']['message']!r}")


def main() -> int:
    if len(sys.argv) != 8:
        print(__doc__, file=sys.stderr)
        return 2
    mcp_url, email, password, http_slug, sse_slug, script, port = sys.argv[1:]
    upstream = Upstream(script, int(port), os.environ.get("KEYGATE_E2E_UPSTREAM_LOG", "/dev/null"))
    upstream.start()
    try:
        asyncio.run(asyncio.wait_for(run(mcp_url, email, password, http_slug, sse_slug, upstream), timeout=60))
    except Exception as e:  # ExceptionGroup included
        failure = find_failure(e) or e
        print(f"FAIL: {failure}", file=sys.stderr)
        print("passed before that:\n  " + ("\n  ".join(PASSED) or "(nothing)"), file=sys.stderr)
        print("SDK requests:\n" + "\n".join(TRACE[-40:]), file=sys.stderr)
        return 1
    finally:
        upstream.stop()
    print("\n".join(PASSED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
