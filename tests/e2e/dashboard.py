"""The dashboard (/ui) in a real headless Chromium, driven over WebDriver.

The WebDriver client is a few lines of the W3C protocol over urllib (chromedriver speaks it
directly), so no browser-automation package is needed. Owner: sign in through keygate's own
sign-in and consent pages, create an integration (server-everything) and validate it, create an
application, attach the integration, read the MCP URL from the page, connect the official MCP
Python SDK to it and call `echo`, see the call appear live on the traces page, revoke the agent
session on the sessions page and see the agent's token refused, create a service account and
see its secret once; write a policy on the policies page (a problem shown at its line first),
try a decision with it, and see the access graph drawn with its policy overlay (at 1280 px
and in a narrow window). Then: the CSP header, a form
POST without its CSRF token refused, no request to another origin; and a member sees her own
sessions only and no form to change the organization.

Usage: python dashboard.py URL UPSTREAM_MCP_URL CHROMEDRIVER_URL OWNER_EMAIL MEMBER_EMAIL PASSWORD
"""

import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from headless_oauth import Failure, check, find_failure, oauth_provider

URL, UPSTREAM, DRIVER, OWNER, MEMBER, PASSWORD = sys.argv[1:7]
SHOTS = os.environ.get("KEYGATE_E2E_SCREENSHOTS")  # a directory: save the main pages there
AXE = os.environ["KEYGATE_E2E_AXE_JS"]  # axe.min.js (pinned by tests/e2e/axe)


def log(line: str) -> None:
    print(f"  ok: {line}", file=sys.stderr)


class Browser:
    """One Chromium session over chromedriver's W3C WebDriver endpoint."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="kg-chromium-")
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", f"--user-data-dir={self.profile}"],
            },
        }}}
        self.sid = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{DRIVER}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise Failure(f"webdriver {method} {path}: {e.read()[:400]!r}") from None

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.sid}{path}", body)

    def go(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def url(self) -> str:
        return self.cmd("GET", "/url")

    def js(self, script: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> str:
        el = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(el.values()))

    def finds(self, css: str) -> list[str]:
        return [next(iter(e.values())) for e in
                self.cmd("POST", "/elements", {"using": "css selector", "value": css})]

    def type(self, css: str, text: str) -> None:
        el = self.find(css)
        self.cmd("POST", f"/element/{el}/clear", {})
        self.cmd("POST", f"/element/{el}/value", {"text": text})

    def click(self, css: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/click", {})

    def text(self, css: str = "body") -> str:
        return self.cmd("GET", f"/element/{self.find(css)}/text")

    def wait(self, what: str, cond, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except Failure:
                pass
            time.sleep(0.2)
        raise Failure(f"timed out waiting for {what}; page {self.url()}: {self.text()[:600]!r}")

    def screenshot(self, name: str) -> None:
        if SHOTS:
            import base64
            png = base64.b64decode(self.cmd("GET", "/screenshot"))
            with open(os.path.join(SHOTS, f"{name}.png"), "wb") as f:
                f.write(png)

    def foreign_requests(self) -> list[str]:
        """Every resource this page loaded from another origin than the gateway's."""
        urls = self.js("return performance.getEntriesByType('resource').map(e => e.name)"
                       ".concat([location.href])")
        origin = urlsplit(URL)
        return [u for u in urls if (urlsplit(u).scheme, urlsplit(u).netloc) != (origin.scheme, origin.netloc)]

    def resize(self, width: int, height: int) -> None:
        self.cmd("POST", "/window/rect", {"width": width, "height": height})

    def overflows(self) -> bool:
        """Whether the page is wider than the window (a horizontal scroll bar)."""
        return self.js("return document.documentElement.scrollWidth > window.innerWidth + 1")

    def close(self) -> None:
        try:
            self.cmd("DELETE", "")
        except Failure:
            pass


def accessible(b: Browser, page: str) -> None:
    """axe-core over the page: no serious or critical violation (WCAG 2 A/AA rules)."""
    with open(AXE) as f:
        engine = f.read()
    # WebDriver's script execution is not page script, so the CSP does not stand in its way;
    # the page itself still loads nothing but its own assets.
    b.js(engine)
    result = b.cmd("POST", "/execute/async", {"script": """
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}})
          .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact,
                 nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 3)}))),
                e => done([{id: 'axe failed: ' + e, impact: 'critical', nodes: []}]));
    """, "args": []})
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    check(not bad, f"accessibility violations on {page}: {bad}")
    if result:
        log(f"{page}: minor accessibility findings {[v['id'] for v in result]}")


def sign_in(b: Browser, email: str) -> None:
    b.go(f"{URL}/ui/")
    b.wait("the sign-in form", lambda: b.finds("input#email"))
    check(urlsplit(b.url()).path == "/oauth2/login", f"/ui/ led to {b.url()}, not the sign-in page")
    accessible(b, "/oauth2/login")
    check(not b.foreign_requests(), "the sign-in page loaded from another origin")
    b.type("input#email", email)
    b.type("input#password", PASSWORD)
    b.click("button[type=submit]")
    b.wait("consent or the dashboard", lambda: b.finds("button[name=approve]") or "/ui/" in b.url())
    if b.finds("button[name=approve]"):
        page = b.text("main")
        check("keygate (its dashboard" in page and "unverified" not in page, f"consent page: {page[:300]!r}")
        check("Returns you to" in page and "Resource" in page, f"the consent page lacks the resource or redirect host: {page[:400]!r}")
        accessible(b, "/oauth2/consent")
        b.screenshot("consent")
        b.click("button[name=approve]")
    b.wait("the dashboard", lambda: urlsplit(b.url()).path == "/ui/" and b.finds("h1"))
    check(email in b.text("header"), f"the header does not name {email}: {b.text('header')!r}")
    log(f"signed in as {email} through /oauth2/login and consent")


def submit_form(b: Browser, form_css: str) -> None:
    b.click(f"{form_css} button[type=submit]")


def create_integration(b: Browser) -> None:
    b.go(f"{URL}/ui/integrations")
    check("No integrations yet" in b.text("main"), "no empty state on the integrations page")
    b.type("#int-name", "everything")
    b.type("#int-url", UPSTREAM)
    submit_form(b, "form[action='/ui/integrations']")
    b.wait("the integration's row", lambda: "everything" in b.text("table"))
    check("created" in b.text(".notice"), f"notice: {b.text('.notice')!r}")
    b.click("button[aria-label='Validate everything']")
    b.wait("the validation result", lambda: "Validation:" in b.text(".notice"))
    status = b.js("return document.querySelector('td.validation').dataset.status")
    check(status == "valid", f"validation status is {status!r}: {b.text('.notice')!r}")
    log(f"integration created and validated: {b.text('.notice')!r}")
    b.screenshot("integrations")


def create_application(b: Browser) -> str:
    b.go(f"{URL}/ui/applications")
    b.type("#app-name", "dash-e2e")
    submit_form(b, "form[action='/ui/applications']")
    b.wait("the application's card", lambda: "dash-e2e" in b.text("main"))
    b.click("form.inline button[type=submit]")  # attach the one integration offered
    b.wait("the attachment", lambda: "Integration attached" in b.text(".notice"))
    mcp_url = b.js("return document.querySelector(\"input[id$='-everything']\").value")
    check(mcp_url.startswith(f"{URL}/apps/") and mcp_url.endswith("/mcp/everything"), f"MCP URL {mcp_url!r}")
    b.click("button.copy")  # the copy button runs (the clipboard itself is not checked headless)
    log(f"application created, integration attached, MCP URL read from the page: {mcp_url}")
    b.screenshot("applications")
    return mcp_url


async def connect_agent(mcp_url: str, email: str):
    """An MCP SDK client signed in as `email` that calls echo once; answers its access token."""
    provider, storage, _ = oauth_provider(mcp_url, email, PASSWORD, f"dashboard-e2e agent of {email}")
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with streamable_http_client(mcp_url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await session.list_tools()  # the gateway remembers the tools' annotations
                r = await session.call_tool("echo", {"message": f"hello from {email}"})
                check(not r.is_error, f"echo failed: {r!r}")
    return storage.tokens.access_token


async def agent_round_trip(b: Browser, mcp_url: str) -> None:
    b.go(f"{URL}/ui/traces")
    b.wait("the live tail", lambda: "Live" in b.text("#tail-state"))
    token = await connect_agent(mcp_url, OWNER)
    log("the MCP SDK connected to the page's MCP URL and called echo")
    b.wait("the echo call on the traces page, live",
           lambda: any("echo" in b.cmd("GET", f"/element/{row}/text")
                       for row in b.finds("#events tr.live")))
    log("the call appeared live on the traces page")
    b.screenshot("traces")

    b.go(f"{URL}/ui/sessions")
    b.wait("an agent session", lambda: b.finds("tr.session"))
    b.screenshot("sessions")
    b.click("form[action$='/sessions/revoke'] button")
    b.wait("the revocation", lambda: "revoked" in b.text(".notice"))
    async with httpx2.AsyncClient(timeout=30) as raw:
        r = await raw.post(mcp_url, headers={"Authorization": f"Bearer {token}",
                                             "Accept": "application/json, text/event-stream"},
                           json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    check(r.status_code == 401, f"the revoked agent's token got {r.status_code}, not 401")
    log("revoked on the sessions page: the agent's token is refused (401)")


def service_account_reveal(b: Browser) -> None:
    b.go(f"{URL}/ui/service-accounts")
    b.type("#sa-name", "ci-bot")
    submit_form(b, "form[action='/ui/service-accounts']")
    b.wait("the one-time secret", lambda: b.finds("#sa-secret"))
    secret = b.js("return document.getElementById('sa-secret').value")
    check(len(secret) >= 32, f"the revealed secret is {secret!r}")
    b.go(f"{URL}/ui/service-accounts")
    check("ci-bot" in b.text("table"), "the new service account is not listed")
    check(not b.finds("#sa-secret") and secret not in b.js("return document.documentElement.outerHTML"),
          "the secret is shown again")
    log("service account created; its secret shown once, not again")


# Members may call read-only tools and echo; everything else stays allowed to owners and admins.
POLICY = """permit (principal, action, resource);
forbid (principal, action == Action::"call_tool", resource)
when { principal.role == "member" && !resource.readOnlyHint && resource.name != "echo" };"""


def policies_page(b: Browser) -> None:
    b.go(f"{URL}/ui/policies")
    check("No policies yet" in b.text("main"), "no empty state on the policies page")
    b.type("#policy-name", "members read only")
    b.type("#policy-text", "permit (principal, action, resource)\nwhen { resource.nmae == \"x\" };")
    submit_form(b, "form[action='/ui/policies']")
    b.wait("the policy's problems", lambda: b.finds("a.problem"))
    line = b.js("return document.querySelector('a.problem').dataset.line")
    check(line == "2", f"the problem is placed on line {line!r}, not 2: {b.text('.problems')!r}")
    b.click("a.problem")
    caret = b.js("const t = document.getElementById('policy-text'); "
                 "return [document.activeElement === t, t.value.slice(0, t.selectionStart).split('\\n').length]")
    check(caret == [True, 2], f"the problem link put the caret at {caret!r}, not on line 2")
    log(f"a policy with a problem is refused, shown at line 2: {b.text('.problems')!r}")
    b.type("#policy-text", POLICY)
    submit_form(b, "form[action='/ui/policies']")
    b.wait("the created policy", lambda: "created" in b.text(".notice"))
    b.type("#try-email", MEMBER)
    b.js("document.getElementById('try-role').value = 'member'")
    b.type("#try-tool", "add")
    submit_form(b, "form[action='/ui/policies/evaluate']")
    b.wait("the decision", lambda: b.finds("#decision"))
    check("deny" in b.text("#decision") and "members read only" in b.text("#decision"),
          f"decision: {b.text('#decision')!r}")
    log(f"try a decision: {b.text('#decision')!r}")
    accessible(b, "/ui/policies")
    b.screenshot("policies")


def access_graph_page(b: Browser) -> None:
    b.go(f"{URL}/ui/access-graph")
    b.wait("the drawing", lambda: b.finds("svg#access-graph .node"))
    kinds = b.js("return [...document.querySelectorAll('svg .node')].map(n => n.classList[1])")
    for kind in ("node-application", "node-integration", "node-user"):
        check(kind in kinds, f"no {kind} drawn: {kinds}")
    check(b.finds("svg .edge.attached"), "no attachment drawn")
    overlay = b.js("return [...document.querySelectorAll('svg .edge.policy')].map(e => e.classList[2])")
    check("policy-partial" in overlay, f"the overlay shows no partly allowed member: {overlay}")
    table = b.text("table.policy-access")
    check(MEMBER in table and "denied" in table and "echo" in table, f"the overlay table: {table[:500]!r}")
    first_app = b.js("return document.querySelector('svg .node-application').dataset.node")
    b.js("const s = document.getElementById('graph-focus'); s.value = arguments[0]; "
         "s.dispatchEvent(new Event('change'))", first_app)
    check(b.js("return document.querySelector('figure.graph').classList.contains('focused')"),
          "choosing a node does not highlight it")
    b.js("const s = document.getElementById('graph-focus'); s.value = ''; s.dispatchEvent(new Event('change'))")
    accessible(b, "/ui/access-graph")
    check(not b.overflows(), "the access graph is wider than 1280 px")
    b.screenshot("access-graph")
    b.resize(420, 900)
    try:
        for page in ("/ui/access-graph", "/ui/policies", "/ui/applications"):
            b.go(f"{URL}{page}")
            check(not b.overflows(), f"{page} is wider than a narrow (420 px) window")
    finally:
        b.resize(1280, 1000)
    log(f"access graph drawn with its policy overlay {sorted(set(overlay))}, usable at 1280 and 420 px")


def security_checks(b: Browser) -> None:
    with urllib.request.urlopen(f"{URL}/ui/signed-out") as r:
        csp = r.headers["Content-Security-Policy"] or ""
    check("default-src 'self'" in csp and "unsafe-inline" not in csp, f"CSP {csp!r}")
    log(f"CSP: {csp}")
    # A form POST with the session cookie but without the CSRF token, from the page itself.
    status = b.cmd("POST", "/execute/async", {"script": """
        const done = arguments[arguments.length - 1];
        fetch('/ui/applications', {method: 'POST', body: new URLSearchParams({name: 'forged'}),
              redirect: 'manual'}).then(r => done(r.status), e => done(String(e)));
    """, "args": []})
    check(status == 403, f"a POST without the CSRF token answered {status}")
    b.go(f"{URL}/ui/applications")
    check("forged" not in b.text("main"), "the forged application was created")
    log("a form POST without its CSRF token is refused (403)")
    for page in ["/ui/", "/ui/applications", "/ui/integrations", "/ui/traces", "/ui/sessions",
                 "/ui/connections", "/ui/service-accounts", "/ui/policies", "/ui/access-graph"]:
        b.go(f"{URL}{page}")
        foreign = b.foreign_requests()
        check(not foreign, f"{page} loaded from other origins: {foreign}")
        accessible(b, page)
    log("no page loaded anything from another origin; axe-core finds no serious violation")
    b.go(f"{URL}/ui/")
    b.screenshot("overview")


async def member_view(b: Browser, owner: Browser, mcp_url: str) -> None:
    await connect_agent(mcp_url, OWNER)  # a live session of the owner's, which she must not see
    await connect_agent(mcp_url, MEMBER)
    owner.go(f"{URL}/ui/sessions")
    check(len(owner.finds("tr.session")) == 2, f"the owner sees {len(owner.finds('tr.session'))} live sessions, not 2")
    b.go(f"{URL}/ui/sessions")
    rows = b.finds("tr.session")
    check(len(rows) == 1, f"the member sees {len(rows)} sessions, not her one: {b.text('main')[:400]!r}")
    b.go(f"{URL}/ui/applications")
    check(not b.finds("form[action='/ui/applications']"), "the member is offered to create applications")
    check(not b.finds("form.inline"), "the member is offered to attach integrations")
    check("dash-e2e" in b.text("main"), "the member does not see the application's MCP URL")
    b.go(f"{URL}/ui/integrations")
    check(not b.finds("form[action$='/validate']"), "the member is offered to validate")
    check(not b.finds("a[href='/ui/service-accounts']"), "the member is offered service accounts")
    b.go(f"{URL}/ui/connections")
    check("No integration asks for your own credentials" in b.text("main"),
          f"my connections: {b.text('main')[:300]!r}")
    log("the member sees only her own sessions and no form to change the organization")
    b.click("form.signout button[type=submit]")
    b.wait("the signed-out page", lambda: urlsplit(b.url()).path == "/ui/signed-out")
    answer = b.cmd("POST", "/execute/async", {"script": """
        const done = arguments[arguments.length - 1];
        fetch('/ui/sessions', {redirect: 'manual'}).then(r => done(r.type), e => done(String(e)));
    """, "args": []})
    check(answer == "opaqueredirect", f"after sign-out /ui/sessions answered {answer!r}, not a redirect to sign in")
    log("signed out: the dashboard sends the browser to sign in again")


async def main() -> None:
    owner = Browser()
    try:
        sign_in(owner, OWNER)
        create_integration(owner)
        mcp_url = create_application(owner)
        await agent_round_trip(owner, mcp_url)
        service_account_reveal(owner)
        policies_page(owner)
        security_checks(owner)
        member = Browser()
        try:
            sign_in(member, MEMBER)
            await member_view(member, owner, mcp_url)
        finally:
            member.close()
        access_graph_page(owner)
    finally:
        owner.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BaseException as e:  # noqa: BLE001 - report the first failure, however it is wrapped
        failure = find_failure(e)
        print(f"FAIL: {failure or repr(e)}", file=sys.stderr)
        sys.exit(1)
    print("dashboard: ok", file=sys.stderr)
