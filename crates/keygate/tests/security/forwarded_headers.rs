//! What of the agent's request reaches an upstream: request headers by an allow-list (MCP
//! headers, content negotiation, trace context), never a credential of the agent's — not in
//! `Authorization`, `X-Api-Key`, `X-Auth-Token`, `Cookie`, `Proxy-Authorization`, nor in an
//! `access_token` query parameter — on pass-through, aggregated and legacy routes. An
//! integration may add headers to the list, never one that can carry a credential.

use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::mcp::rpc;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

use crate::legacy_endpoint::LegacyStream;

both_backends!(
    passthrough_forwards_allowed_headers_only,
    passthrough_strips_the_access_token_parameter,
    legacy_routes_forward_no_agent_credential,
    aggregated_forwards_no_agent_credential,
    aggregated_param_header_never_carries_the_agent_token,
    agent_token_in_an_allowed_header_is_dropped,
    agent_token_under_an_upper_case_scheme_is_still_dropped,
    integration_forward_headers_extend_the_allow_list,
);

/// The ways an agent's credential travels besides `Authorization`.
fn credential_headers(token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-api-key", token.to_owned()),
        ("x-auth-token", token.to_owned()),
        ("cookie", format!("kg_session={token}")),
        ("proxy-authorization", format!("Bearer {token}")),
    ]
}

/// A world with one integration on `up` (server token `srv-secret`).
async fn world_with(backend: Backend, url: &str) -> (McpWorld, String) {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let (_, slug) = w
        .integration(json!({"name": "Server", "url": url, "authMode": "server_token", "serverToken": "srv-secret"}))
        .await;
    (w, slug)
}

/// Sends `req` with the agent's credential in every place it could travel.
fn with_credentials(mut req: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    req = req.bearer_auth(token);
    for (k, v) in credential_headers(token) {
        req = req.header(k, v);
    }
    req
}

/// Nothing the upstream received carries the agent's token or a credential header of its.
fn assert_no_agent_credential(up: &FakeUpstream, token: &str) {
    let hits = up.hits();
    assert!(!hits.is_empty(), "the upstream was reached");
    let everything = serde_json::to_string(&hits).unwrap();
    assert!(
        !everything.contains(token),
        "the agent's token reached the upstream: {everything}"
    );
    for hit in &hits {
        for (name, _) in credential_headers(token) {
            assert!(
                hit["headers"].get(name).is_none(),
                "{name} forwarded: {hit}"
            );
        }
        let query = hit["query"].as_str().unwrap_or("");
        assert!(!query.contains("access_token"), "{hit}");
    }
}

async fn passthrough_forwards_allowed_headers_only(backend: Backend) {
    let up = FakeUpstream::start().await;
    let (w, slug) = world_with(backend, &up.url).await;
    let alice = w.token(w.alice).await;
    let allowed = [
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
        ("user-agent", "agent/1.0"),
        ("last-event-id", "7"),
        ("tracestate", "vendor=1"),
        ("mcp-session-id", "client-held-session"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "=?base64?w6ljaGVj?="),
        ("mcp-param-region", "us-west1"),
    ];
    let mut req =
        w.gw.http
            .post(format!("{}/{slug}", w.app_url))
            .body(rpc(1, "tools/call", json!({"name": "échec"})).to_string());
    for (k, v) in allowed {
        req = req.header(k, v);
    }
    let req = with_credentials(req, &alice)
        .header("x-custom", "not on the list")
        .header("x-forwarded-for", "10.0.0.1")
        .header("forwarded", "for=10.0.0.1");
    let body: Value = req.send().await.unwrap().json().await.unwrap();
    let seen = body["result"]["headers"].as_object().expect("an echo");
    for (k, v) in allowed {
        assert_eq!(seen.get(k).and_then(Value::as_str), Some(v), "{k}: {body}");
    }
    assert_eq!(seen["authorization"], "Bearer srv-secret");
    assert!(seen.contains_key("traceparent"), "{body}");
    let allowed: Vec<&str> = allowed.iter().map(|(k, _)| *k).collect();
    for name in seen.keys() {
        let gateway_set = ["authorization", "traceparent", "host", "content-length"];
        assert!(
            allowed.contains(&name.as_str()) || gateway_set.contains(&name.as_str()),
            "{name} was forwarded: {body}"
        );
    }
    assert_no_agent_credential(&up, &alice);
    w.gw.stop().await;
}

async fn passthrough_strips_the_access_token_parameter(backend: Backend) {
    let up = FakeUpstream::start().await;
    let (w, slug) = world_with(backend, &up.url).await;
    let alice = w.token(w.alice).await;
    let url = format!(
        "{}/{slug}?region=eu&access_token={alice}&ACCESS_TOKEN={alice}&access%5Ftoken={alice}",
        w.app_url
    );
    let resp = with_credentials(w.gw.http.post(url), &alice)
        .json(&rpc(1, "ping", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let hits = up.hits();
    assert_eq!(hits[0]["query"], "region=eu", "{hits:?}");
    assert_no_agent_credential(&up, &alice);
    w.gw.stop().await;
}

async fn legacy_routes_forward_no_agent_credential(backend: Backend) {
    let up = FakeUpstream::start().await;
    let (w, slug) = world_with(backend, &up.sse_url).await;
    let alice = w.token(w.alice).await;
    let creds = credential_headers(&alice);
    let extra: Vec<(&str, &str)> = creds.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = format!("{}/{slug}/sse?access_token={alice}", w.app_url);
    let mut s = LegacyStream::open(&w, &url, &alice, &extra).await;
    let message = format!("{}&access_token={alice}", s.endpoint);
    let resp = with_credentials(w.gw.http.post(message), &alice)
        .json(&rpc(3, "tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let answer = s.answer(3).await;
    assert!(answer.contains("Bearer srv-secret"), "{answer}");
    assert_eq!(up.hits().len(), 2, "{:?}", up.hits());
    assert_no_agent_credential(&up, &alice);
    w.gw.stop().await;
}

async fn aggregated_forwards_no_agent_credential(backend: Backend) {
    let up = FakeUpstream::start().await;
    let (w, _) = world_with(backend, &up.url).await;
    let alice = w.token(w.alice).await;
    let url = format!("{}?access_token={alice}", w.app_url);
    let post = |body: Value, session: Option<String>| {
        let mut req = with_credentials(w.gw.http.post(&url), &alice)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(s) = session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-06-18");
        }
        req.send()
    };
    let init = rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
    );
    let resp = post(init, None).await.unwrap();
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let call = rpc(
        2,
        "tools/call",
        json!({"name": "server_echo", "arguments": {}}),
    );
    let body: Value = post(call, Some(session))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["result"]["headers"]["authorization"],
        "Bearer srv-secret"
    );
    assert_no_agent_credential(&up, &alice);
    w.gw.stop().await;
}

async fn agent_token_in_an_allowed_header_is_dropped(backend: Backend) {
    token_beside_its_authorization_is_dropped(backend, |t| format!("Bearer {t}")).await;
}

/// `BEARER` is the same scheme as `Bearer` (RFC 9110 §11.1): the gateway authenticates the
/// call and still recognises the token wherever else the agent put it.
async fn agent_token_under_an_upper_case_scheme_is_still_dropped(backend: Backend) {
    token_beside_its_authorization_is_dropped(backend, |t| format!("BEARER   {t} ")).await;
}

/// A ping sent with `authorization(token)` and the token also in an allowed header and in an
/// `Mcp-Param-*` one is answered, and the token reaches the upstream nowhere.
async fn token_beside_its_authorization_is_dropped(
    backend: Backend,
    authorization: fn(&str) -> String,
) {
    let up = FakeUpstream::start().await;
    let (w, slug) = world_with(backend, &up.url).await;
    let alice = w.token(w.alice).await;
    let resp =
        w.gw.http
            .post(format!("{}/{slug}", w.app_url))
            .header("authorization", authorization(&alice))
            .header("user-agent", format!("agent/1.0 ({alice})"))
            .header("mcp-param-token", alice.as_str())
            .json(&rpc(1, "ping", json!({})))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    assert_no_agent_credential(&up, &alice);
    w.gw.stop().await;
}

async fn aggregated_param_header_never_carries_the_agent_token(backend: Backend) {
    let up = FakeUpstream::modern("modern").await;
    let (w, _) = world_with(backend, &up.url).await;
    let alice = w.token(w.alice).await;
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let call = rpc(
        1,
        "tools/call",
        json!({"name": "server_echo", "arguments": {}, "_meta": meta}),
    );
    let resp = with_credentials(w.gw.http.post(&w.app_url), &alice)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "server_echo")
        .header("mcp-param-region", "eu")
        .header("mcp-param-token", alice.as_str())
        .json(&call)
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let seen = &body["result"]["headers"];
    assert_eq!(seen["mcp-param-region"], "eu", "{body}");
    assert_eq!(seen["authorization"], "Bearer srv-secret");
    assert_no_agent_credential(&up, &alice);
    w.gw.stop().await;
}

async fn integration_forward_headers_extend_the_allow_list(backend: Backend) {
    let up = FakeUpstream::start().await;
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let (_, slug) = w
        .integration(json!({"name": "Tenant", "url": up.url, "forwardHeaders": ["X-Tenant"]}))
        .await;
    let alice = w.token(w.alice).await;
    let req = w.gw.http.post(format!("{}/{slug}", w.app_url));
    let body: Value = with_credentials(req, &alice)
        .header("x-tenant", "acme")
        .header("x-other", "stays")
        .json(&rpc(1, "ping", json!({})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = &body["result"]["headers"];
    assert_eq!(seen["x-tenant"], "acme", "{body}");
    assert!(seen.get("x-other").is_none(), "{body}");
    assert_no_agent_credential(&up, &alice);
    // A header that can carry a credential cannot be added.
    for refused in [
        "x-api-key",
        "Authorization",
        "cookie",
        "x-auth-token",
        "host",
        "bad name",
    ] {
        let body = json!({"name": "Leaky", "url": up.url, "forwardHeaders": [refused]});
        let (status, _, answer) =
            w.gw.api(Method::POST, "/integrations", &w.admin, Some(body))
                .await;
        assert_eq!(status, 400, "{refused}: {answer}");
        assert_eq!(
            answer["validationErrors"][0]["field"], "forwardHeaders",
            "{answer}"
        );
    }
    w.gw.stop().await;
}
