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

MODE `aggregated` speaks Streamable HTTP to the aggregated route `{URL}/apps/{appId}/mcp`, where
SLUGS (comma-separated, at least two) name integrations of server-everything attached to the
application, the first two of them Streamable HTTP (any further one may speak HTTP+SSE; the
gateway holds its stream and does not pass the sampling and elicitation capabilities to it): serverInfo is keygate's; tools and prompts are `{slug}_{name}` and
route by that prefix (echo from each, get-sum, progress); the sampling and elicitation requests of
each upstream reach the client with ids `{slug}~{id}` and its answers get back to that upstream;
resources are listed and read unchanged; completions route by their ref, and a subscription
reaches the upstream that owns the URI, whose resource updates reach the client.

Usage: python server_everything.py http|sse MCP_URL EMAIL PASSWORD
       python server_everything.py aggregated MCP_URL EMAIL PASSWORD SLUGS
"""

import asyncio
import base64
import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from headless_oauth import Failure, check, find_failure, oauth_provider

VERBOSE = os.environ.get("KEYGATE_E2E_VERBOSE") == "1"
# This client speaks 2025-11-25, where resources/subscribe is current; the SDK warns of 2026.
warnings.filterwarnings("ignore", message="resources/(un)?subscribe is removed")
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
TOOL_ENV = "get-env"  # the upstream process's environment, as JSON
TOOL_UPDATES = "toggle-subscriber-updates"  # resources/updated for the session's subscriptions
STATIC_DOC = "demo://resource/static/document/features.md"
TEXT_TEMPLATE = "demo://resource/dynamic/text/{resourceId}"
PROMPT_SIMPLE = "simple-prompt"
PROMPT_ARGS = "args-prompt"
PROMPT_COMPLETABLE = "completable-prompt"


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
        self.sampling_ids: list[Any] = []  # the JSON-RPC id of each request, as the client saw it
        self.elicitation_requests: list[types.ElicitRequestParams] = []
        self.elicitation_ids: list[Any] = []
        self.notifications: list[str] = []
        self.updated: list[str] = []  # the URIs of notifications/resources/updated
        self.transport_errors: list[Exception] = []

    async def sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.sampling_requests.append(params)
        self.sampling_ids.append(context.request_id)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"sampled-by-python-{self.nonce}"),
            model=f"keygate-e2e-model-{self.nonce}",
            stop_reason="endTurn",
        )

    async def elicitation(self, context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitation_requests.append(params)
        self.elicitation_ids.append(context.request_id)
        return types.ElicitResult(
            action="accept",
            content={"name": f"Ada {self.nonce}", "check": True, "email": "ada@example.com", "integer": 7},
        )

    async def messages(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.transport_errors.append(message)
        else:
            method = getattr(message, "method", type(message).__name__)
            self.notifications.append(method)
            if method == "notifications/resources/updated":
                self.updated.append(str(getattr(getattr(message, "params", None), "uri", None)))


async def list_tools_until(session: ClientSession, wanted: set[str]) -> set[str]:
    """tools/list until it has `wanted` (5 s at most): the sampling and elicitation tools are
    registered once the server has seen the client's capabilities (on notifications/initialized)."""
    deadline = time.monotonic() + 5
    while True:
        tools = await step("tools/list", session.list_tools)
        names = {t.name for t in tools.tools}
        if wanted <= names or time.monotonic() > deadline:
            break
        await anyio.sleep(0.2)
    check(wanted <= names, f"tools/list lacks {sorted(wanted - names)}; it has {sorted(names)}")
    return names


async def call_echo(session: ClientSession, client: Client, tool: str) -> str:
    message = f"hello through keygate {client.nonce} via {tool} ✓"
    r = await step(f"tools/call {tool}", lambda: session.call_tool(tool, {"message": message}))
    check(not r.is_error and texts(r) == f"Echo: {message}", f"{tool} answered {r!r}")
    log(f"tools/call {tool}: {texts(r)!r}")
    return texts(r)


async def call_sum(session: ClientSession, tool: str) -> None:
    r = await step(f"tools/call {tool}", lambda: session.call_tool(tool, {"a": 19, "b": 23.5}))
    check(not r.is_error and texts(r) == "The sum of 19 and 23.5 is 42.5.", f"{tool} answered {r!r}")
    log(f"tools/call {tool}: {texts(r)!r}")


async def call_long_running(session: ClientSession, tool: str) -> None:
    progress: list[tuple[float, float | None]] = []
    first_progress_at: list[float] = []

    async def on_progress(p: float, total: float | None, msg: str | None) -> None:
        progress.append((p, total))
        first_progress_at.append(time.monotonic())

    r = await step(
        f"tools/call {tool}",
        lambda: session.call_tool(tool, {"duration": 1.5, "steps": 3}, progress_callback=on_progress),
    )
    done_at = time.monotonic()
    check(not r.is_error and "Long running operation completed. Duration: 1.5 seconds, Steps: 3." in texts(r),
          f"{tool} answered {r!r}")
    check(progress == [(1, 3), (2, 3), (3, 3)], f"{tool}: progress notifications received: {progress}, expected 1/3, 2/3, 3/3")
    # The first step ends 0.5 s in and the result comes 1 s later: a gateway that buffered the
    # response stream would deliver all of it at once.
    lead = done_at - first_progress_at[0]
    check(lead > 0.25, f"{tool}: the first progress notification arrived only {lead:.2f}s before the result: the stream is buffered")
    log(f"tools/call {tool}: done, progress notifications {progress}, the first {lead:.2f}s before the result")


async def call_sampling(session: ClientSession, client: Client, tool: str, id_prefix: str | None = None) -> None:
    """The sampling tool: its sampling/createMessage must reach the client's callback (once per
    call, with an id starting with `id_prefix` if given), and the result must carry its answer."""
    before = len(client.sampling_requests)
    prompt = f"What is keygate? ({client.nonce}, {tool})"
    r = await step(f"tools/call {tool}", lambda: session.call_tool(tool, {"prompt": prompt, "maxTokens": 64}))
    check(len(client.sampling_requests) == before + 1,
          f"the sampling callback ran {len(client.sampling_requests) - before} times for {tool}, expected once")
    sreq = client.sampling_requests[-1]
    got = [m.content.text for m in sreq.messages if isinstance(m.content, types.TextContent)]
    check(got == [f"Resource {TOOL_SAMPLING} context: {prompt}"] and sreq.max_tokens == 64,
          f"sampling/createMessage the client received: {sreq!r}")
    rid = client.sampling_ids[-1]
    if id_prefix is not None:
        check(isinstance(rid, str) and rid.startswith(id_prefix) and len(rid) > len(id_prefix),
              f"sampling/createMessage reached the client with id {rid!r}, expected a string {id_prefix}...")
    check(not r.is_error, f"{tool} answered an error: {r!r}")
    body = texts(r)
    check(f"sampled-by-python-{client.nonce}" in body and f"keygate-e2e-model-{client.nonce}" in body,
          f"{tool}'s result does not carry the client's sampling answer: {body[:600]}")
    log(f"tools/call {tool}: sampling/createMessage (id {rid!r}) answered by the client callback, result carries it")


async def call_elicitation(session: ClientSession, client: Client, tool: str, id_prefix: str | None = None) -> None:
    """The elicitation tool: like `call_sampling`, with elicitation/create."""
    before = len(client.elicitation_requests)
    r = await step(f"tools/call {tool}", lambda: session.call_tool(tool, {}))
    check(len(client.elicitation_requests) == before + 1,
          f"the elicitation callback ran {len(client.elicitation_requests) - before} times for {tool}, expected once")
    ereq = client.elicitation_requests[-1]
    check(isinstance(ereq, types.ElicitRequestFormParams) and "name" in ereq.requested_schema.get("properties", {}),
          f"elicitation/create the client received: {ereq!r}")
    rid = client.elicitation_ids[-1]
    if id_prefix is not None:
        check(isinstance(rid, str) and rid.startswith(id_prefix) and len(rid) > len(id_prefix),
              f"elicitation/create reached the client with id {rid!r}, expected a string {id_prefix}...")
    check(not r.is_error, f"{tool} answered an error: {r!r}")
    body = texts(r)
    for line in (f"- Name: Ada {client.nonce}", "- Agreed to terms: true", "- Email: ada@example.com", "- Favorite Integer: 7"):
        check(line in body, f"{tool}'s result lacks {line!r}: {body[:800]}")
    log(f"tools/call {tool}: elicitation/create (id {rid!r}) accepted by the client callback, result carries it")


async def check_resources(session: ClientSession) -> None:
    res = await step("resources/list", session.list_resources)
    uris = {str(x.uri) for x in res.resources}
    check(STATIC_DOC in uris, f"resources/list lacks {STATIC_DOC}: {sorted(uris)}")
    rr = await step("resources/read", lambda: session.read_resource(STATIC_DOC))
    doc = rr.contents[0]
    check(isinstance(doc, types.TextResourceContents) and "# Everything Server - Features" in doc.text
          and f"`{TOOL_ELICITATION}`" in doc.text, f"resources/read {STATIC_DOC}: {str(rr)[:600]}")
    log(f"resources/list: {len(res.resources)} resources; resources/read {STATIC_DOC}: {len(doc.text)} chars")

    tpl = await step("resources/templates/list", session.list_resource_templates)
    check(TEXT_TEMPLATE in {t.uri_template for t in tpl.resource_templates},
          f"resources/templates/list lacks {TEXT_TEMPLATE}: {tpl!r}")
    rr = await step("resources/read (template)", lambda: session.read_resource("demo://resource/dynamic/text/7"))
    check(isinstance(rr.contents[0], types.TextResourceContents)
          and rr.contents[0].text.startswith("Resource 7: This is a plaintext resource"), f"resources/read dynamic/text/7: {rr!r}")
    log("resources/templates/list + resources/read demo://resource/dynamic/text/7: ok")


async def get_prompts(session: ClientSession, simple: str, args: str) -> None:
    gp = await step(f"prompts/get {simple}", lambda: session.get_prompt(simple))
    check([m.content.text for m in gp.messages] == ["This is a simple prompt without arguments."], f"prompts/get {simple}: {gp!r}")
    gp = await step(f"prompts/get {args}", lambda: session.get_prompt(args, {"city": "Lisbon", "state": "Portugal"}))
    check([m.content.text for m in gp.messages] == ["What's weather in Lisbon, Portugal?"], f"prompts/get {args}: {gp!r}")


async def exercise(session: ClientSession, client: Client) -> None:
    init = await step("initialize", session.initialize)
    check(init.server_info.name == "mcp-servers/everything", f"initialize: serverInfo is {init.server_info!r}")
    check(init.capabilities.tools is not None, f"initialize: no tools capability: {init.capabilities!r}")
    check(init.capabilities.prompts is not None and init.capabilities.resources is not None,
          f"initialize: no prompts/resources capability: {init.capabilities!r}")
    log(f"initialize: {init.server_info.name} {init.server_info.version}, protocol {init.protocol_version}")

    wanted = {TOOL_ECHO, TOOL_SUM, TOOL_LONG, TOOL_SAMPLING, TOOL_ELICITATION}
    names = await list_tools_until(session, wanted)
    log(f"tools/list: {len(names)} tools, including {', '.join(sorted(wanted))}")

    await call_echo(session, client, TOOL_ECHO)
    await call_sum(session, TOOL_SUM)
    await call_long_running(session, TOOL_LONG)
    await call_sampling(session, client, TOOL_SAMPLING)
    await call_elicitation(session, client, TOOL_ELICITATION)
    await check_resources(session)

    pr = await step("prompts/list", session.list_prompts)
    pnames = {p.name for p in pr.prompts}
    check({PROMPT_SIMPLE, PROMPT_ARGS} <= pnames, f"prompts/list lacks {PROMPT_SIMPLE}/{PROMPT_ARGS}: {sorted(pnames)}")
    await get_prompts(session, PROMPT_SIMPLE, PROMPT_ARGS)
    log(f"prompts/list: {sorted(pnames)}; prompts/get {PROMPT_SIMPLE}, {PROMPT_ARGS}: ok")

    check(not client.transport_errors, f"the transport reported errors: {client.transport_errors!r}")


async def exercise_aggregated(session: ClientSession, client: Client, slugs: list[str]) -> None:
    """The aggregated route over the Streamable-HTTP integrations `slugs` (each a server-everything):
    one keygate server whose tools and prompts are `{slug}_{name}`, whose calls route by that
    prefix, and whose server-to-client requests carry ids namespaced `{slug}~{id}`."""
    a, b = slugs[0], slugs[1]
    init = await step("initialize", session.initialize)
    check(init.server_info.name == "keygate", f"initialize: serverInfo is {init.server_info!r}, expected keygate")
    check(init.capabilities.tools is not None and init.capabilities.prompts is not None
          and init.capabilities.resources is not None,
          f"initialize: no tools/prompts/resources capability: {init.capabilities!r}")
    instructions = init.instructions or ""
    for slug in slugs:
        check(f"{slug}: " in instructions and f"{slug}: unavailable" not in instructions,
              f"initialize: the instructions do not list {slug} as available: {instructions!r}")
    log(f"initialize: {init.server_info.name} {init.server_info.version}, protocol {init.protocol_version}; "
        f"instructions: {instructions!r}")

    tools_of = lambda slug: {f"{slug}_{t}" for t in (TOOL_ECHO, TOOL_SUM, TOOL_LONG, TOOL_SAMPLING, TOOL_ELICITATION)}
    wanted = tools_of(a) | tools_of(b)
    names = await list_tools_until(session, wanted)
    unprefixed = sorted(n for n in names if not any(n.startswith(f"{s}_") for s in slugs))
    check(not unprefixed, f"tools/list has names without a {'/'.join(slugs)} prefix: {unprefixed}")
    per_slug = {s: len([n for n in names if n.startswith(f"{s}_")]) for s in slugs}
    log(f"tools/list: {len(names)} tools ({per_slug}), including {', '.join(sorted(wanted))}")

    await call_echo(session, client, f"{a}_{TOOL_ECHO}")
    await call_echo(session, client, f"{b}_{TOOL_ECHO}")
    # Each prefix reaches its own process: server_everything.sh starts each upstream with
    # KEYGATE_E2E_UPSTREAM set to its integration's slug (only that variable is ever shown).
    for slug in slugs:
        r = await step(f"tools/call {slug}_{TOOL_ENV}", lambda: session.call_tool(f"{slug}_{TOOL_ENV}", {}))
        try:
            marker = json.loads(texts(r)).get("KEYGATE_E2E_UPSTREAM")
        except ValueError:
            marker = f"(not JSON, is_error={r.is_error})"
        check(not r.is_error and marker == slug,
              f"{slug}_{TOOL_ENV} was answered by the upstream with KEYGATE_E2E_UPSTREAM={marker!r}, expected {slug!r}")
    log(f"tools/call {{{','.join(slugs)}}}_{TOOL_ENV}: each answered by its own process (KEYGATE_E2E_UPSTREAM)")
    await call_sum(session, f"{b}_{TOOL_SUM}")
    await call_long_running(session, f"{a}_{TOOL_LONG}")
    # Server-to-client requests from each upstream, answered by the client through the gateway.
    await call_sampling(session, client, f"{a}_{TOOL_SAMPLING}", id_prefix=f"{a}~")
    await call_elicitation(session, client, f"{b}_{TOOL_ELICITATION}", id_prefix=f"{b}~")
    await call_sampling(session, client, f"{b}_{TOOL_SAMPLING}", id_prefix=f"{b}~")
    await call_elicitation(session, client, f"{a}_{TOOL_ELICITATION}", id_prefix=f"{a}~")

    try:  # an unknown prefix is a JSON-RPC error (or an error result), not a hang or a 5xx
        r = await step("tools/call (unknown prefix)", lambda: session.call_tool(f"nosuch_{TOOL_ECHO}", {"message": "x"}))
        check(r.is_error, f"tools/call nosuch_{TOOL_ECHO} did not fail: {r!r}")
        refusal = f"an error result: {texts(r)[:120]!r}"
    except MCPError as e:
        refusal = f"JSON-RPC error {e.code}: {e.message!r}"
    log(f"tools/call nosuch_{TOOL_ECHO}: {refusal}")

    pr = await step("prompts/list", session.list_prompts)
    pnames = {p.name for p in pr.prompts}
    pwanted = {f"{s}_{p}" for s in slugs for p in (PROMPT_SIMPLE, PROMPT_ARGS)}
    check(pwanted <= pnames, f"prompts/list lacks {sorted(pwanted - pnames)}: {sorted(pnames)}")
    await get_prompts(session, f"{a}_{PROMPT_SIMPLE}", f"{b}_{PROMPT_ARGS}")
    log(f"prompts/list: {sorted(pnames)}; prompts/get {a}_{PROMPT_SIMPLE}, {b}_{PROMPT_ARGS}: ok")

    await check_resources(session)
    await check_completions(session, b)
    await check_subscription(session, client, slugs)

    check(not client.transport_errors, f"the transport reported errors: {client.transport_errors!r}")


async def check_completions(session: ClientSession, slug: str) -> None:
    """completion/complete routes by its ref: a prompt by its aggregated name, a template by URI."""
    prompt = types.PromptReference(name=f"{slug}_{PROMPT_COMPLETABLE}")
    r = await step("completion/complete (ref/prompt)",
                   lambda: session.complete(prompt, {"name": "department", "value": "Eng"}))
    check(r.completion.values == ["Engineering"], f"completion of {slug}_{PROMPT_COMPLETABLE}: {r!r}")
    template = types.ResourceTemplateReference(uri=TEXT_TEMPLATE)
    r = await step("completion/complete (ref/resource)",
                   lambda: session.complete(template, {"name": "resourceId", "value": "7"}))
    check(r.completion.values == ["7"], f"completion of {TEXT_TEMPLATE}: {r!r}")
    log(f"completion/complete: {slug}_{PROMPT_COMPLETABLE} department -> Engineering; {TEXT_TEMPLATE} -> 7")


async def check_subscription(session: ClientSession, client: Client, slugs: list[str]) -> None:
    """resources/subscribe reaches the upstream that owns the URI, whose
    notifications/resources/updated (started by its toggle tool) reach the client."""
    await step("resources/subscribe", lambda: session.subscribe_resource(STATIC_DOC))
    toggles = [f"{slug}_{TOOL_UPDATES}" for slug in slugs]  # the owner is one of them
    for tool in toggles:
        await step(f"tools/call {tool}", lambda: session.call_tool(tool, {}))
    deadline = time.monotonic() + 8  # the server sends them every 5 s
    while STATIC_DOC not in client.updated and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    check(STATIC_DOC in client.updated,
          f"no notifications/resources/updated for {STATIC_DOC}; notifications: {client.notifications[-20:]}")
    for tool in toggles:
        await step(f"tools/call {tool}", lambda: session.call_tool(tool, {}))
    await step("resources/unsubscribe", lambda: session.unsubscribe_resource(STATIC_DOC))
    log(f"resources/subscribe {STATIC_DOC}: notifications/resources/updated reached the client; unsubscribed")


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


async def run(mode: str, mcp_url: str, email: str, password: str, slugs: list[str]) -> None:
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
        if mode in ("http", "aggregated"):
            async with traced_client(auth=provider) as http:
                async with streamable_http_client(mcp_url, http_client=http) as (r, w):
                    async with ClientSession(r, w, **callbacks) as session:
                        if mode == "http":
                            await exercise(session, client)
                        else:
                            await exercise_aggregated(session, client, slugs)
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

    # The token the SDK obtained is bound to this (pass-through or aggregated) URL.
    claims = json.loads(base64.urlsafe_b64decode((p := storage.tokens.access_token.split(".")[1]) + "=" * (-len(p) % 4)))
    check(claims.get("aud") == mcp_url, f"access token aud {claims.get('aud')!r} != {mcp_url!r}")
    route = "aggregated" if mode == "aggregated" else "pass-through"
    log(f"OAuth (DCR + PKCE + headless consent) against the {route} URL: token aud = {mcp_url}")
    base = mcp_url.split("/apps/")[0] + "/"
    strays = [t for t in TRACE if t.startswith("-> ") and not t.split(" ", 2)[2].startswith(base)]
    check(not strays, f"the client talked to something other than the gateway: {strays}")
    if mode == "sse":  # the upstream's endpoint event was rewritten to the gateway's message URL
        posts = [t for t in TRACE if t.startswith("<- ") and " POST " in t and "/oauth2/" not in t]
        check(posts and all(t.split(" ")[3].startswith(mcp_url + "/message?") for t in posts),
              f"the client did not POST to {mcp_url}/message?...: {posts[:5]}")
        check(all(t.split(" ")[1] in ("200", "202") for t in posts), f"a message POST was refused: {[t for t in posts if t.split(' ')[1] not in ('200', '202')]}")
        log(f"{len(posts)} message POSTs to {mcp_url}/message?ep=... accepted")
    if mode in ("http", "aggregated"):  # the session is terminated on close, through the gateway
        deletes = [t for t in TRACE if t.startswith("<- ") and " DELETE " in t]
        check(any(t.startswith("<- 200 ") for t in deletes), f"session DELETE did not answer 200: {deletes}")
        log("DELETE (session termination): 200")


def main() -> int:
    args = sys.argv[1:]
    ok = (len(args) == 4 and args[0] in ("http", "sse")) or (
        len(args) == 5 and args[0] == "aggregated" and len(args[4].split(",")) >= 2)
    if not ok:
        print(__doc__, file=sys.stderr)
        return 2
    mode = args[0]
    slugs = args[4].split(",") if mode == "aggregated" else []
    try:
        asyncio.run(asyncio.wait_for(run(*args[:4], slugs), timeout=45))
    except (Failure, TimeoutError) as e:
        print(f"FAIL [{mode}]: {e or 'timed out after 45s'}", file=sys.stderr)
        print("passed before that:\n  " + ("\n  ".join(PASSED) or "(nothing)"), file=sys.stderr)
        print("SDK requests:\n" + "\n".join(TRACE[-40:]), file=sys.stderr)
        return 1
    print(f"[{mode}] " + f"\n[{mode}] ".join(PASSED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
