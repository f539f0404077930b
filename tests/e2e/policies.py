"""Tool policies through keygate with the official MCP Python SDK (`ClientSession`), for
policies.sh: a member's and the owner's clients on the pass-through route (MCP_URL/SLUG) and the
aggregated route (MCP_URL), over policy_upstream.py, whose calls log (CALLS_LOG) says which
calls reached it. Policies are written through the management API (API_URL, MGMT_TOKEN); after
each change the clients start new sessions. In each case `POST /policies/evaluate` must agree
with what the gateway did.

1. no policies: everything is listed and callable, as without the policy stage;
2. a forbid of one tool (`delete_repo`) for the member: absent from both routes' lists and
   refused (-32043 naming the policy) on both, the upstream never contacted; the owner unaffected;
3. an argument condition: `transfer` only below 100;
4. an annotation condition: members may only use read-only tools.

Usage: python policies.py MCP_URL SLUG API_URL CALLS_LOG
(env: MGMT_TOKEN, MEMBER_ID, MEMBER_EMAIL, OWNER_ID, OWNER_EMAIL, and user tokens
MEMBER_AGG, MEMBER_PASS, OWNER_AGG, OWNER_PASS for the aggregated and pass-through URLs)
"""

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from headless_oauth import Failure, check, find_failure

DENIED = -32043
MCP_URL, SLUG, API_URL, CALLS_LOG = sys.argv[1:5]
ENV = os.environ
PASSED: list[str] = []


def log(line: str) -> None:
    print(f"[policies.py] {line}", flush=True)


def calls() -> list[str]:
    try:
        with open(CALLS_LOG) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


class Api:
    """The management API, as the service account."""

    def __init__(self) -> None:
        self.http = httpx2.AsyncClient(
            base_url=API_URL, headers={"Authorization": f"Bearer {ENV['MGMT_TOKEN']}"}, timeout=15)
        self.ids: list[str] = []

    async def policy(self, name: str, text: str) -> str:
        r = await self.http.post("/policies", json={"name": name, "text": text})
        check(r.status_code == 201, f"create policy {name}: {r.status_code} {r.text[:300]}")
        pid = r.json()["policy"]["id"]
        self.ids.append(pid)
        return pid

    async def clear(self) -> None:
        for pid in self.ids:
            r = await self.http.delete(f"/policies/{pid}")
            check(r.status_code == 204, f"delete policy {pid}: {r.status_code}")
        self.ids.clear()

    async def evaluate(self, who: str, tool: str, arguments: dict[str, Any], read_only: bool) -> dict[str, Any]:
        body = {
            "principal": {"id": ENV[f"{who}_ID"], "email": ENV[f"{who}_EMAIL"],
                          "role": "owner" if who == "OWNER" else "member"},
            "action": "call_tool",
            "resource": {"name": tool, "integration": {"slug": SLUG, "host": "127.0.0.1"},
                         "application": ENV["APP_ID"],
                         "annotations": {"readOnlyHint": read_only, "destructiveHint": not read_only}},
            "context": {"arguments": arguments},
        }
        r = await self.http.post("/policies/evaluate", json=body)
        check(r.status_code == 200, f"evaluate: {r.status_code} {r.text[:300]}")
        return r.json()


@asynccontextmanager
async def session(who: str, route: str) -> AsyncIterator[tuple[ClientSession, str]]:
    """A session of `who` (MEMBER, OWNER) on `route` (pass, agg), and the tool name prefix."""
    url, prefix = (f"{MCP_URL}/{SLUG}", "") if route == "pass" else (MCP_URL, f"{SLUG}_")
    token = ENV[f"{who}_{route.upper()}"]
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(15, read=30)) as http:
        async with streamable_http_client(url, http_client=http) as (r, w):
            async with ClientSession(r, w, read_timeout_seconds=15) as s:
                await s.initialize()
                yield s, prefix


async def listed(who: str, route: str) -> set[str]:
    async with session(who, route) as (s, prefix):
        tools = (await s.list_tools()).tools
        return {t.name.removeprefix(prefix) for t in tools}


async def call(who: str, route: str, tool: str, arguments: dict[str, Any]) -> tuple[bool, MCPError | None]:
    """Whether the call was answered (True) or denied by policy (the error)."""
    async with session(who, route) as (s, prefix):
        try:
            result = await s.call_tool(prefix + tool, arguments)
        except MCPError as e:
            check(e.error.code == DENIED, f"{who} {route} {tool}: error {e.error.code} {e.error.message}")
            return False, e
        check(not result.is_error, f"{who} {route} {tool}: tool error {result}")
        return True, None


async def expect(api: Api, who: str, tool: str, arguments: dict[str, Any], read_only: bool,
                 allowed: bool, policy_ids: list[str] | None = None) -> None:
    """On both routes: `who` calling `tool` is allowed or denied (naming `policy_ids`), reaches the
    upstream only when allowed, and `evaluate` says the same."""
    for route in ("pass", "agg"):
        before = calls().count(tool)
        ok, error = await call(who, route, tool, arguments)
        check(ok == allowed, f"{who} {route} {tool}({arguments}): allowed={ok}, expected {allowed}")
        reached = calls().count(tool) - before
        check(reached == (1 if allowed else 0), f"{who} {route} {tool}: {reached} call(s) reached the upstream")
        if error is not None and policy_ids is not None:
            got = (error.error.data or {}).get("policyIds")
            check(got == policy_ids, f"{who} {route} {tool}: policyIds {got}, expected {policy_ids}")
    dry = await api.evaluate(who, tool, arguments, read_only)
    check(dry["decision"] == ("allow" if allowed else "deny"), f"evaluate {who} {tool}({arguments}): {dry}")
    if policy_ids is not None and not allowed:
        check(dry["policyIds"] == policy_ids, f"evaluate {who} {tool}: {dry}")


ALL = {"read_note", "transfer", "delete_repo", "send_email"}


async def run() -> None:
    api = Api()

    # 1. No policies: everything as before.
    for who in ("MEMBER", "OWNER"):
        for route in ("pass", "agg"):
            got = await listed(who, route)
            check(got == ALL, f"{who} {route} lists {got}")
    await expect(api, "MEMBER", "delete_repo", {"name": "x"}, False, True)
    PASSED.append("no policies: everything listed and callable on both routes")

    # 2. A forbid by user and tool.
    await api.policy("everyone", "permit (principal, action, resource);")
    forbid = await api.policy("no delete for the member", f'''forbid (principal == User::"{ENV['MEMBER_ID']}",
  action == Action::"call_tool", resource) when {{ resource.name == "delete_repo" }};''')
    for route in ("pass", "agg"):
        got = await listed("MEMBER", route)
        check(got == ALL - {"delete_repo"}, f"member {route} lists {got}")
        got = await listed("OWNER", route)
        check(got == ALL, f"owner {route} lists {got}")
    await expect(api, "MEMBER", "delete_repo", {"name": "x"}, False, False, [forbid])
    await expect(api, "OWNER", "delete_repo", {"name": "x"}, False, True)
    await api.clear()
    PASSED.append("a forbid by user and tool: hidden and refused on both routes, never sent upstream")

    # 3. An argument condition.
    await api.policy("everyone", "permit (principal, action, resource);")
    limit = await api.policy("transfers below 100", '''forbid (principal, action == Action::"call_tool", resource)
when { resource.name == "transfer" && !(context.arguments has amount && context.arguments.amount < 100) };''')
    check(await listed("MEMBER", "pass") == ALL, "transfer stays listed: some calls are allowed")
    await expect(api, "MEMBER", "transfer", {"amount": 42}, False, True)
    await expect(api, "MEMBER", "transfer", {"amount": 500}, False, False, [limit])
    await api.clear()
    PASSED.append("an argument condition: transfer below 100 only")

    # 4. An annotation condition (the annotations come from the upstream's tools/list).
    await api.policy("members read only", '''permit (principal, action, resource)
when { principal.role != "member" || resource.readOnlyHint };''')
    for route in ("pass", "agg"):
        got = await listed("MEMBER", route)
        check(got == {"read_note"}, f"member {route} lists {got}")
    await expect(api, "MEMBER", "read_note", {}, True, True)
    await expect(api, "MEMBER", "transfer", {"amount": 1}, False, False, [])
    await expect(api, "OWNER", "transfer", {"amount": 1}, False, True)
    await api.clear()
    PASSED.append("an annotation condition: members use read-only tools only")


def main() -> int:
    try:
        asyncio.run(run())
    except BaseException as e:  # noqa: BLE001 - a failure is reported, whatever it is
        failure = find_failure(e)
        log(f"FAIL: {failure if failure else repr(e)}")
        for p in PASSED:
            log(f"passed: {p}")
        return 1
    for p in PASSED:
        log(f"ok: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
