"""The official MCP Python SDK as a 2026-07-28 client of keygate's aggregated endpoint.

`mcp.client.Client` in its default `mode="auto"` probes `server/discover` and stays in the
stateless era when the server answers it. Behind `{URL}/apps/{appId}/mcp` are two integrations
of different eras: `modern` (modern_server.py, the Python SDK's dual-era server, which keygate
must speak 2026-07-28 to: it validates every request's `_meta` and mirrored headers) and
`everything` (@modelcontextprotocol/server-everything on the TypeScript SDK 1.32.2, 2025 era
only, for which keygate runs the `initialize` handshake itself). The client gets its token the
way a real one would (OAuthClientProvider + a headless login, see headless_oauth.py), then:
the negotiated version is 2026-07-28 and the server is keygate; tools and prompts of both
upstreams are listed as `{slug}_{name}` and calls route to each; a resource is read; a call the
client abandons (dropping its request) is cancelled on the upstream within a second; no request
the SDK sent carried `Mcp-Session-Id` or was an `initialize`, and each carried
`MCP-Protocol-Version: 2026-07-28` and `Mcp-Method`.

Then the same SDK as a 2025-era client (`ClientSession`, `initialize`) of the same route: the
answer of the 2026 upstream's `prompts/get`, as it comes over the wire, carries nothing of
2026-07-28 (no `resultType`, no `io.modelcontextprotocol/*` `_meta` key), and a call it cancels
(the SDK sends `notifications/cancelled`) is cancelled on the 2026 upstream within a second.

Usage: python mcp_python_2026.py MCP_URL EMAIL PASSWORD
"""

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from headless_oauth import Failure, check, find_failure, oauth_provider

VERBOSE = os.environ.get("KEYGATE_E2E_VERBOSE") == "1"
STEP_TIMEOUT = 15  # seconds, per protocol step
MODERN = "2026-07-28"
SENT: list[dict[str, Any]] = []  # every request the SDK sent to the MCP URL: method, headers
ANSWERS: list[dict[str, Any]] = []  # every JSON answer the MCP URL sent
TRACE: list[str] = []
MCP_URL = ""


async def record(request: httpx2.Request) -> None:
    if str(request.url) == MCP_URL:
        body = json.loads(request.content) if request.content else {}
        SENT.append({"http": request.method, "method": body.get("method"), "headers": dict(request.headers)})
    TRACE.append(f"-> {request.method} {request.url}")


async def step(what: str, fn: Any) -> Any:
    try:
        with anyio.fail_after(STEP_TIMEOUT):
            result = await fn()
    except TimeoutError:
        raise Failure(f"{what}: no answer within {STEP_TIMEOUT}s") from None
    if VERBOSE:
        print(f"  ok: {what}", file=sys.stderr)
    return result


async def keep_answer(response: httpx2.Response) -> None:
    if str(response.request.url) == MCP_URL and response.headers.get("content-type", "").startswith("application/json"):
        await response.aread()
        ANSWERS.append(response.json())


def text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def exercise(client: Client) -> None:
    check(client.protocol_version == MODERN, f"negotiated {client.protocol_version!r}, expected {MODERN}")
    check(client.server_info is not None and client.server_info.name == "keygate", f"serverInfo {client.server_info!r}")
    notes = client.instructions or ""
    check("modern" in notes and "everything" in notes, f"instructions do not name both integrations: {notes!r}")

    tools = {t.name for t in (await step("tools/list", client.list_tools)).tools}
    for wanted in ("modern_add", "everything_echo", "everything_get-sum"):
        check(wanted in tools, f"tools/list lacks {wanted}: {sorted(tools)}")
    r = await step("tools/call modern_add", lambda: client.call_tool("modern_add", {"a": 2, "b": 3}))
    check(not r.is_error and text(r) == "5", f"modern_add: {r!r}")
    r = await step("tools/call everything_echo", lambda: client.call_tool("everything_echo", {"message": "hi 2026"}))
    check(not r.is_error and "hi 2026" in text(r), f"everything_echo: {r!r}")
    r = await step("tools/call everything_get-sum", lambda: client.call_tool("everything_get-sum", {"a": 40, "b": 2}))
    check(not r.is_error and "42" in text(r), f"everything_get-sum: {r!r}")

    prompts = {p.name for p in (await step("prompts/list", client.list_prompts)).prompts}
    check({"modern_greet", "everything_simple-prompt"} <= prompts, f"prompts/list: {sorted(prompts)}")
    p = await step("prompts/get modern_greet", lambda: client.get_prompt("modern_greet", {"name": "Ada"}))
    check(any("Hello, Ada!" in getattr(m.content, "text", "") for m in p.messages), f"modern_greet: {p!r}")
    res = await step("resources/read modern://note", lambda: client.read_resource("modern://note"))
    check(any("2026-07-28 server" in getattr(c, "text", "") for c in res.contents), f"modern://note: {res!r}")
    await check_cancellation(client)


async def check_cancellation(client: Client | ClientSession) -> None:
    """A call the client abandons is cancelled on the upstream within a second: a 2026 client
    drops its HTTP request, a 2025 one sends `notifications/cancelled`; either way the gateway
    drops the 2026 upstream's request."""
    tag = uuid.uuid4().hex[:12]
    with anyio.move_on_after(1):
        await client.call_tool("modern_wait", {"tag": tag, "seconds": 10})
        raise Failure("modern_wait returned before it was abandoned")
    deadline = time.monotonic() + 1
    seen = ""
    while time.monotonic() < deadline:
        seen = text(await step("tools/call modern_cancelled", lambda: client.call_tool("modern_cancelled", {})))
        if tag in seen.split(","):
            break
        await anyio.sleep(0.1)
    check(tag in seen.split(","), f"the abandoned modern_wait {tag} was not cancelled upstream; cancelled: {seen!r}")


async def exercise_2025(session: ClientSession) -> None:
    init = await step("initialize", session.initialize)
    check(init.protocol_version != MODERN, f"a 2025 session negotiated {init.protocol_version!r}")
    ANSWERS.clear()
    await step("prompts/get modern_greet", lambda: session.get_prompt("modern_greet", {"name": "Ada"}))
    answer = next((a for a in ANSWERS if "messages" in a.get("result", {})), None)
    check(answer is not None, f"no JSON answer to prompts/get was seen: {ANSWERS!r}")
    result = answer["result"]
    foreign = [k for k in result.get("_meta", {}) if k.startswith("io.modelcontextprotocol/")]
    check("resultType" not in result and not foreign, f"a 2025 client got 2026 fields: {result!r}")
    await check_cancellation(session)


async def run(mcp_url: str, email: str, password: str) -> None:
    global MCP_URL
    MCP_URL = mcp_url
    provider, storage, _ = oauth_provider(mcp_url, email, password, "python-2026-e2e")
    error: BaseException | None = None
    try:
        hooks = {"request": [record], "response": [keep_answer]}
        async with httpx2.AsyncClient(auth=provider, timeout=15, event_hooks=hooks) as http:
            transport = streamable_http_client(mcp_url, http_client=http)
            async with Client(transport, read_timeout_seconds=STEP_TIMEOUT) as client:
                await exercise(client)
    except Exception as e:  # ExceptionGroup included
        error = e
    failure = find_failure(error)
    if failure is not None:
        raise failure
    check(error is None, f"the 2026-07-28 session failed: {error!r}")

    posts = [s for s in SENT if s["http"] == "POST" and s["method"]]
    check(len(posts) >= 8, f"only {len(posts)} MCP requests were recorded")
    check(posts[0]["method"] == "server/discover", f"the SDK did not start with server/discover: {posts[0]}")
    for s in posts:
        h = s["headers"]
        check(s["method"] != "initialize", "the SDK fell back to initialize")
        check("mcp-session-id" not in h, f"{s['method']} carried Mcp-Session-Id")
        check(h.get("mcp-protocol-version") == MODERN, f"{s['method']} carried MCP-Protocol-Version {h.get('mcp-protocol-version')!r}")
        check(h.get("mcp-method") == s["method"], f"{s['method']} carried Mcp-Method {h.get('mcp-method')!r}")
    check(not any(s["http"] == "GET" for s in SENT), "the SDK opened a GET stream")

    # The token the 2026 run obtained, as a plain header: the SDK's OAuth provider holds a lock
    # until each response's headers arrive, so it would hold the cancellation back until the
    # call it cancels had answered.
    bearer = {"Authorization": f"Bearer {storage.tokens.access_token}"}
    try:
        async with httpx2.AsyncClient(headers=bearer, timeout=15, event_hooks=hooks) as http:
            async with streamable_http_client(mcp_url, http_client=http) as (r, w):
                async with ClientSession(r, w, read_timeout_seconds=STEP_TIMEOUT) as session:
                    await exercise_2025(session)
    except Exception as e:  # ExceptionGroup included
        raise find_failure(e) or Failure(f"the 2025 session failed: {e!r}") from None


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        asyncio.run(asyncio.wait_for(run(*sys.argv[1:]), timeout=60))
    except (Failure, TimeoutError) as e:
        print(f"FAIL: {e or 'timed out after 60s'}", file=sys.stderr)
        print("SDK requests:\n" + "\n".join(TRACE), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
