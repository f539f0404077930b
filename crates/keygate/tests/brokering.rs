//! Upstream OAuth brokering against a fake provider and a fake MCP server that accepts only the
//! provider's live tokens: the connect flow, refresh ahead of expiry exactly once under
//! concurrency (and across two replicas on PostgreSQL), refresh-and-retry after an upstream
//! 401, a dead grant turning into `-32042`, revocation, discovery with dynamic registration, and
//! RFC 8693 token exchange. Every body runs on SQLite and PostgreSQL.

use std::time::Duration;

use futures_util::future::join_all;
use keygate_core::{ApplicationId, IntegrationId};
use keygate_test_support::browser::{browser, field, location};
use keygate_test_support::fake_oauth::FakeOAuth;
use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, TestGateway, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    connect_refresh_once_retry_and_revoke,
    aggregated_calls_refresh_once_after_an_upstream_401,
    aggregated_routed_call_refreshes_only_its_own_upstreams_token,
    aggregated_list_refreshes_its_upstreams_tokens_at_once,
    discovery_registers_at_the_mcp_servers_authorization_server,
    token_exchange_hands_out_the_right_users_credential,
);

const CLIENT_ID: &str = "keygate-at-octo";
const CLIENT_SECRET: &str = "octo-client-secret-0123456789";
/// Access tokens of the fake provider live this long; the gateway refreshes 1 s before.
const ACCESS_TTL: Duration = Duration::from_secs(4);

/// The common world (a confidential application), an OAuth provider and an upstream that
/// accepts only that provider's tokens.
struct World {
    base: McpWorld,
    provider: FakeOAuth,
    upstream: FakeUpstream,
}

impl std::ops::Deref for World {
    type Target = McpWorld;
    fn deref(&self) -> &McpWorld {
        &self.base
    }
}

async fn world(backend: Backend) -> World {
    let provider = FakeOAuth::start(ACCESS_TTL).await;
    world_with(backend, provider, |_| {}).await
}

async fn world_with(
    backend: Backend,
    provider: FakeOAuth,
    tweak: impl FnOnce(&mut keygate_core::config::Config),
) -> World {
    let base = McpWorld::start(backend, AppClient::Confidential, |c| {
        c.upstream_oauth.refresh_skew_secs = Some(1);
        tweak(c);
    })
    .await;
    provider.register_client(
        CLIENT_ID,
        Some(CLIENT_SECRET),
        &format!("{}/oauth/connect/callback", base.gw.url),
    );
    let upstream = FakeUpstream::protected("octo", &provider).await;
    World {
        base,
        provider,
        upstream,
    }
}

impl World {
    /// An OAuth integration with the provider's endpoints and client given inline.
    async fn inline_integration(&self) -> (IntegrationId, String) {
        self.inline_integration_named("Octo").await
    }

    /// [`World::inline_integration`] under another name (another slug).
    async fn inline_integration_named(&self, name: &str) -> (IntegrationId, String) {
        let p = &self.provider;
        self.integration(json!({
            "name": name, "url": self.upstream.url, "authMode": "oauth",
            "oauth": {
                "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "scopes": ["read"],
                "authorizationUrl": p.url("/authorize"), "tokenUrl": p.url("/token"),
                "revocationUrl": p.url("/revoke"), "userinfoUrl": p.url("/userinfo"),
            }
        }))
        .await
    }

    /// `tools/call echo` through the pass-through route: the JSON-RPC answer.
    async fn call(&self, gw: &TestGateway, slug: &str, token: &str) -> Value {
        let resp = gw
            .http
            .post(format!("{}/apps/{}/mcp/{slug}", gw.url, self.app))
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    }

    /// The bearer token the upstream saw on a successful echo.
    fn upstream_token(answer: &Value) -> String {
        let auth = answer["result"]["headers"]["authorization"]
            .as_str()
            .unwrap_or_else(|| panic!("no upstream authorization in {answer}"));
        auth.strip_prefix("Bearer ").unwrap().to_owned()
    }

    /// Follows a `-32042` answer's connect link like Alice's browser: sign-in, the connect
    /// page, the OAuth button, the provider (which approves), the callback, which uses the
    /// link up.
    async fn connect_via_page(&self, answer: &Value) {
        assert_eq!(answer["error"]["code"], -32042, "{answer}");
        let link = answer["error"]["data"]["connectUrl"].as_str().unwrap();
        let browser = browser();
        let html = self
            .open_connect_link(&browser, link, self.alice)
            .await
            .text()
            .await
            .unwrap();
        assert!(html.contains("name=\"oauth\""), "{html}");
        let form = [
            ("csrf", field(&html, "csrf")),
            ("session", field(&html, "session")),
            ("integration", field(&html, "integration")),
            ("oauth", "1".to_owned()),
        ];
        let resp = browser
            .post(format!("{}/oauth/connect", self.gw.url))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303);
        let to_provider = location(&resp);
        assert!(
            to_provider.starts_with(&self.provider.url("/authorize")),
            "{to_provider}"
        );
        let back = follow_provider(&browser, &to_provider).await;
        let resp = browser.get(&back).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let html = resp.text().await.unwrap();
        assert!(html.contains("is connected"), "{html}");
        assert_eq!(browser.get(link).send().await.unwrap().status(), 400);
    }
}

/// The provider approves at once: its answer redirects to the gateway's callback.
async fn follow_provider(browser: &reqwest::Client, authorize_url: &str) -> String {
    let resp = browser.get(authorize_url).send().await.unwrap();
    assert_eq!(resp.status(), 302, "{}", resp.text().await.unwrap());
    location(&resp)
}

async fn connect_refresh_once_retry_and_revoke(backend: Backend) {
    let w = world(backend).await;
    let (id, slug) = w.inline_integration().await;
    let alice = w.token(w.alice).await;

    // Not connected yet: -32042 with a link; following it connects through the provider.
    let answer = w.call(&w.gw, &slug, &alice).await;
    w.connect_via_page(&answer).await;
    let sent = w.provider.last_authorize();
    assert_eq!(sent["code_challenge_method"], "S256");
    assert_eq!(sent["scope"], "read");
    assert_eq!(sent["client_id"], CLIENT_ID);
    let conn =
        w.gw.store
            .get_connection(w.gw.org, id, w.alice)
            .await
            .unwrap();
    assert!(conn.connected);
    assert_eq!(conn.display_name.as_deref(), Some("Octo User"));
    assert!(conn.expires_at.is_some());

    // The provider's token is injected; Bob, not connected, still gets -32042.
    let answer = w.call(&w.gw, &slug, &alice).await;
    let first = World::upstream_token(&answer);
    assert!(w.provider.is_valid(&first));
    let bob = w.token(w.bob).await;
    assert_eq!(w.call(&w.gw, &slug, &bob).await["error"]["code"], -32042);
    assert_eq!(w.provider.refresh_count(), 0);

    // Past the refresh point, 20 concurrent calls cause exactly one refresh.
    tokio::time::sleep(ACCESS_TTL - Duration::from_millis(500)).await;
    let generation = w.gw.store.generation();
    let answers = join_all((0..20).map(|_| w.call(&w.gw, &slug, &alice))).await;
    let tokens: std::collections::HashSet<String> =
        answers.iter().map(World::upstream_token).collect();
    assert_eq!(w.provider.refresh_count(), 1);
    assert_eq!(
        w.gw.store.generation(),
        generation,
        "a refresh leaves the caches in place"
    );
    assert_eq!(
        tokens.len(),
        1,
        "every call carried the one refreshed token"
    );
    assert!(!tokens.contains(&first));

    // Two replicas on one PostgreSQL database share the lease: still one refresh between them.
    if backend == Backend::Postgres {
        let replica = w.gw.replica().await;
        tokio::time::sleep(ACCESS_TTL - Duration::from_millis(500)).await;
        let calls = (0..20).map(|i| {
            let gw = if i % 2 == 0 { &w.gw } else { &replica };
            w.call(gw, &slug, &alice)
        });
        for answer in join_all(calls).await {
            World::upstream_token(&answer);
        }
        assert_eq!(w.provider.refresh_count(), 2);
    }
    let refreshes = w.provider.refresh_count();

    // The provider drops its access tokens early: the upstream's 401 makes the gateway refresh
    // once and retry, invisibly to the agent.
    w.provider.invalidate_access_tokens();
    let answer = w.call(&w.gw, &slug, &alice).await;
    assert!(w.provider.is_valid(&World::upstream_token(&answer)));
    assert_eq!(w.provider.refresh_count(), refreshes + 1);

    // The provider ends the grant: the next refresh is refused, the connection is marked
    // disconnected and the agent is asked to connect again.
    w.provider.revoke_all_grants();
    let answer = w.call(&w.gw, &slug, &alice).await;
    assert_eq!(answer["error"]["code"], -32042, "{answer}");
    assert!(
        !w.gw
            .store
            .get_connection(w.gw.org, id, w.alice)
            .await
            .unwrap()
            .connected
    );

    // Reconnect, then revoke through the management API: the provider's revocation endpoint
    // gets the refresh token, and the next call gets -32042.
    w.connect_via_page(&answer).await;
    let answer = w.call(&w.gw, &slug, &alice).await;
    let live = World::upstream_token(&answer);
    let revoked_before = w.provider.revoked().len();
    let manager =
        w.gw.user_token(w.alice, w.app, &format!("{}/api/v1", w.gw.url))
            .await;
    let (status, _, body) =
        w.gw.api(
            Method::DELETE,
            &format!("/integrations/{id}/connection"),
            &manager,
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let revoked = w.provider.revoked();
    assert_eq!(
        revoked.len(),
        revoked_before + 2,
        "refresh and access token"
    );
    assert!(revoked.iter().any(|t| t.starts_with("rt-")));
    assert!(revoked.contains(&live));
    assert!(!w.provider.is_valid(&live));
    assert_eq!(w.call(&w.gw, &slug, &alice).await["error"]["code"], -32042);
}

/// A 2025 client's POST to the aggregated endpoint: the session it opened (if any) and the
/// answer.
async fn aggregated(
    w: &World,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> (Option<String>, Value) {
    let mut req =
        w.gw.http
            .post(&w.app_url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
    if let Some(s) = session {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-06-18");
    }
    let resp = req.send().await.unwrap();
    let opened = resp
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    (opened, resp.json().await.unwrap())
}

/// Through the aggregated endpoint too, an upstream's 401 makes the gateway refresh the user's
/// token once and retry invisibly; once the grant is gone, the routed call is answered `-32042`
/// for its own id, with a link that reconnects.
async fn aggregated_calls_refresh_once_after_an_upstream_401(backend: Backend) {
    let provider = FakeOAuth::start(Duration::from_secs(3600)).await;
    let w = world_with(backend, provider, |_| {}).await;
    let (_, slug) = w.inline_integration().await;
    let alice = w.token(w.alice).await;
    let answer = w.call(&w.gw, &slug, &alice).await;
    w.connect_via_page(&answer).await;
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let (session, _) = aggregated(&w, &alice, None, init).await;
    let session = session.expect("a session");
    let call = |id: i64| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": format!("{slug}_echo"), "arguments": {}}});
        aggregated(&w, &alice, Some(&session), body)
    };
    let first = World::upstream_token(&call(1).await.1);

    w.provider.invalidate_access_tokens();
    let refreshes = w.provider.refresh_count();
    let retried = World::upstream_token(&call(2).await.1);
    assert!(w.provider.is_valid(&retried) && retried != first);
    assert_eq!(w.provider.refresh_count(), refreshes + 1);
    let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});
    let (_, tools) = aggregated(&w, &alice, Some(&session), list).await;
    assert!(
        tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == format!("{slug}_echo")),
        "{tools}"
    );
    assert_eq!(w.provider.refresh_count(), refreshes + 1);

    w.provider.revoke_all_grants();
    let (_, answer) = call(4).await;
    assert_eq!(answer["id"], 4, "{answer}");
    w.connect_via_page(&answer).await;
    assert!(
        w.provider
            .is_valid(&World::upstream_token(&call(5).await.1))
    );
}

/// Alice, connected to two OAuth upstreams and holding an aggregated session over both, once
/// both tokens are due for a refresh: the world, the two slugs, her token and the session.
async fn two_stale_upstreams(backend: Backend) -> (World, [String; 2], String, String) {
    let w = world(backend).await;
    let (_, one) = w.inline_integration().await;
    let (_, two) = w.inline_integration_named("Octo Two").await;
    let alice = w.token(w.alice).await;
    for slug in [&one, &two] {
        let answer = w.call(&w.gw, slug, &alice).await;
        w.connect_via_page(&answer).await;
    }
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let (session, _) = aggregated(&w, &alice, None, init).await;
    let session = session.expect("a session");
    tokio::time::sleep(ACCESS_TTL).await;
    (w, [one, two], alice, session)
}

/// A call the aggregated endpoint routes to one upstream resolves that upstream's credential
/// alone: another attached upstream whose token went stale is refreshed when it is used, not on
/// every call to its neighbours.
async fn aggregated_routed_call_refreshes_only_its_own_upstreams_token(backend: Backend) {
    let (w, [called, _], alice, session) = two_stale_upstreams(backend).await;
    let refreshes = w.provider.refresh_count();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": format!("{called}_echo"), "arguments": {}}});
    let (_, answer) = aggregated(&w, &alice, Some(&session), body).await;
    assert!(w.provider.is_valid(&World::upstream_token(&answer)));
    assert_eq!(
        w.provider.refresh_count(),
        refreshes + 1,
        "only the called upstream's token is refreshed"
    );
}

/// A list the aggregated endpoint fans out refreshes its upstreams' stale tokens at once, not
/// one after another: the request waits for the slowest refresh, not for their sum.
async fn aggregated_list_refreshes_its_upstreams_tokens_at_once(backend: Backend) {
    let (w, slugs, alice, session) = two_stale_upstreams(backend).await;
    let refreshes = w.provider.refresh_count();
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (_, tools) = aggregated(&w, &alice, Some(&session), list).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{tools}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for slug in &slugs {
        let echo = format!("{slug}_echo");
        assert!(names.contains(&echo.as_str()), "{names:?}");
    }
    assert_eq!(w.provider.refresh_count(), refreshes + 2);
    assert_eq!(
        w.provider.most_concurrent_refreshes(),
        2,
        "refreshed one after another"
    );
}

async fn discovery_registers_at_the_mcp_servers_authorization_server(backend: Backend) {
    let w = world(backend).await;
    // No endpoints, no client: everything comes from the MCP server's RFC 9728 metadata.
    let (id, slug) = w
        .integration(json!({"name": "Found", "url": w.upstream.url, "authMode": "oauth"}))
        .await;
    let mcp =
        w.gw.user_token(w.alice, w.app, &format!("{}/mcp", w.gw.url))
            .await;
    let resp =
        w.gw.http
            .post(format!("{}/mcp/integrations/{slug}/oauth/init", w.gw.url))
            .bearer_auth(&mcp)
            .send()
            .await
            .unwrap();
    let init: Value = resp.json().await.unwrap();
    let url = init["authorizationUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("{init}"));
    assert!(init["state"].as_str().is_some_and(|s| s.len() >= 32));
    assert!(url.starts_with(&w.provider.url("/authorize")), "{url}");
    let sent: std::collections::HashMap<String, String> = url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert!(
        sent["client_id"].starts_with("dcr-"),
        "registered dynamically: {sent:?}"
    );
    assert_eq!(
        sent["resource"], w.upstream.url,
        "RFC 8707 resource indicator"
    );
    assert_eq!(sent["scope"], "read", "scopes from the resource metadata");

    // The callback (no connect page: the agent opened the URL) finishes the connection.
    let browser = browser();
    let back = follow_provider(&browser, url).await;
    let resp = browser.get(&back).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("is connected"));
    let token_request = w.provider.token_requests().pop().unwrap();
    assert_eq!(token_request["resource"], w.upstream.url);
    let connection: Value =
        w.gw.http
            .get(format!(
                "{}/mcp/integrations/{id}/oauth/connection",
                w.gw.url
            ))
            .bearer_auth(&mcp)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(connection["connected"], true, "{connection}");
    assert!(connection["expiresAt"].is_string());
    let alice = w.token(w.alice).await;
    let answer = w.call(&w.gw, &slug, &alice).await;
    assert!(w.provider.is_valid(&World::upstream_token(&answer)));

    // The state was used once: replaying the callback is refused.
    let resp = browser.get(&back).send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

/// RFC 8693 at `/oauth2/token` with the application's own credentials.
async fn exchange(
    w: &World,
    client: (&str, &str),
    subject: &str,
    kind: &str,
    resource: &str,
) -> (u16, Value) {
    let resp =
        w.gw.http
            .post(format!("{}/oauth2/token", w.gw.url))
            .basic_auth(client.0, Some(client.1))
            .form(&[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", subject),
                ("subject_token_type", kind),
                ("resource", resource),
            ])
            .send()
            .await
            .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn token_exchange_hands_out_the_right_users_credential(backend: Backend) {
    let w = world(backend).await;
    let client_id = w.app.client_id();
    let client = (client_id.as_str(), w.app_secret.as_deref().unwrap());
    let (oauth_id, oauth_slug) = w.inline_integration().await;
    let (pat_id, _) = w
        .integration(json!({"name": "Keys", "url": "https://keys.example.com/", "category": "internal_mcp_credentials", "authMode": "user_token"}))
        .await;
    for (user, token) in [(w.alice, "alice-key"), (w.bob, "bob-key")] {
        w.gw.store
            .put_user_token(
                w.gw.org,
                pat_id,
                user,
                &keygate_core::Secret::new(token),
                None,
            )
            .await
            .unwrap();
    }
    let alice = w.token(w.alice).await;
    let bob = w.token(w.bob).await;

    // Each user's own pasted token, by id or by URL.
    let (status, body) = exchange(&w, client, &alice, ACCESS, &pat_id.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], "alice-key");
    assert_eq!(body["issued_token_type"], ACCESS);
    assert_eq!(body["token_type"], "Bearer");
    let (_, body) = exchange(&w, client, &bob, ACCESS, "https://keys.example.com").await;
    assert_eq!(body["access_token"], "bob-key");

    // An OAuth connection: the live provider token, not yet connected → integration_required.
    let (status, body) = exchange(&w, client, &alice, ACCESS, &oauth_slug).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("integration_required")),
        "{body}"
    );
    assert!(body["connect_url"].as_str().is_some());
    let answer = w.call(&w.gw, &oauth_slug, &alice).await;
    w.connect_via_page(&answer).await;
    let (status, body) = exchange(&w, client, &alice, ACCESS, &oauth_id.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert!(w.provider.is_valid(body["access_token"].as_str().unwrap()));
    assert!(body["expires_in"].as_u64().unwrap() <= ACCESS_TTL.as_secs());

    // Refused: naming a user instead of presenting her token (no user's credential without her
    // token from this application).
    let (status, body) = exchange(
        &w,
        client,
        &w.bob.to_string(),
        "urn:keygate:params:oauth:token-type:user-id",
        &pat_id.to_string(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );

    // Refused: a token issued to another application.
    let (_, _, other) = w
        .gw
        .api(Method::POST, "/applications", &w.admin, Some(json!({"name": "Other", "oauth": {"type": "public", "redirectUris": ["http://127.0.0.1/cb"]}})))
        .await;
    let other: ApplicationId = other["application"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let foreign =
        w.gw.user_token(w.alice, other, &format!("{}/apps/{other}/mcp", w.gw.url))
            .await;
    let (status, body) = exchange(&w, client, &foreign, ACCESS, &pat_id.to_string()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    // Refused: an integration not attached to the application.
    let (_, _, loose) = w
        .gw
        .api(Method::POST, "/integrations", &w.admin, Some(json!({"name": "Loose", "url": "https://loose.example.com/", "authMode": "user_token"})))
        .await;
    let loose = loose["integration"]["id"].as_str().unwrap();
    let (status, body) = exchange(&w, client, &alice, ACCESS, loose).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
    assert_eq!(body["failure_reason"], "not_attached_to_application");

    // Refused: a disconnected connection.
    w.provider.revoke_all_grants();
    tokio::time::sleep(ACCESS_TTL).await;
    let (status, body) = exchange(&w, client, &alice, ACCESS, &oauth_id.to_string()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("integration_required")),
        "{body}"
    );
    assert_eq!(body["failure_reason"], "disconnected_or_reauth_required");

    // Refused: a service account's token, and a service account as the client.
    let (sa_id, sa_secret) = w.gw.service_account_in(w.gw.org, "robot").await;
    let (status, body) = exchange(&w, client, &w.admin, ACCESS, &pat_id.to_string()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let (status, body) = exchange(
        &w,
        (&sa_id, &sa_secret),
        &alice,
        ACCESS,
        &pat_id.to_string(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );

    // Refused: a wrong client secret.
    let (status, _) = exchange(
        &w,
        (client_id.as_str(), "wrong"),
        &alice,
        ACCESS,
        &pat_id.to_string(),
    )
    .await;
    assert_eq!(status, 401);
}

/// Every log line the process writes at `trace` level, from every crate.
static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
    std::sync::OnceLock::new();

fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The whole brokering life cycle with every crate logging at `trace`, through a provider
/// declared in config with its client secret sealed by `keygate vault seal`: no access or
/// refresh token, authorization code or client secret appears in any log line, nor anywhere in
/// the database in plaintext — trace events included, with redacted payload capture on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_the_database() {
    let logs = capture_logs();
    // The provider's client secret is sealed against the database the gateway will use.
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/keygate.db", dir.path().display());
    let kek_text = keygate_store::Kek::generate_base64();
    let sealed = {
        let db = keygate_store::Db::connect(&db_url, 1).await.unwrap();
        db.migrate().await.unwrap();
        let kek = keygate_store::Kek::from_base64(&kek_text).unwrap();
        let store = keygate_store::Store::new(
            db.clone(),
            keygate_store::Vault::unlock(&db, &kek).await.unwrap(),
        );
        let sealed = keygate_auth::broker::seal_provider_secret(
            &store,
            &keygate_core::Secret::new(CLIENT_SECRET),
        );
        db.close().await;
        sealed
    };
    assert!(sealed.starts_with("vault:") && !sealed.contains(CLIENT_SECRET));
    let provider = FakeOAuth::start(ACCESS_TTL).await;
    let p = provider.clone();
    let w = world_with(Backend::Sqlite, provider, move |c| {
        c.database.url = Some(db_url);
        c.vault.key = Some(kek_text);
        c.log.level = Some("trace".into());
        // Payloads are kept (redacted): the fake upstream echoes the Authorization it got.
        c.traces.capture = Some("redacted".into());
        c.upstream_oauth.providers.insert(
            "octo".into(),
            keygate_core::config::OAuthProviderConfig {
                authorization_url: Some(p.url("/authorize").parse().unwrap()),
                token_url: Some(p.url("/token").parse().unwrap()),
                revocation_url: Some(p.url("/revoke").parse().unwrap()),
                userinfo_url: Some(p.url("/userinfo").parse().unwrap()),
                client_id: Some(CLIENT_ID.into()),
                client_secret: Some(sealed),
                scopes: vec!["read".into()],
                authorize_params: [("prompt".to_owned(), "consent".to_owned())].into(),
            },
        );
    })
    .await;
    let (id, slug) = w
        .integration(json!({"name": "Octo", "url": w.upstream.url, "authMode": "oauth", "oauth": {"provider": "octo"}}))
        .await;
    let (status, _, oauth) =
        w.gw.api(
            Method::GET,
            &format!("/integrations/{id}/oauth"),
            &w.admin,
            None,
        )
        .await;
    assert_eq!(
        (status, &oauth["oauth"]["provider"]),
        (200, &json!("octo")),
        "{oauth}"
    );
    let alice = w.token(w.alice).await;

    // Connect (code flow), call, refresh after expiry, refresh after a 401, exchange, revoke.
    let answer = w.call(&w.gw, &slug, &alice).await;
    w.connect_via_page(&answer).await;
    assert_eq!(w.provider.last_authorize()["prompt"], "consent");
    World::upstream_token(&w.call(&w.gw, &slug, &alice).await);
    tokio::time::sleep(ACCESS_TTL - Duration::from_millis(500)).await;
    World::upstream_token(&w.call(&w.gw, &slug, &alice).await);
    w.provider.invalidate_access_tokens();
    World::upstream_token(&w.call(&w.gw, &slug, &alice).await);
    assert_eq!(w.provider.refresh_count(), 2);
    let client_id = w.app.client_id();
    let (status, exchanged) = exchange(
        &w,
        (&client_id, w.app_secret.as_ref().unwrap()),
        &alice,
        ACCESS,
        &id.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{exchanged}");
    let manager =
        w.gw.user_token(w.alice, w.app, &format!("{}/api/v1", w.gw.url))
            .await;
    let (status, _, _) =
        w.gw.api(
            Method::DELETE,
            &format!("/integrations/{id}/connection"),
            &manager,
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(!w.provider.revoked().is_empty());

    let mut secrets = w.provider.issued_secrets();
    secrets.extend([
        CLIENT_SECRET.to_owned(),
        alice.clone(),
        manager,
        w.app_secret.clone().unwrap(),
    ]);
    assert!(
        secrets.len() >= 10,
        "codes, access and refresh tokens were issued"
    );
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("upstream OAuth token refreshed"),
        "the capture works"
    );
    assert!(logs.lines().count() > 100, "trace level is on");
    let dump = w.gw.raw_dump().await;
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret reached the logs: {}",
            &secret[..6]
        );
        assert!(
            !dump.contains(secret.as_str()),
            "a secret is stored in plaintext: {}",
            &secret[..6]
        );
    }
}
