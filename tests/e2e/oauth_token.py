"""Prints a user's access token for one of keygate's MCP URLs, for e2e clients that take a static token.

Runs the official MCP Python SDK's OAuth flow (`OAuthClientProvider`: discovery, dynamic client
registration, authorization code + PKCE with an RFC 8707 resource indicator) with the headless
login + consent of headless_oauth.py, triggered by one unauthenticated JSON-RPC `ping` POSTed to
MCP_URL (whatever the gateway answers to that ping once authorized does not matter here; no MCP
session is opened). Checks that the token's `aud` is MCP_URL, then prints the token on stdout.

Usage: python oauth_token.py MCP_URL EMAIL PASSWORD
"""

import asyncio
import base64
import json
import sys

import httpx2

from headless_oauth import Failure, check, find_failure, oauth_provider


async def token_for(mcp_url: str, email: str, password: str) -> str:
    provider, storage, browser = oauth_provider(mcp_url, email, password, "oauth-token-e2e")
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    try:
        async with httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(15)) as http:
            async with http.stream("POST", mcp_url, json=ping, headers=headers):
                pass  # never read the body: only the OAuth flow the first 401 set off matters
    except Exception as e:  # ExceptionGroup included
        raise find_failure(e) or Failure(f"the OAuth flow for {mcp_url} failed: {e!r} (browser steps: {browser.steps})")
    check(storage.tokens is not None, f"no token for {mcp_url} (browser steps: {browser.steps})")
    token = storage.tokens.access_token
    p = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    check(claims.get("aud") == mcp_url, f"access token aud {claims.get('aud')!r} != {mcp_url!r}")
    return token


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        token = asyncio.run(asyncio.wait_for(token_for(*sys.argv[1:]), timeout=30))
    except (Failure, TimeoutError) as e:
        print(f"FAIL [oauth_token]: {e or 'timed out after 30s'}", file=sys.stderr)
        return 1
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
