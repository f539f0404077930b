//! Payload capture keeps no secret. With `traces.capture = "redacted"`, secrets planted in tool
//! arguments and results — token shapes in free text, secret-named fields at any depth, JSON
//! text inside strings — and the credential the gateway injected upstream (echoed back by the
//! tool) are masked before an event is stored. In every mode, `full` included, the injected
//! credential is masked in payloads and error messages. Each body runs on SQLite and
//! PostgreSQL, on the pass-through and the aggregated endpoint.

use std::time::{Duration, Instant};

use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    redacted_capture_stores_none_of_the_planted_secrets,
    full_capture_still_masks_the_injected_credential,
    error_messages_never_hold_the_injected_credential,
);

/// The credential the gateway injects upstream: opaque, of no known shape, so only the
/// gateway's knowledge of what it sent can mask it.
const SERVER_TOKEN: &str = "srv-opaque-Mx4Nq7Rb2Kt9Wv5Zc8";
const GITHUB: &str = "ghp_4fXk9QmZ2vB7nR1tY8wL3sD6hJ0pA5cE9uKx";
const STRIPE: &str = "sk-live-51HbQzR8mT3kX9vLp2Wd7Yc4Nf6Gh0Js";
const BEARER: &str = "b7Tq2LmX9pR4vW8zK3nY6cH1";
const ACCESS: &str = "at-opaque-Zr8Kq2Vm6Xw1Pn4Ty";
const API_KEY: &str = "apikey-opaque-Hd3Jf8Ls1Qw6Er9T";
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTQyIiwiYWRtaW4iOnRydWV9.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const AWS: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRETS: &[&str] = &[
    SERVER_TOKEN,
    GITHUB,
    STRIPE,
    BEARER,
    ACCESS,
    API_KEY,
    JWT,
    AWS,
];

/// Text near secrets that must survive redaction.
const ORDINARY: &[&str] = &[
    "the token count is 5",
    "Basic information about the weather",
    "password reset instructions were sent",
];

/// Tool arguments with seven kinds of secret; the eighth, the injected credential, comes back
/// in the `reveal` tool's result.
fn arguments() -> Value {
    json!({
        "note": format!("deploy with {GITHUB} please"),
        "billing": format!("charge it to {STRIPE} today"),
        "curl": format!("curl -H 'Authorization: Bearer {BEARER}' https://api.example.com/v1"),
        "access_token": ACCESS,
        "config": {"services": [{"name": "billing", "apiKey": API_KEY}]},
        "session": format!("the session is {JWT}"),
        "aws": format!("use {AWS} in us-east-1"),
        "ordinary": ORDINARY,
        "max_tokens": 100,
    })
}

struct World {
    base: McpWorld,
    slug: String,
    token: String,
    _up: FakeUpstream,
}

/// A gateway capturing payloads in `mode`, and a fake upstream attached with a server token.
async fn world(backend: Backend, mode: &str) -> World {
    let mode = mode.to_owned();
    let base = McpWorld::start(backend, AppClient::Public, move |c| {
        c.traces.capture = Some(mode);
    })
    .await;
    let up = FakeUpstream::start().await;
    let (_, slug) = base
        .integration(json!({"name": "Fake", "url": up.url,
            "authMode": "server_token", "serverToken": SERVER_TOKEN}))
        .await;
    let token = base.token(base.alice).await;
    World {
        base,
        slug,
        token,
        _up: up,
    }
}

impl World {
    async fn post(&self, url: &str, session: Option<&str>, body: Value) -> reqwest::Response {
        let mut req = self
            .base
            .gw
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.send().await.unwrap()
    }

    /// `tool` called through the pass-through endpoint, then through the aggregated one; the
    /// bodies the client got.
    async fn call_both_ways(&self, tool: &str) -> String {
        let call = |name: String| {
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": name, "arguments": arguments()}})
        };
        let url = format!("{}/{}", self.base.app_url, self.slug);
        let mut seen = self
            .post(&url, None, call(tool.into()))
            .await
            .text()
            .await
            .unwrap();
        let init = self
            .post(
                &self.base.app_url,
                None,
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"}}}),
            )
            .await;
        let session = init.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        init.text().await.unwrap();
        let namespaced = format!("{}_{tool}", self.slug);
        let resp = self
            .post(&self.base.app_url, Some(&session), call(namespaced))
            .await;
        seen.push_str(&resp.text().await.unwrap());
        seen
    }

    /// The stored `tools/call` events, once both calls are there.
    async fn tool_events(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, body) = self
                .base
                .gw
                .api(Method::GET, "/events?limit=50", &self.base.admin, None)
                .await;
            assert_eq!(status, 200, "{body}");
            let calls: Vec<Value> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["eventType"] == "tools/call")
                .cloned()
                .collect();
            if calls.len() >= 2 || Instant::now() > deadline {
                assert_eq!(calls.len(), 2, "{body:#}");
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything stored: the events as the API shows them and the database's raw contents.
    async fn stored(&self, events: &[Value]) -> String {
        let mut all = Value::from(events.to_vec()).to_string();
        all.push_str(&self.base.gw.raw_dump().await);
        all
    }
}

fn assert_absent(stored: &str, secrets: &[&str]) {
    let kept: Vec<&&str> = secrets.iter().filter(|s| stored.contains(**s)).collect();
    assert!(
        kept.is_empty(),
        "{} of {} stored: {kept:?}",
        kept.len(),
        secrets.len()
    );
}

async fn redacted_capture_stores_none_of_the_planted_secrets(backend: Backend) {
    let w = world(backend, "redacted").await;
    let seen = w.call_both_ways("reveal").await;
    assert!(
        seen.contains(SERVER_TOKEN),
        "the tool echoed the credential: {seen}"
    );
    let events = w.tool_events().await;
    assert_absent(&w.stored(&events).await, SECRETS);
    for e in &events {
        let (request, response) = (e["requestJson"].to_string(), e["responseJson"].to_string());
        assert!(
            request.contains("[REDACTED]") && response.contains("[REDACTED]"),
            "{e:#}"
        );
        for text in ORDINARY {
            assert!(request.contains(text), "over-masked {text:?}: {request}");
        }
        let args = &e["requestJson"]["params"]["arguments"];
        assert_eq!(args["max_tokens"], 100, "{args}");
        assert_eq!(args["config"]["services"][0]["name"], "billing", "{args}");
        assert!(response.contains("keep it safe"), "{response}");
    }
}

async fn full_capture_still_masks_the_injected_credential(backend: Backend) {
    let w = world(backend, "full").await;
    let seen = w.call_both_ways("reveal").await;
    assert!(
        seen.contains(SERVER_TOKEN),
        "the tool echoed the credential: {seen}"
    );
    let events = w.tool_events().await;
    assert_absent(&w.stored(&events).await, &[SERVER_TOKEN]);
    for e in &events {
        // Everything else is kept as sent.
        assert!(e["requestJson"].to_string().contains(GITHUB), "{e:#}");
        let response = e["responseJson"].to_string();
        assert!(
            response.contains("the credential [REDACTED]; keep it safe"),
            "{response}"
        );
        assert!(response.contains(GITHUB), "{response}");
    }
}

async fn error_messages_never_hold_the_injected_credential(backend: Backend) {
    let w = world(backend, "off").await;
    let seen = w.call_both_ways("reveal_error").await;
    assert!(
        seen.contains(SERVER_TOKEN),
        "the tool echoed the credential: {seen}"
    );
    let events = w.tool_events().await;
    assert_absent(&w.stored(&events).await, &[SERVER_TOKEN]);
    for e in &events {
        assert_eq!(e["status"], "error_remote", "{e:#}");
        let message = e["errorMessage"].as_str().unwrap();
        assert!(
            message.contains("the credential [REDACTED] was refused"),
            "{message}"
        );
        assert!(e.get("requestJson").is_none(), "capture is off: {e:#}");
    }
}
