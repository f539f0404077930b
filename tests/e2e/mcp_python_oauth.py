"""The official MCP Python SDK's OAuth client against keygate, driven headlessly.

Given nothing but an application's MCP URL, `mcp.client.auth.OAuthClientProvider` must discover
the protected-resource and authorization-server metadata, register itself dynamically, run the
authorization-code flow with PKCE and an RFC 8707 resource indicator, and come back with an
access token for that MCP URL. The "browser" (headless_oauth.py) is httpx2, what the pinned SDK
itself uses, posting the login and consent forms the way a person would.

The MCP proxy is not built yet, so the MCP request that follows the OAuth dance answers 501:
that failure is expected and tolerated; everything about the token is asserted.

Usage: python mcp_python_oauth.py URL MCP_URL EMAIL PASSWORD
"""

import asyncio
import base64
import json
import os
import sys
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from headless_oauth import REDIRECT_URI, Failure, check, find_failure, oauth_provider

VERBOSE = os.environ.get("KEYGATE_E2E_VERBOSE") == "1"
TRACE: list[str] = []  # every request the SDK's HTTP client made, and its answer


def jwt_claims(token: str) -> dict:
    parts = token.split(".")
    check(len(parts) == 3, f"access token is not a JWT: {token[:40]}...")
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    check(header.get("alg") == "ES256", f"JWT alg is {header.get('alg')}, expected ES256")
    return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))


async def trace_request(request: httpx2.Request) -> None:
    TRACE.append(f"-> {request.method} {request.url}")


async def trace_response(response: httpx2.Response) -> None:
    body = ""
    if "event-stream" not in response.headers.get("content-type", ""):  # never wait on a stream
        await response.aread()
        body = response.text[:300].replace("\n", " ")
    TRACE.append(f"<- {response.status_code} {response.request.method} {response.request.url} {body}")


async def run(base_url: str, mcp_url: str, email: str, password: str) -> None:
    provider, storage, browser = oauth_provider(mcp_url, email, password, "python-mcp-e2e")

    # The OAuth dance happens inside the first MCP request; that request then gets 501 from the
    # not-yet-built proxy, which surfaces as an error from initialize() (or the transport).
    mcp_error: BaseException | None = None
    hooks = {"request": [trace_request], "response": [trace_response]}
    try:
        async with httpx2.AsyncClient(auth=provider, timeout=15, event_hooks=hooks) as http:
            async with streamable_http_client(mcp_url, http_client=http, terminate_on_close=False) as (r, w):
                async with ClientSession(r, w, read_timeout_seconds=15) as session:
                    await session.initialize()
    except Exception as e:  # ExceptionGroup included
        mcp_error = e
    if VERBOSE:
        print(f"MCP session ended with: {mcp_error!r}", file=sys.stderr)
    browser_failure = find_failure(mcp_error)
    if browser_failure is not None:  # the headless browser's own check, raised inside the SDK
        raise browser_failure

    # --- the OAuth part completed ---
    check(browser.authorize_url is not None, f"the SDK never opened the authorization URL (MCP error: {mcp_error!r})")
    q = parse_qs(urlsplit(browser.authorize_url).query)
    check(q.get("code_challenge_method") == ["S256"], f"authorize URL lacks code_challenge_method=S256: {browser.authorize_url}")
    check(len(q.get("code_challenge", [""])[0]) >= 43, f"authorize URL lacks a PKCE code_challenge: {browser.authorize_url}")
    check(urlencode({"resource": mcp_url}) in browser.authorize_url, f"authorize URL lacks resource={mcp_url}: {browser.authorize_url}")
    check(q.get("redirect_uri") == [REDIRECT_URI], f"authorize URL redirect_uri is {q.get('redirect_uri')}")

    info = storage.client_info
    check(info is not None, f"no client registration was stored (MCP error: {mcp_error!r})")
    check(info.client_id.startswith("mcp_"), f"registered client_id {info.client_id!r} does not start with mcp_")
    check(q.get("client_id") == [info.client_id], f"authorize URL client_id {q.get('client_id')} != registered {info.client_id}")

    tokens = storage.tokens
    check(tokens is not None, f"no tokens were stored (MCP error: {mcp_error!r})")
    claims = jwt_claims(tokens.access_token)
    check(claims.get("aud") == mcp_url, f"access token aud {claims.get('aud')!r} != {mcp_url!r}")
    check(claims.get("client_id") == info.client_id, f"access token client_id {claims.get('client_id')!r} != {info.client_id!r}")
    check(bool(claims.get("sid")), f"access token has no sid: {claims}")
    check(bool(claims.get("sub")), f"access token has no sub: {claims}")

    # The SDK did send its token to the MCP URL and got past authentication (501, not 401).
    mcp_posts = [t for t in TRACE if t.startswith("<- ") and f" POST {mcp_url} " in t]
    check(any(t.startswith("<- 501 ") for t in mcp_posts), f"the SDK's authenticated MCP request did not reach the 501 proxy stub: {mcp_posts}")
    check(mcp_error is not None, "initialize() succeeded, but the MCP proxy is a 501 stub: update this test")

    # --- the token is really accepted by the gateway, and required ---
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    hdrs = {"Accept": "application/json, text/event-stream"}
    # One connection per request: the gateway answers these without reading the request body and
    # then drops the keep-alive connection (no `Connection: close`), so a second request reusing
    # it can fail with "Server disconnected" when httpx2 wrote the body after the headers.
    async with httpx2.AsyncClient(timeout=15) as c:
        r = await c.post(mcp_url, json=init, headers={**hdrs, "Authorization": f"Bearer {tokens.access_token}"})
    check(r.status_code == 501, f"POST {mcp_url} with the token -> {r.status_code}, expected 501: {r.text[:600]}")
    async with httpx2.AsyncClient(timeout=15) as c:
        r = await c.post(mcp_url, json=init, headers=hdrs)
    check(r.status_code == 401, f"POST {mcp_url} without a token -> {r.status_code}, expected 401: {r.text[:600]}")
    check("resource_metadata=" in r.headers.get("www-authenticate", ""), "401 lacks WWW-Authenticate resource_metadata")

    if VERBOSE:
        print("\n".join(["SDK requests:", *TRACE, "browser:", *browser.steps, f"claims: {claims}"]), file=sys.stderr)


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        asyncio.run(asyncio.wait_for(run(*sys.argv[1:]), timeout=60))
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        print("SDK requests:\n" + "\n".join(TRACE), file=sys.stderr)
        return 1
    except TimeoutError:
        print("FAIL: timed out after 60s", file=sys.stderr)
        print("SDK requests:\n" + "\n".join(TRACE), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
