"""The official MCP Python SDK's OAuth client against keygate, driven headlessly.

Given nothing but an application's MCP URL, `mcp.client.auth.OAuthClientProvider` must discover
the protected-resource and authorization-server metadata, register itself dynamically, run the
authorization-code flow with PKCE and an RFC 8707 resource indicator, and come back with an
access token for that MCP URL. The "browser" (headless_oauth.py) is httpx2, what the pinned SDK
itself uses, posting the login and consent forms the way a person would.

The application has no integrations attached, so after the OAuth dance the aggregated endpoint
initializes as an empty MCP server: initialize must succeed with the token the SDK obtained.

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

    # The OAuth dance happens inside the first MCP request (initialize), which then succeeds.
    mcp_error: BaseException | None = None
    server_name = None
    hooks = {"request": [trace_request], "response": [trace_response]}
    try:
        async with httpx2.AsyncClient(auth=provider, timeout=15, event_hooks=hooks) as http:
            async with streamable_http_client(mcp_url, http_client=http, terminate_on_close=False) as (r, w):
                async with ClientSession(r, w, read_timeout_seconds=15) as session:
                    init_result = await session.initialize()
                    server_name = init_result.server_info.name
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

    # With the token, the SDK initialized a session on the aggregated endpoint.
    check(mcp_error is None, f"initialize() failed after OAuth: {mcp_error!r}")
    check(server_name == "keygate", f"serverInfo.name is {server_name!r}, expected 'keygate'")

    # --- the token is really accepted by the gateway, and required ---
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    hdrs = {"Accept": "application/json, text/event-stream"}
    # One connection per request: a 401 is answered before the body is read (the gateway then
    # sends `Connection: close`), so a fresh connection keeps the checks independent.
    async with httpx2.AsyncClient(timeout=15) as c:
        r = await c.post(mcp_url, json=init, headers={**hdrs, "Authorization": f"Bearer {tokens.access_token}"})
    check(r.status_code == 200, f"POST {mcp_url} with the token -> {r.status_code}, expected 200: {r.text[:600]}")
    check(bool(r.headers.get("mcp-session-id")), "initialize answered without an Mcp-Session-Id")
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
