"""Headless OAuth for the official MCP Python SDK against keygate, shared by the e2e tests.

`OAuthClientProvider` (given nothing but an MCP URL, application-wide or pass-through) discovers
the metadata, registers itself dynamically and runs the authorization-code flow with PKCE and an
RFC 8707 resource indicator; `HeadlessBrowser` plays the user: it follows the gateway's redirects,
logs in and approves consent with httpx2 (what the pinned SDK itself uses), and hands the code
back to the SDK.
"""

from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

REDIRECT_URI = "http://localhost:3000/callback"


class Failure(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failure(what)


class MemoryStorage:
    """The SDK's `TokenStorage` protocol, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class FormParser(HTMLParser):
    """Collects each <form>'s method, action and named <input>/<button> fields."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self.forms.append({"method": a.get("method", "get").lower(), "action": a.get("action", ""), "fields": []})
        elif tag in ("input", "button") and self.forms and a.get("name"):
            self.forms[-1]["fields"].append((a.get("type", "text" if tag == "input" else "submit"), a["name"], a.get("value", "")))


def post_form(html: str, page_url: str) -> tuple[str, dict[str, str], list[tuple[str, str, str]]]:
    """The page's single POST form: (absolute action URL, hidden fields, all fields)."""
    p = FormParser()
    p.feed(html)
    forms = [f for f in p.forms if f["method"] == "post"]
    check(len(forms) == 1, f"expected one POST form on {page_url}, found {len(forms)}: {html[:600]}")
    form = forms[0]
    hidden = {name: value for (typ, name, value) in form["fields"] if typ == "hidden"}
    return urljoin(page_url, form["action"] or page_url), hidden, form["fields"]


class HeadlessBrowser:
    """Plays the user: follows the gateway's redirects, logs in, approves consent, and stops at
    the redirect to the client's redirect_uri (which nothing listens on)."""

    def __init__(self, email: str, password: str) -> None:
        self.email = email
        self.password = password
        self.authorize_url: str | None = None
        self.result: AuthorizationCodeResult | None = None
        self.steps: list[str] = []

    async def redirect_handler(self, authorization_url: str) -> None:
        self.authorize_url = authorization_url
        async with httpx2.AsyncClient(follow_redirects=False, timeout=15) as b:
            r = await b.get(authorization_url)
            loc = await self._expect_redirect(r, "GET authorize")
            check("/oauth2/login" in loc, f"authorize redirected to {loc}, not the login page")

            r = await b.get(loc)
            check(r.status_code == 200, f"GET {loc} -> {r.status_code}: {r.text[:600]}")
            self.steps.append(f"GET {loc} -> 200")
            action, hidden, _ = post_form(r.text, loc)
            check("csrf" in hidden and "request" in hidden, f"login form lacks csrf/request: {hidden}")
            # Over https the gateway's cookies are `__Host-` prefixed (and Secure).
            name = "__Host-kg_csrf" if loc.startswith("https://") else "kg_csrf"
            check(b.cookies.get(name) == hidden["csrf"], f"{name} cookie {b.cookies.get(name)!r} != form csrf")
            r = await b.post(action, data={**hidden, "email": self.email, "password": self.password})
            loc = await self._expect_redirect(r, f"POST {action}")
            check("/oauth2/consent" in loc, f"login redirected to {loc}, not the consent page")

            r = await b.get(loc)
            check(r.status_code == 200, f"GET {loc} -> {r.status_code}: {r.text[:600]}")
            self.steps.append(f"GET {loc} -> 200")
            action, hidden, fields = post_form(r.text, loc)
            check(("submit", "approve", "1") in fields, f"consent form has no approve=1 button: {fields}")
            r = await b.post(action, data={**hidden, "approve": "1"})
            loc = await self._expect_redirect(r, f"POST {action}")

        check(loc.startswith(REDIRECT_URI + "?"), f"consent redirected to {loc}, not {REDIRECT_URI}")
        q = parse_qs(urlsplit(loc).query)
        check("code" in q and "state" in q, f"final redirect lacks code/state: {loc}")
        self.result = AuthorizationCodeResult(
            code=q["code"][0], state=q["state"][0], iss=q["iss"][0] if "iss" in q else None
        )

    async def _expect_redirect(self, r: httpx2.Response, what: str) -> str:
        check(r.status_code in (302, 303), f"{what} -> {r.status_code}, expected a redirect: {r.text[:600]}")
        loc = urljoin(str(r.request.url), r.headers["location"])
        self.steps.append(f"{what} -> {r.status_code} {loc}")
        return loc

    async def callback_handler(self) -> AuthorizationCodeResult:
        check(self.result is not None, "callback_handler called before the browser reached the redirect_uri")
        return self.result


def find_failure(e: BaseException | None) -> Failure | None:
    """A `Failure` raised by the browser inside the SDK's task groups, if that is what ended it."""
    if isinstance(e, Failure):
        return e
    for inner in getattr(e, "exceptions", ()):
        if (found := find_failure(inner)) is not None:
            return found
    return None


def oauth_provider(mcp_url: str, email: str, password: str, client_name: str) -> tuple[OAuthClientProvider, MemoryStorage, HeadlessBrowser]:
    """An SDK OAuth provider for `mcp_url` (a public client with PKCE) whose browser is headless."""
    storage = MemoryStorage()
    browser = HeadlessBrowser(email, password)
    provider = OAuthClientProvider(
        server_url=mcp_url,
        client_metadata=OAuthClientMetadata(
            redirect_uris=[REDIRECT_URI],
            token_endpoint_auth_method="none",
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            client_name=client_name,
        ),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    return provider, storage, browser
