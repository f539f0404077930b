"""The official MCP Python SDK (`ClientSession`, 2025 era) on keygate's aggregated route, for
aggregated_pipeline.sh (which names the upstreams), with static user tokens (TOKEN_AGG for
MCP_URL, TOKEN_LF / TOKEN_CRLF for the pass-through URLs MCP_URL/split-lf and MCP_URL/split-crlf).
This script starts the pipeline upstream (pipeline_upstream.mjs on PIPE_PORT) itself.

1. the HTTP+SSE upstream's tools are listed and `everything-sse_echo` answers;
2. a call the client cancels (the SDK sends `notifications/cancelled`) is seen cancelled within a
   second by the 2025 upstream (sent the notification) and the 2026-07-28 one (its request
   dropped);
3. `notifications/tools/list_changed` (after `pipeline_add-tool`) and
   `notifications/resources/updated` (after subscribing and `pipeline_touch`) reach the client,
   and the new tool is then listed;
4. `completion/complete` of the prompt `pipeline_team` routes to its upstream;
6. answers the split upstreams sent in pieces cut inside `é` (LF and CRLF) arrive intact through
   the aggregated route and the pass-through route (serverInfo, tools/list, tools/call);
7. errors the gateway makes carry the request's id: an unknown tool (-32602) and the `down`
   integration (-32002) reach the SDK as errors of the call that caused them, and raw POSTs with
   a string and a number id get those ids back, on both routes.

Usage: python aggregated_pipeline.py MCP_URL PIPELINE_UPSTREAM_JS
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from headless_oauth import Failure, check, find_failure
from server_everything import PASSED, TRACE, log, step, texts, traced_client

warnings.filterwarnings("ignore", message="resources/(un)?subscribe is removed")
WORDS = "café crème"  # what the split upstreams send cut inside its é
NOTE = "pipeline://note"
UNAVAILABLE = -32002  # keygate: the integration's server is unavailable
INVALID_PARAMS = -32602


class Upstream:
    """pipeline_upstream.mjs on a fixed port, for the length of this script."""

    def __init__(self, script: str, port: int, log_path: str) -> None:
        self.port = port
        with open(log_path, "a") as out:
            self.proc = subprocess.Popen(["node", script, str(port)], stdout=out, stderr=out)

    def wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise Failure(f"pipeline_upstream.mjs did not listen on port {self.port}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Heard:
    """What reached the client besides answers."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.updated: list[str] = []
        self.errors: list[Exception] = []

    async def __call__(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.errors.append(message)
            return
        method = getattr(message, "method", type(message).__name__)
        self.methods.append(method)
        if method == "notifications/resources/updated":
            self.updated.append(str(message.params.uri))


@asynccontextmanager
async def session(url: str, token: str, heard: Heard | None = None) -> AsyncIterator[ClientSession]:
    """An SDK session with a static bearer token."""
    async with traced_client(headers={"Authorization": f"Bearer {token}"}) as http:
        async with streamable_http_client(url, http_client=http) as (r, w):
            async with ClientSession(r, w, read_timeout_seconds=15, message_handler=heard) as s:
                yield s


async def wait_for(what: str, cond, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise Failure(f"{what} within {seconds}s")
        await anyio.sleep(0.05)


async def legacy_sse_upstream(s: ClientSession, names: set[str]) -> None:
    check({"everything-sse_echo", "everything-sse_get-sum"} <= names, f"tools/list lacks everything-sse's tools: {sorted(names)}")
    r = await step("everything-sse_echo", lambda: s.call_tool("everything-sse_echo", {"message": "via HTTP+SSE"}))
    check(not r.is_error and texts(r) == "Echo: via HTTP+SSE", f"everything-sse_echo: {r!r}")
    log("1. HTTP+SSE upstream: everything-sse_* listed, everything-sse_echo answered")


async def cancellation(s: ClientSession, slug: str, era: str) -> None:
    tag = uuid.uuid4().hex[:12]
    with anyio.move_on_after(1):
        await s.call_tool(f"{slug}_wait", {"tag": tag, "seconds": 10})
        raise Failure(f"{slug}_wait returned before it was cancelled")
    cancelled_at = time.monotonic()
    seen = ""
    while time.monotonic() - cancelled_at < 1:
        seen = texts(await step(f"{slug}_cancelled", lambda: s.call_tool(f"{slug}_cancelled", {})))
        if tag in seen.split(","):
            break
    check(tag in seen.split(","), f"the cancelled {slug}_wait {tag} was not seen cancelled upstream within 1 s: {seen!r}")
    log(f"2. cancellation: the {era} upstream {slug} saw the call cancelled within {time.monotonic() - cancelled_at:.2f}s")


async def notifications(s: ClientSession, heard: Heard) -> None:
    # The upstream sends list changes on its GET stream, which the gateway opens when the
    # client's GET arrives; a change made before that is lost, so try until one is heard.
    added = ""
    for attempt in range(10):
        before = heard.methods.count("notifications/tools/list_changed")
        added = f"t{attempt}{uuid.uuid4().hex[:6]}"
        await step("pipeline_add-tool", lambda: s.call_tool("pipeline_add-tool", {"name": added}))
        try:
            await wait_for("no list change", lambda: heard.methods.count("notifications/tools/list_changed") > before, 1)
            break
        except Failure:
            continue
    check("notifications/tools/list_changed" in heard.methods,
          f"no notifications/tools/list_changed reached the client: {heard.methods}")
    names = {t.name for t in (await step("tools/list", s.list_tools)).tools}
    check(f"pipeline_extra-{added}" in names, f"tools/list after list_changed lacks pipeline_extra-{added}")
    await step("resources/subscribe", lambda: s.subscribe_resource(NOTE))
    r = await step("pipeline_touch", lambda: s.call_tool("pipeline_touch", {}))
    check(texts(r) == "updated", f"pipeline_touch: the upstream holds no subscription: {r!r}")
    await wait_for(f"no notifications/resources/updated for {NOTE}", lambda: NOTE in heard.updated, 5)
    await step("resources/unsubscribe", lambda: s.unsubscribe_resource(NOTE))
    log(f"3. notifications/tools/list_changed (then pipeline_extra-{added} listed) and "
        f"notifications/resources/updated {NOTE} reached the client")


async def completion(s: ClientSession) -> None:
    r = await step("completion/complete", lambda: s.complete(
        types.PromptReference(name="pipeline_team"), {"name": "department", "value": "Eng"}))
    check(r.completion.values == ["Engineering"], f"completion of pipeline_team: {r!r}")
    log("4. completion/complete ref/prompt pipeline_team department=Eng -> Engineering")


async def split_answers(s: ClientSession, names_of: dict[str, str], route: str, slugs: list[str], prefix) -> None:
    for slug in slugs:
        description = names_of.get(f"{prefix(slug)}echo")
        check(description == f"Echoes, {WORDS} included", f"{route} {slug}: tools/list description {description!r}")
        r = await step(f"{prefix(slug)}echo", lambda: s.call_tool(f"{prefix(slug)}echo", {"message": "ok"}))
        check(not r.is_error and texts(r) == f"{WORDS}: ok", f"{route} {slug}: tools/call answered {texts(r)!r}")
    log(f"6. {route}: SSE answers of {', '.join(slugs)} cut inside 'é' arrived intact: {WORDS!r}")


async def sdk_errors(s: ClientSession) -> None:
    for tool, code in (("nosuch_echo", INVALID_PARAMS), ("down_echo", UNAVAILABLE)):
        try:
            r = await step(tool, lambda: s.call_tool(tool, {}))
        except MCPError as e:  # the SDK matched the error to this call by its id
            check(e.code == code, f"{tool}: error {e.code} {e.message!r}, expected {code}")
            continue
        raise Failure(f"{tool} answered {r!r}, expected error {code}")
    log(f"7. the SDK got nosuch_echo's {INVALID_PARAMS} and down_echo's {UNAVAILABLE} as the calls' errors")


async def raw_error_ids(mcp_url: str) -> None:
    """Raw POSTs: the gateway's own errors carry the request's id, string or number."""
    hdrs = {"Authorization": f"Bearer {os.environ['TOKEN_AGG']}", "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": "init-a", "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(15)) as http:
        r = await http.post(mcp_url, json=init, headers=hdrs)
        check(r.status_code == 200 and r.json().get("id") == "init-a", f"raw initialize: {r.status_code} {r.text[:300]}")
        s = {**hdrs, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
        await http.post(mcp_url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=s)
        cases = [(mcp_url, s, "nosuch_echo", "call-Δ-1", INVALID_PARAMS), (mcp_url, s, "nosuch_echo", 9007199254740991, INVALID_PARAMS),
                 (mcp_url, s, "down_echo", "call-2", UNAVAILABLE), (mcp_url, s, "down_echo", 77, UNAVAILABLE)]
        for url, headers, tool, rid, code in cases:
            body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": tool, "arguments": {}}}
            r = await http.post(url, json=body, headers=headers)
            got = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            check(got.get("id") == rid and type(got.get("id")) is type(rid) and got.get("error", {}).get("code") == code,
                  f"tools/call {tool} id {rid!r}: {r.status_code} {r.text[:300]}, expected error {code} with that id")
        down = {"Authorization": hdrs["Authorization"].replace(os.environ["TOKEN_AGG"], os.environ["TOKEN_DOWN"]),
                "Accept": hdrs["Accept"]}
        r = await http.post(f"{mcp_url}/down", json={**init, "id": "init-down"}, headers=down)
        got = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        check(got.get("id") == "init-down" and got.get("error", {}).get("code") == UNAVAILABLE,
              f"pass-through initialize to the down upstream: {r.status_code} {r.text[:300]}")
    log("7. raw POSTs: -32602 (unknown tool) and -32002 (upstream down, aggregated and pass-through) carry the request's id")


async def run(mcp_url: str) -> None:
    heard = Heard()
    async with session(mcp_url, os.environ["TOKEN_AGG"], heard) as s:
        init = await step("initialize", s.initialize)
        check(init.server_info.name == "keygate", f"serverInfo {init.server_info!r}")
        tools = (await step("tools/list", s.list_tools)).tools
        names = {t.name: t.description or "" for t in tools}
        await legacy_sse_upstream(s, set(names))
        await cancellation(s, "pipeline", "2025")
        await cancellation(s, "modern", "2026-07-28")
        await notifications(s, heard)
        await completion(s)
        await split_answers(s, names, "aggregated", ["split-lf", "split-crlf"], lambda slug: f"{slug}_")
        await sdk_errors(s)
        check(not heard.errors, f"the transport reported errors: {heard.errors!r}")
    for slug, token in (("split-lf", "TOKEN_LF"), ("split-crlf", "TOKEN_CRLF")):
        async with session(f"{mcp_url}/{slug}", os.environ[token]) as s:
            init = await step(f"initialize {slug}", s.initialize)
            check(init.server_info.name == f"split {WORDS}", f"pass-through {slug}: serverInfo {init.server_info!r}")
            names = {t.name: t.description or "" for t in (await step("tools/list", s.list_tools)).tools}
            await split_answers(s, names, "pass-through", [slug], lambda _: "")
    await raw_error_ids(mcp_url)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    mcp_url, script = sys.argv[1:]
    upstream = Upstream(script, int(os.environ["PIPE_PORT"]), os.environ.get("KEYGATE_E2E_UPSTREAM_LOG", "/dev/null"))
    try:
        upstream.wait_listening()
        asyncio.run(asyncio.wait_for(run(mcp_url), timeout=50))
    except Exception as e:  # ExceptionGroup included
        print(f"FAIL [python]: {find_failure(e) or repr(e)}", file=sys.stderr)
        print("passed before that:\n  " + ("\n  ".join(PASSED) or "(nothing)"), file=sys.stderr)
        print("SDK requests:\n" + "\n".join(TRACE[-30:]), file=sys.stderr)
        return 1
    finally:
        upstream.stop()
    print("[python] " + "\n[python] ".join(PASSED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
