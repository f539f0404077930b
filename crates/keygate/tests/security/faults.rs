//! Loose ends under faults: the upstream pool after a burst, an upstream that resets or falls
//! silent in the middle of a streamed answer, and tokens that outlive a rotated secret.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, TestGateway, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

use super::sockets::sockets_to;

both_backends!(rotating_a_service_account_secret_revokes_its_tokens);

async fn world(tweak: impl FnOnce(&mut keygate_core::config::Config)) -> McpWorld {
    McpWorld::start(Backend::Sqlite, AppClient::Public, tweak).await
}

/// A pass-through `tools/call` of the fake's tool `name`.
async fn call(w: &McpWorld, slug: &str, name: &str) -> reqwest::Response {
    let token = w.token(w.alice).await;
    w.gw.http
        .post(format!("{}/{slug}", w.app_url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name}}))
        .send()
        .await
        .unwrap()
}

/// Reads an SSE answer to its end (at most `limit`): the JSON messages of its events, and
/// whether it ended cleanly.
async fn messages(resp: reqwest::Response, limit: Duration) -> (Vec<Value>, bool) {
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    let read = tokio::time::timeout(limit, async {
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
                Err(_) => return false,
            }
        }
        true
    })
    .await;
    let clean = read.expect("the stream ended in time");
    let events = text
        .split("\n\n")
        .filter(|e| {
            e.lines()
                .all(|l| !l.starts_with("event:") || l == "event: message")
        })
        .filter_map(|e| {
            let data: String = e
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.trim_start())
                .collect();
            serde_json::from_str(&data).ok()
        })
        .collect();
    (events, clean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_pool_shrinks_after_its_idle_timeout() {
    let w = world(|c| c.proxy.upstream_idle_timeout_secs = Some(1)).await;
    let up = FakeUpstream::start().await;
    let port = url::Url::parse(&up.url).unwrap().port().unwrap();
    let (_, slug) = w.integration(json!({"name": "Up", "url": up.url})).await;
    let calls: Vec<_> = (0..10).map(|_| call(&w, &slug, "slow")).collect();
    for resp in futures_util::future::join_all(calls).await {
        let (events, _) = messages(resp, Duration::from_secs(5)).await;
        assert_eq!(events.len(), 3);
    }
    assert!(
        sockets_to(port) >= 5,
        "the burst opened pooled upstream sockets"
    );
    let started = Instant::now();
    while sockets_to(port) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{} idle upstream sockets still open",
            sockets_to(port)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_stream_ends_with_a_json_rpc_error_for_the_request() {
    let w = world(|_| {}).await;
    let up = FakeUpstream::start().await;
    let (_, slug) = w.integration(json!({"name": "Up", "url": up.url})).await;
    let resp = call(&w, &slug, "reset").await;
    assert_eq!(resp.status(), 200);
    let (events, clean) = messages(resp, Duration::from_secs(5)).await;
    assert!(clean, "the stream ends cleanly after the error event");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["method"], "notifications/progress");
    assert_eq!(events[1]["id"], 7, "{}", events[1]);
    assert!(events[1]["error"]["code"].is_i64(), "{}", events[1]);
    w.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_stream_ends_after_the_stream_idle_timeout() {
    let w = world(|c| c.proxy.stream_idle_timeout_secs = Some(1)).await;
    let up = FakeUpstream::start().await;
    let (_, slug) = w.integration(json!({"name": "Up", "url": up.url})).await;
    let started = Instant::now();
    let resp = call(&w, &slug, "stall").await;
    assert_eq!(resp.status(), 200);
    let (events, clean) = messages(resp, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(clean);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], 7);
    assert!(events[0]["error"]["code"].is_i64(), "{}", events[0]);
    w.gw.stop().await;
}

async fn rotating_a_service_account_secret_revokes_its_tokens(backend: Backend) {
    let gw = TestGateway::start(backend).await;
    let admin = gw.admin_token().await;
    let (status, _, created) = gw
        .api(
            Method::POST,
            "/service-accounts",
            &admin,
            Some(json!({"name": "CI"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["serviceAccount"]["id"].as_str().unwrap();
    let client_id = created["credentials"]["clientId"].as_str().unwrap();
    let secret = created["credentials"]["clientSecret"].as_str().unwrap();
    let (_, got) = gw.client_credentials(client_id, secret).await;
    let old_token = got["access_token"].as_str().unwrap().to_owned();
    let (status, _, _) = gw.api(Method::GET, "/applications", &old_token, None).await;
    assert_eq!(status, 200);

    let path = format!("/service-accounts/{id}/rotate-secret");
    let (status, _, rotated) = gw.api(Method::POST, &path, &admin, None).await;
    assert_eq!(status, 200, "{rotated}");
    let (status, _, body) = gw.api(Method::GET, "/applications", &old_token, None).await;
    assert_eq!(
        status, 401,
        "a token issued before the rotation still works: {body}"
    );

    let new_secret = rotated["credentials"]["clientSecret"].as_str().unwrap();
    let (_, got) = gw.client_credentials(client_id, new_secret).await;
    let new_token = got["access_token"].as_str().unwrap();
    let (status, _, _) = gw.api(Method::GET, "/applications", new_token, None).await;
    assert_eq!(status, 200);
    gw.stop().await;
}
