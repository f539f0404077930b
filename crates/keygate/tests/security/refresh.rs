//! Upstream OAuth refresh storms. A provider whose access tokens live only a few seconds,
//! with the default 60 s `refresh_skew_secs`, made every token "about to expire" from the
//! moment it was issued: every call refreshed, several times. The skew is now clamped to a
//! quarter of the token's lifetime (so a 4 s token is refreshed once 3 s old, never before),
//! and a token is refreshed once per expiry: concurrent calls wait for one refresh, and
//! replicas on one database take the newer token another replica stored instead of
//! refreshing again. Every body runs on SQLite and PostgreSQL (replicas: PostgreSQL only).

use std::time::Duration;

use futures_util::future::join_all;
use keygate_core::{IntegrationId, Secret, Timestamp};
use keygate_store::OAuthTokens;
use keygate_test_support::fake_oauth::FakeOAuth;
use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::mcp::modern;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, TestGateway, both_backends};
use serde_json::{Value, json};

both_backends!(
    a_young_token_is_never_refreshed,
    concurrent_calls_at_expiry_refresh_once,
);

/// The fake provider's access tokens live this long: refreshed once 3 s old.
const TTL: Duration = Duration::from_secs(4);
/// Past the refresh point (3 s) and well before expiry (4 s).
const PAST_REFRESH_POINT: Duration = Duration::from_millis(3300);
const CLIENT_ID: &str = "keygate-at-octo";
const CLIENT_SECRET: &str = "octo-client-secret-0123456789";

/// A gateway with the default refresh skew, a provider, an upstream that takes only the
/// provider's live tokens, and Alice connected to it through a freshly issued grant.
struct World {
    w: McpWorld,
    provider: FakeOAuth,
    _upstream: FakeUpstream,
    slug: String,
    token: String,
}

async fn world(backend: Backend) -> World {
    let provider = FakeOAuth::start(TTL).await;
    let w = McpWorld::start(backend, AppClient::Public, |c| {
        assert_eq!(
            c.upstream_oauth.refresh_skew_secs, None,
            "the default, 60 s"
        );
    })
    .await;
    let callback = format!("{}/oauth/connect/callback", w.gw.url);
    provider.register_client(CLIENT_ID, Some(CLIENT_SECRET), &callback);
    let upstream = FakeUpstream::protected("octo", &provider).await;
    let (id, slug) = w
        .integration(json!({
            "name": "Octo", "url": upstream.url, "authMode": "oauth",
            "oauth": {
                "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "scopes": ["read"],
                "authorizationUrl": provider.url("/authorize"), "tokenUrl": provider.url("/token"),
            }
        }))
        .await;
    connect(&w, &provider, id).await;
    let token = w.token(w.alice).await;
    World {
        w,
        provider,
        _upstream: upstream,
        slug,
        token,
    }
}

/// Stores a grant the provider just issued as Alice's connection (what the code flow ends
/// with).
async fn connect(w: &McpWorld, provider: &FakeOAuth, id: IntegrationId) {
    let grant = provider.grant(CLIENT_ID);
    let (lifetime, now) = (grant["expires_in"].as_i64().unwrap(), Timestamp::now());
    let tokens = OAuthTokens {
        access: Secret::new(grant["access_token"].as_str().unwrap()),
        refresh: Some(Secret::new(grant["refresh_token"].as_str().unwrap())),
        expires_at: Some(now.plus_seconds(lifetime)),
        issued_at: now,
    };
    (w.gw.store)
        .put_oauth_connection(w.gw.org, id, w.alice, &tokens, None)
        .await
        .unwrap();
}

impl World {
    /// `tools/call echo` through the pass-through route of `gw`: the token the upstream saw.
    async fn call(&self, gw: &TestGateway) -> String {
        let resp = (gw.http)
            .post(format!("{}/apps/{}/mcp/{}", gw.url, self.w.app, self.slug))
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(&self.token)
            .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "echo", "arguments": {}}}))
            .send()
            .await
            .unwrap();
        let answer: Value = resp.json().await.unwrap();
        upstream_token(&answer)
    }

    /// A 2026 client's `tools/call` on the aggregated endpoint: the token the upstream saw.
    async fn aggregated_call(&self) -> String {
        let name = format!("{}_echo", self.slug);
        let call = modern(
            &self.w,
            &self.token,
            8,
            "tools/call",
            json!({"name": name, "arguments": {}}),
        );
        let resp = call.send().await.unwrap();
        let answer: Value = resp.json().await.unwrap();
        upstream_token(&answer)
    }
}

/// The bearer token the upstream saw on a successful echo.
fn upstream_token(answer: &Value) -> String {
    let auth = answer["result"]["headers"]["authorization"]
        .as_str()
        .unwrap_or_else(|| panic!("no upstream authorization in {answer}"));
    auth.strip_prefix("Bearer ").unwrap().to_owned()
}

/// Calls within the first 3 s of a 4 s token's life use it as it is, on both routes.
async fn a_young_token_is_never_refreshed(backend: Backend) {
    let w = world(backend).await;
    let started = tokio::time::Instant::now();
    let mut seen = std::collections::HashSet::new();
    while started.elapsed() < Duration::from_millis(1500) {
        seen.insert(w.call(&w.w.gw).await);
        seen.insert(w.aggregated_call().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.provider.refresh_count(), 0);
    assert_eq!(seen.len(), 1, "one token throughout");
}

/// Past the refresh point, 20 concurrent calls cause one refresh and all carry its token.
async fn concurrent_calls_at_expiry_refresh_once(backend: Backend) {
    let w = world(backend).await;
    let first = w.call(&w.w.gw).await;
    tokio::time::sleep(PAST_REFRESH_POINT).await;
    let seen: std::collections::HashSet<String> = join_all((0..20).map(|_| w.call(&w.w.gw)))
        .await
        .into_iter()
        .collect();
    assert_eq!(w.provider.refresh_count(), 1);
    assert_eq!(seen.len(), 1, "every call carried the one refreshed token");
    assert!(!seen.contains(&first));
}

/// Two replicas on one PostgreSQL database, 20 calls spread over both past the refresh
/// point: one refresh between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_refresh_once_between_them() {
    let w = world(Backend::Postgres).await;
    let replica = w.w.gw.replica().await;
    // Starting the replica may take a while: whatever refresh that needs happens here.
    w.call(&replica).await;
    w.call(&w.w.gw).await;
    let before = w.provider.refresh_count();
    tokio::time::sleep(PAST_REFRESH_POINT).await;
    let calls = (0..20).map(|i| w.call(if i % 2 == 0 { &w.w.gw } else { &replica }));
    let seen: std::collections::HashSet<String> = join_all(calls).await.into_iter().collect();
    assert_eq!(w.provider.refresh_count(), before + 1);
    assert_eq!(
        seen.len(),
        1,
        "both replicas carried the one refreshed token"
    );
}
