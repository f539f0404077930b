"""The official MCP Python SDK through keygate's pass-through route to the real MCP reference server.

`@modelcontextprotocol/server-everything` (pinned by server-everything/package-lock.json) runs
behind `{URL}/apps/{appId}/mcp/{slug}`. The client gets its token the way a real one would (the
SDK's OAuthClientProvider against the pass-through URL, with a headless login + consent, see
headless_oauth.py), then exercises the protocol end to end: initialize; tools/list; echo and
get-sum; a long-running tool whose progress notifications must reach the client; the sampling and
elicitation tools, whose server-to-client requests must be answered by this client's callbacks and
whose results must carry those answers; resources (list, templates, read); prompts (list, get).

MODE `http` speaks Streamable HTTP; MODE `sse` speaks the legacy HTTP+SSE transport
(`mcp.client.sse.sse_client`) to an upstream started in its SSE mode, which only works if the
gateway rewrites the upstream's `endpoint` event to a URL of its own.

Usage: python server_everything.py MODE MCP_URL EMAIL PASSWORD
"""

import asyncio
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from headless_oauth import Failure, check, find_failure, oauth_provider

VERBOSE = os.environ.get("KEYGATE_E2E_VERBOSE") == "1"
STEP_TIMEOUT = 15  # seconds, per protocol step
TRACE: list[str] = []  # every request the SDK's HTTP client made, and its answer
PASSED: list[str] = []  # the checks that passed, printed at the end (and on failure)

# The pinned server's names (they changed between versions: add -> get-sum, longRunningOperation
# -> trigger-long-running-operation, sampleLLM -> trigger-sampling-request, startElicitation ->
# trigger-elicitation-request).
TOOL_ECHO = "echo"
TOOL_SUM = "get-sum"
TOOL_LONG = "trigger-long-running-operation"
TOOL_SAMPLING = "trigger-sampling-request"
TOOL_ELICITATION = "trigger-elicitation-request"
STATIC_DOC = "demo://resource/static/document/features.md"
TEXT_TEMPLATE = "demo://resource/dynamic/text/{resourceId}"
PROMPT_SIMPLE = "simple-prompt"
PROMPT_ARGS = "args-prompt"


def log(line: str) -> None:
    PASSED.append(line)
    if VERBOSE:
        print(f"  ok: {line}", file=sys.stderr)


def texts(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def step(what: str, fn: Callable[[], Awaitable[Any]], timeout: float = STEP_TIMEOUT) -> Any:
    """Runs one protocol step under a deadline, naming it if it hangs."""
    try:
        with anyio.fail_after(timeout):
            return await fn()
    except TimeoutError:
        raise Failure(f"{what}: no answer within {timeout}s") from None


class Client:
    """The callbacks the server reaches back into, and what they saw."""

    def __init__(self) -> None:
        self.nonce = uuid.uuid4().hex[:12]
        self.sampling_requests: list[types.CreateMessageRequestParams] = []
        self.elicitation_requests: list[types.ElicitRequestParams] = []
        self.notifications: list[str] = []
        self.transport_errors: list[Exception] = []

    async def sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.sampling_requests.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"sampled-by-python-{self.nonce}"),
            model=f"keygate-e2e-model-{self.nonce}",
            stop_reason="endTurn",
        )

    async def elicitation(self, context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitation_requests.append(params)
        return types.ElicitResult(
            action="accept",
            content={"name": f"Ada {self.nonce}", "check": True, "email": "ada@example.com", "integer": 7},
        )

    async def messages(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.transport_errors.append(message)
        else:
            self.notifications.append(getattr(message, "method", type(message).__name__))


async def exercise(session: ClientSession, client: Client) -> None:
    init = await step("initialize", session.initialize)
    check(init.server_info.name == "mcp-servers/everything", f"initialize: serverInfo is {init.server_info!r}")
    check(init.capabilities.tools is not None, f"initialize: no tools capability: {init.capabilities!r}")
    check(init.capabilities.prompts is not None and init.capabilities.resources is not None,
          f"initialize: no prompts/resources capability: {init.capabilities!r}")
    log(f"initialize: {init.server_info.name} {init.server_info.version}, protocol {init.protocol_version}")

    # The sampling and elicitation tools are registered once the server has seen the client's
    # capabilities (on notifications/initialized), so give that a moment.
    wanted = {TOOL_ECHO, TOOL_SUM, TOOL_LONG, TOOL_SAMPLING, TOOL_ELICITATION}
    deadline = time.monotonic() + 5
    while True:
        tools = await step("tools/list", session.list_tools)
        names = {t.name for t in tools.tools}
        if wanted <= names or time.monotonic() > deadline:
            break
        await anyio.sleep(0.2)
    check(wanted <= names, f"tools/list lacks {sorted(wanted - names)}; it has {sorted(names)}")
    log(f"tools/list: {len(names)} tools, including {', '.join(sorted(wanted))}")

    message = f"hello through keygate {client.nonce} ✓"
    r = await step("tools/call echo", lambda: session.call_tool(TOOL_ECHO, {"message": message}))
    check(not r.is_error and texts(r) == f"Echo: {message}", f"echo answered {r!r}")
    log(f"tools/call {TOOL_ECHO}: {texts(r)!r}")

    r = await step("tools/call get-sum", lambda: session.call_tool(TOOL_SUM, {"a": 19, "b": 23.5}))
    check(not r.is_error and texts(r) == "The sum of 19 and 23.5 is 42.5.", f"get-sum answered {r!r}")
    log(f"tools/call {TOOL_SUM}: {texts(r)!r}")

    progress: list[tuple[float, float | None]] = []
    first_progress_at: list[float] = []

    async def on_progress(p: float, total: float | None, msg: str | None) -> None:
        progress.append((p, total))
        first_progress_at.append(time.monotonic())

    r = await step(
        "tools/call trigger-long-running-operation",
        lambda: session.call_tool(TOOL_LONG, {"duration": 1.5, "steps": 3}, progress_callback=on_progress),
    )
    done_at = time.monotonic()
    check(not r.is_error and "Long running operation completed. Duration: 1.5 seconds, Steps: 3." in texts(r),
          f"{TOOL_LONG} answered {r!r}")
    check(progress == [(1, 3), (2, 3), (3, 3)], f"{TOOL_LONG}: progress notifications received: {progress}, expected 1/3, 2/3, 3/3")
    # The first step ends 0.5 s in and the result comes 1 s later: a gateway that buffered the
    # response stream would deliver all of it at once.
    lead = done_at - first_progress_at[0]
    check(lead > 0.25, f"{TOOL_LONG}: the first progress notification arrived only {lead:.2f}s before the result: the stream is buffered")
    log(f"tools/call {TOOL_LONG}: done, progress notifications {progress}, the first {lead:.2f}s before the result")

    prompt = f"What is keygate? ({client.nonce})"
    r = await step("tools/call trigger-sampling-request",
                   lambda: session.call_tool(TOOL_SAMPLING, {"prompt": prompt, "maxTokens": 64}))
    check(len(client.sampling_requests) == 1, f"the sampling callback ran {len(client.sampling_requests)} times, expected once")
    sreq = client.sampling_requests[0]
    got = [m.content.text for m in sreq.messages if isinstance(m.content, types.TextContent)]
    check(got == [f"Resource {TOOL_SAMPLING} context: {prompt}"] and sreq.max_tokens == 64,
          f"sampling/createMessage the client received: {sreq!r}")
    check(not r.is_error, f"{TOOL_SAMPLING} answered an error: {r!r}")
    body = texts(r)
    check(f"sampled-by-python-{client.nonce}" in body and f"keygate-e2e-model-{client.nonce}" in body,
          f"{TOOL_SAMPLING}'s result does not carry the client's sampling answer: {body[:600]}")
    log(f"tools/call {TOOL_SAMPLING}: sampling/createMessage answered by the client callback, result carries it")

    r = await step("tools/call trigger-elicitation-request", lambda: session.call_tool(TOOL_ELICITATION, {}))
    check(len(client.elicitation_requests) == 1, f"the elicitation callback ran {len(client.elicitation_requests)} times, expected once")
    ereq = client.elicitation_requests[0]
    check(isinstance(ereq, types.ElicitRequestFormParams) and "name" in ereq.requested_schema.get("properties", {}),
          f"elicitation/create the client received: {ereq!r}")
    check(not r.is_error, f"{TOOL_ELICITATION} answered an error: {r!r}")
    body = texts(r)
    for line in (f"- Name: Ada {client.nonce}", "- Agreed to terms: true", "- Email: ada@example.com", "- Favorite Integer: 7"):
        check(line in body, f"{TOOL_ELICITATION}'s result lacks {line!r}: {body[:800]}")
    log(f"tools/call {TOOL_ELICITATION}: elicitation/create accepted by the client callback, result carries it")

    res = await step("resources/list", session.list_resources)
    uris = {str(x.uri) for x in res.resources}
    check(STATIC_DOC in uris, f"resources/list lacks {STATIC_DOC}: {sorted(uris)}")
    rr = await step("resources/read", lambda: session.read_resource(STATIC_DOC))
    doc = rr.contents[0]
    check(isinstance(doc, types.TextResourceContents) and "# Everything Server - Features" in doc.text
          and f"`{TOOL_ELICITATION}`" in doc.text, f"resources/read {STATIC_DOC}: {str(rr)[:600]}")
    log(f"resources/list: {len(uris)} resources; resources/read {STATIC_DOC}: {len(doc.text)} chars")

    tpl = await step("resources/templates/list", session.list_resource_templates)
    check(TEXT_TEMPLATE in {t.uri_template for t in tpl.resource_templates},
          f"resources/templates/list lacks {TEXT_TEMPLATE}: {tpl!r}")
    rr = await step("resources/read (template)", lambda: session.read_resource("demo://resource/dynamic/text/7"))
    check(isinstance(rr.contents[0], types.TextResourceContents)
          and rr.contents[0].text.startswith("Resource 7: This is a plaintext resource"), f"resources/read dynamic/text/7: {rr!r}")
    log("resources/templates/list + resources/read demo://resource/dynamic/text/7: ok")

    pr = await step("prompts/list", session.list_prompts)
    pnames = {p.name for p in pr.prompts}
    check({PROMPT_SIMPLE, PROMPT_ARGS} <= pnames, f"prompts/list lacks {PROMPT_SIMPLE}/{PROMPT_ARGS}: {sorted(pnames)}")
    gp = await step("prompts/get simple-prompt", lambda: session.get_prompt(PROMPT_SIMPLE))
    check([m.content.text for m in gp.messages] == ["This is a simple prompt without arguments."], f"prompts/get {PROMPT_SIMPLE}: {gp!r}")
    gp = await step("prompts/get args-prompt", lambda: session.get_prompt(PROMPT_ARGS, {"city": "Lisbon", "state": "Portugal"}))
    check([m.content.text for m in gp.messages] == ["What's weather in Lisbon, Portugal?"], f"prompts/get {PROMPT_ARGS}: {gp!r}")
    log(f"prompts/list: {sorted(pnames)}; prompts/get {PROMPT_SIMPLE}, {PROMPT_ARGS}: ok")

    check(not client.transport_errors, f"the transport reported errors: {client.transport_errors!r}")


async def trace_request(request: httpx2.Request) -> None:
    TRACE.append(f"-> {request.method} {request.url}")


async def trace_response(response: httpx2.Response) -> None:
    body = ""
    if "event-stream" not in response.headers.get("content-type", ""):  # never wait on a stream
        await response.aread()
        body = response.text[:300].replace("\n", " ")
    TRACE.append(f"<- {response.status_code} {response.request.method} {response.request.url} {body}")


HOOKS = {"request": [trace_request], "response": [trace_response]}


def traced_client(headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
                  auth: httpx2.Auth | None = None) -> httpx2.AsyncClient:
    """The SDK's `McpHttpClientFactory`, with the request trace hooked in."""
    return httpx2.AsyncClient(headers=headers, timeout=timeout or httpx2.Timeout(15, read=60), auth=auth, event_hooks=HOOKS)


async def sse_diagnosis(mcp_url: str, token: str) -> str:
    """What a legacy SSE client sees at `mcp_url`: the raw endpoint event, then a POST to it."""
    out: list[str] = []
    hdrs = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(10)) as c:
            async with c.stream("GET", mcp_url, headers={**hdrs, "Accept": "text/event-stream"}) as r:
                out.append(f"GET {mcp_url} -> {r.status_code} {r.headers.get('content-type')}")
                raw = b""
                with anyio.move_on_after(5):
                    async for chunk in r.aiter_bytes():
                        raw += chunk
                        if b"\n\n" in raw or b"\r\n\r\n" in raw:
                            break
                out.append(f"first bytes (the endpoint event, raw): {raw[:600]!r}")
            data = [ln[5:].strip() for ln in raw.decode(errors="replace").splitlines() if ln.startswith("data:")]
            if data:
                post_url = str(httpx2.URL(mcp_url).join(data[0]))
                init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "diag", "version": "0"}}}
                async with httpx2.AsyncClient(timeout=httpx2.Timeout(10)) as c2:
                    p = await c2.post(post_url, json=init, headers=hdrs)
                out.append(f"POST {post_url} -> {p.status_code} {p.text[:400]!r}")
    except Exception as e:  # a diagnosis never hides the failure it diagnoses
        out.append(f"diagnosis stopped: {e!r}")
    return "\n".join(out)


async def run(mode: str, mcp_url: str, email: str, password: str) -> None:
    provider, storage, browser = oauth_provider(mcp_url, email, password, f"server-everything-e2e-{mode}")
    client = Client()
    callbacks = dict(
        read_timeout_seconds=STEP_TIMEOUT,
        sampling_callback=client.sampling,
        elicitation_callback=client.elicitation,
        message_handler=client.messages,
    )
    error: BaseException | None = None
    try:
        if mode == "http":
            async with traced_client(auth=provider) as http:
                async with streamable_http_client(mcp_url, http_client=http) as (r, w):
                    async with ClientSession(r, w, **callbacks) as session:
                        await exercise(session, client)
        else:
            async with sse_client(mcp_url, auth=provider, timeout=15, sse_read_timeout=60,
                                  httpx_client_factory=traced_client) as (r, w):
                async with ClientSession(r, w, **callbacks) as session:
                    await exercise(session, client)
    except Exception as e:  # ExceptionGroup included
        error = e

    if error is not None:
        failure = find_failure(error) or Failure(f"the MCP session failed: {error!r}")
        if storage.tokens is None:
            failure = Failure(f"{failure} (the OAuth flow did not finish; browser steps: {browser.steps})")
        elif mode == "sse":
            failure = Failure(f"{failure}\n--- what a legacy SSE client sees:\n{await sse_diagnosis(mcp_url, storage.tokens.access_token)}")
        raise failure

    # The token the SDK obtained is bound to this pass-through URL.
    claims = json.loads(base64.urlsafe_b64decode((p := storage.tokens.access_token.split(".")[1]) + "=" * (-len(p) % 4)))
    check(claims.get("aud") == mcp_url, f"access token aud {claims.get('aud')!r} != {mcp_url!r}")
    log(f"OAuth (DCR + PKCE + headless consent) against the pass-through URL: token aud = {mcp_url}")
    base = mcp_url.split("/apps/")[0] + "/"
    strays = [t for t in TRACE if t.startswith("-> ") and not t.split(" ", 2)[2].startswith(base)]
    check(not strays, f"the client talked to something other than the gateway: {strays}")
    if mode == "sse":  # the upstream's endpoint event was rewritten to the gateway's message URL
        posts = [t for t in TRACE if t.startswith("<- ") and " POST " in t and "/oauth2/" not in t]
        check(posts and all(t.split(" ")[3].startswith(mcp_url + "/message?") for t in posts),
              f"the client did not POST to {mcp_url}/message?...: {posts[:5]}")
        check(all(t.split(" ")[1] in ("200", "202") for t in posts), f"a message POST was refused: {[t for t in posts if t.split(' ')[1] not in ('200', '202')]}")
        log(f"{len(posts)} message POSTs to {mcp_url}/message?ep=... accepted")
    if mode == "http":  # the session is terminated on close, through the gateway
        deletes = [t for t in TRACE if t.startswith("<- ") and " DELETE " in t]
        check(any(t.startswith("<- 200 ") for t in deletes), f"session DELETE did not answer 200: {deletes}")
        log("DELETE (session termination): 200")


def main() -> int:
    if len(sys.argv) != 5 or sys.argv[1] not in ("http", "sse"):
        print(__doc__, file=sys.stderr)
        return 2
    mode = sys.argv[1]
    try:
        asyncio.run(asyncio.wait_for(run(*sys.argv[1:]), timeout=45))
    except (Failure, TimeoutError) as e:
        print(f"FAIL [{mode}]: {e or 'timed out after 45s'}", file=sys.stderr)
        print("passed before that:\n  " + ("\n  ".join(PASSED) or "(nothing)"), file=sys.stderr)
        print("SDK requests:\n" + "\n".join(TRACE[-40:]), file=sys.stderr)
        return 1
    print(f"[{mode}] " + f"\n[{mode}] ".join(PASSED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
