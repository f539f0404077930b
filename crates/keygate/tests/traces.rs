//! Traces for operators, end to end: tool calls through the real gateway (success, upstream
//! errors, refused tokens) found in `/traces`, `/traces/:id`, `/events` and `/traces/stats`;
//! the live stream and its resumption; `keygate tail`; `/metrics` (spans are `otel.rs`'s); and
//! no event lost to SIGTERM. Every `both_backends!` body runs on SQLite and
//! PostgreSQL.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keygate_core::model::Role;
use keygate_core::{ApplicationId, IntegrationId};
use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    traced_events_carry_their_identity_and_no_secret,
    successful_calls_are_traced_with_tool_user_bytes_and_duration,
    failed_calls_are_traced_with_whose_failure_it_was,
    aggregated_calls_are_traced_under_their_session,
    passthrough_calls_share_the_agent_sessions_trace,
    events_filter_by_status_and_stats_sum_the_period,
    event_stream_resumes_without_losing_or_repeating,
    tail_prints_each_call_as_it_happens,
    metrics_parse_and_count_by_method_integration_and_tool,
);

/// The common world and one fake upstream attached as a pass-through integration.
struct World {
    base: McpWorld,
    integration: IntegrationId,
    slug: String,
    _up: FakeUpstream,
}

impl std::ops::Deref for World {
    type Target = McpWorld;
    fn deref(&self) -> &McpWorld {
        &self.base
    }
}

async fn world(backend: Backend, tweak: impl FnOnce(&mut keygate_core::config::Config)) -> World {
    let base = McpWorld::start(backend, AppClient::Public, tweak).await;
    let up = FakeUpstream::start().await;
    let (integration, slug) = base
        .integration(json!({"name": "Fake", "url": up.url}))
        .await;
    World {
        base,
        integration,
        slug,
        _up: up,
    }
}

impl World {
    async fn alice_token(&self) -> String {
        self.base.token(self.alice).await
    }

    /// A pass-through `tools/call`; returns the status and the whole body.
    async fn call(&self, token: &str, tool: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = self
            .gw
            .http
            .post(format!("{}/{}", self.app_url, self.slug))
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": tool, "arguments": {"apiKey": "sk-never-stored"}}}));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// `/events` items once there are at least `n` (newest first).
    async fn events(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, body) = self
                .gw
                .api(Method::GET, "/events?limit=200", &self.admin, None)
                .await;
            assert_eq!(status, 200, "{body}");
            let items = body["items"].as_array().unwrap().clone();
            if items.len() >= n || Instant::now() > deadline {
                assert_eq!(items.len(), n, "{body:#}");
                return items;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn by_tool<'a>(events: &'a [Value], tool: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["toolName"] == tool)
        .unwrap_or_else(|| panic!("no event for {tool}: {events:#?}"))
}

/// Alice's token, after the calls the trace tests look at: through pass-through `echo`,
/// `slow`, `fail` (an error result) and `crash` (a `500`), `denied` with a token that is not
/// one, and on the aggregated endpoint an `initialize` and a namespaced `echo`: seven events.
async fn traced_calls(w: &World) -> String {
    let token = w.alice_token().await;
    assert_eq!(w.call(&token, "echo", &[]).await.0, 200);
    let (status, body) = w.call(&token, "slow", &[]).await;
    assert!(status == 200 && body.contains("done"), "{body}");
    assert_eq!(w.call(&token, "fail", &[]).await.0, 200);
    assert_eq!(w.call(&token, "crash", &[]).await.0, 500);
    assert_eq!(w.call("not-a-token", "denied", &[]).await.0, 401);
    let aggregated = |session: Option<&str>, body: Value| {
        let mut req =
            w.gw.http
                .post(&w.app_url)
                .bearer_auth(&token)
                .header("accept", "application/json, text/event-stream")
                .json(&body);
        if let Some(session) = session {
            req = req.header("mcp-session-id", session);
        }
        req.send()
    };
    let init = aggregated(
        None,
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    )
    .await
    .unwrap();
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    init.text().await.unwrap();
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": format!("{}_echo", w.slug), "arguments": {}}});
    let resp = aggregated(Some(&session), call).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    token
}

/// The pass-through `echo` call's event (the one with an agent session).
fn passthrough_echo(events: &[Value]) -> &Value {
    let echo = events
        .iter()
        .find(|e| e["toolName"] == "echo" && e["agentSessionId"].is_string());
    echo.unwrap_or_else(|| panic!("no pass-through echo: {events:#?}"))
}

/// Every event names itself, its session, its agent, its type and its status, and holds
/// neither the call's arguments (capture is off by default) nor the agent's token.
async fn traced_events_carry_their_identity_and_no_secret(backend: Backend) {
    let w = world(backend, |_| {}).await;
    let token = traced_calls(&w).await;
    for e in &w.events(7).await {
        for field in [
            "id",
            "createdAt",
            "sessionId",
            "agentId",
            "eventType",
            "status",
        ] {
            assert!(
                e[field].as_str().is_some_and(|s| !s.is_empty()),
                "{field} missing: {e}"
            );
        }
        assert_eq!(e["agentId"], w.app.to_string());
        assert!(e.get("requestJson").is_none(), "capture is off by default");
        assert!(!e.to_string().contains("sk-never-stored"));
        assert!(!e.to_string().contains(&token), "a token reached an event");
    }
    w.base.gw.stop().await;
}

/// A successful call is traced `ok` with its type, tool, integration, user, bytes each way
/// and duration (a slow call's about what it took).
async fn successful_calls_are_traced_with_tool_user_bytes_and_duration(backend: Backend) {
    let w = world(backend, |_| {}).await;
    traced_calls(&w).await;
    let events = w.events(7).await;
    let echo = passthrough_echo(&events);
    assert_eq!(echo["status"], "ok");
    assert_eq!(echo["eventType"], "tools/call");
    assert_eq!(echo["integrationId"], w.integration.to_string());
    assert_eq!(echo["userId"], w.alice.to_string());
    assert!(echo["bytesIn"].as_i64().unwrap() > 50 && echo["bytesOut"].as_i64().unwrap() > 50);
    assert!(echo["durationMs"].as_i64().unwrap() < 1_000);
    let slow = by_tool(&events, "slow");
    assert_eq!(slow["status"], "ok", "{slow}");
    let ms = slow["durationMs"].as_i64().unwrap();
    assert!((550..5_000).contains(&ms), "slow took {ms} ms");
    w.base.gw.stop().await;
}

/// A tool's error result and an upstream's `500` are traced `error_remote` with what went
/// wrong; a refused token `error_auth`, with the integration, no user and a short duration.
async fn failed_calls_are_traced_with_whose_failure_it_was(backend: Backend) {
    let w = world(backend, |_| {}).await;
    traced_calls(&w).await;
    let events = w.events(7).await;
    let fail = by_tool(&events, "fail");
    assert_eq!(fail["status"], "error_remote");
    assert!(
        fail["errorMessage"]
            .as_str()
            .unwrap()
            .contains("the tool failed")
    );
    let crash = by_tool(&events, "crash");
    assert_eq!(crash["status"], "error_remote");
    assert!(crash["errorMessage"].as_str().unwrap().contains("500"));
    let denied = by_tool(&events, "denied");
    assert_eq!(denied["status"], "error_auth", "{denied}");
    assert_eq!(denied["integrationId"], w.integration.to_string());
    assert!(denied["userId"].is_null());
    assert!(denied["durationMs"].as_i64().unwrap() < 1_000);
    w.base.gw.stop().await;
}

/// An aggregated session's events (its `initialize`, a namespaced call traced with the
/// integration it went to) share one trace, keyed by the session's id.
async fn aggregated_calls_are_traced_under_their_session(backend: Backend) {
    let w = world(backend, |_| {}).await;
    traced_calls(&w).await;
    let events = w.events(7).await;
    let agg = by_tool(&events, &format!("{}_echo", w.slug));
    assert_eq!(agg["status"], "ok");
    assert_eq!(agg["integrationId"], w.integration.to_string());
    let init = events
        .iter()
        .find(|e| e["eventType"] == "initialize")
        .unwrap();
    assert_eq!(init["status"], "ok");
    assert_eq!(init["traceId"], agg["traceId"]);
    assert_eq!(init["sessionId"], agg["sessionId"]);
    w.base.gw.stop().await;
}

/// Pass-through calls without a client session share the agent session's trace, which
/// `/traces` sums up (counts, agent, owner) and `/traces/:id` lists in call order.
async fn passthrough_calls_share_the_agent_sessions_trace(backend: Backend) {
    let w = world(backend, |_| {}).await;
    traced_calls(&w).await;
    let events = w.events(7).await;
    let trace_id = passthrough_echo(&events)["traceId"].as_str().unwrap();
    let (status, _, traces) = w.gw.api(Method::GET, "/traces", &w.admin, None).await;
    assert_eq!(status, 200, "{traces}");
    let traces = traces["items"].as_array().unwrap().clone();
    let pass = traces
        .iter()
        .find(|t| t["traceId"] == trace_id)
        .expect("the pass-through trace");
    assert_eq!(pass["eventCount"], 4, "{pass}");
    assert_eq!(pass["okCount"], 2);
    assert_eq!(pass["errorCount"], 2);
    assert_eq!(pass["agentId"], w.app.to_string());
    assert_eq!(pass["agentName"], "Agents");
    assert_eq!(pass["ownerEmail"], "alice@example.com");
    let one = format!("/traces/{trace_id}");
    let (status, _, one) = w.gw.api(Method::GET, &one, &w.admin, None).await;
    assert_eq!(status, 200, "{one}");
    let tools: Vec<&str> = one["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["toolName"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["echo", "slow", "fail", "crash"]);
    w.base.gw.stop().await;
}

/// `/events` filters by status, and `/traces/stats` counts the period's events, their
/// latency and bytes, and each tool's errors by integration.
async fn events_filter_by_status_and_stats_sum_the_period(backend: Backend) {
    let w = world(backend, |_| {}).await;
    traced_calls(&w).await;
    w.events(7).await;
    let (_, _, errors) =
        w.gw.api(Method::GET, "/events?status=error_remote", &w.admin, None)
            .await;
    assert_eq!(errors["items"].as_array().unwrap().len(), 2, "{errors}");
    let (status, _, stats) =
        w.gw.api(Method::GET, "/traces/stats?period=1d", &w.admin, None)
            .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["totalEvents"], 7, "{stats}");
    assert_eq!(stats["okEvents"], 4);
    assert_eq!(stats["errorEvents"], 3);
    assert!(stats["latency"]["p99"].as_i64().unwrap() >= 550);
    assert!(stats["bytesTransferred"]["in"].as_i64().unwrap() > 0);
    let top = stats["topTools"].as_array().unwrap();
    let fail_stat = top.iter().find(|t| t["toolName"] == "fail").unwrap();
    assert_eq!(fail_stat["errorCount"], 1);
    assert_eq!(fail_stat["integrationId"], w.integration.to_string());
    w.base.gw.stop().await;
}

/// Reads SSE events from a `/events/stream` response: (id, data) pairs.
struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> (String, Value) {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let id = event.lines().find_map(|l| l.strip_prefix("id:"));
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if let Some(id) = id {
                    return (id.trim().to_owned(), serde_json::from_str(&data).unwrap());
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream is open")
                .unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn open_stream(w: &World, last: Option<&str>, query: &str) -> SseReader {
    let mut req =
        w.gw.http
            .get(format!("{}/api/v1/events/stream{query}", w.gw.url))
            .bearer_auth(&w.admin);
    if let Some(id) = last {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    SseReader::new(resp)
}

async fn event_stream_resumes_without_losing_or_repeating(backend: Backend) {
    let w = world(backend, |_| {}).await;
    let token = w.alice_token().await;
    let mut stream = open_stream(&w, None, "").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        w.call(&token, "echo", &[]).await;
    }
    for _ in 0..3 {
        seen.push(stream.next().await);
    }
    // Disconnect; events keep happening.
    drop(stream);
    for tool in ["fail", "echo", "crash"] {
        w.call(&token, tool, &[]).await;
    }
    let last = seen.last().unwrap().0.clone();
    let mut resumed = open_stream(&w, Some(&last), "").await;
    for _ in 0..3 {
        seen.push(resumed.next().await);
    }
    w.call(&token, "slow", &[]).await;
    seen.push(resumed.next().await);
    let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    let tools: Vec<&str> = seen
        .iter()
        .map(|(_, e)| e["toolName"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        ["echo", "echo", "echo", "fail", "echo", "crash", "slow"]
    );
    for (id, e) in &seen {
        assert_eq!(e["id"], id.as_str(), "the SSE id is the event id");
    }
    // Exactly the stored events, in order, each once.
    let stored = w.events(7).await;
    let mut stored_ids: Vec<&str> = stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    stored_ids.reverse();
    assert_eq!(ids, stored_ids);

    // Filters apply to the stream; a bad Last-Event-ID is a 400.
    let mut errors = open_stream(&w, None, "?status=error_remote").await;
    w.call(&token, "echo", &[]).await;
    w.call(&token, "fail", &[]).await;
    let (_, e) = errors.next().await;
    assert_eq!(e["toolName"], "fail");
    let resp =
        w.gw.http
            .get(format!("{}/api/v1/events/stream", w.gw.url))
            .bearer_auth(&w.admin)
            .header("last-event-id", "nope")
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 400);
    w.base.gw.stop().await;
}

/// A `keygate tail` process and its output lines.
struct Tail {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Tail {
    async fn start(w: &World, args: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg("tail")
            .args(["--url", &w.gw.url])
            .args(args)
            .env("KEYGATE_TOKEN", &w.admin)
            .env("KEYGATE_DATA_DIR", w.gw.data_dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn keygate tail");
        // It says when it follows; calls made after that must all show.
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
            .await
            .expect("tail starts")
            .unwrap()
            .unwrap_or_default();
        assert!(line.contains("following trace events"), "{line}");
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .expect("tail is running")
    }
}

async fn tail_prints_each_call_as_it_happens(backend: Backend) {
    let w = world(backend, |_| {}).await;
    let token = w.alice_token().await;
    let mut json = Tail::start(&w, &["--json"]).await;
    let mut refused = Tail::start(&w, &["--status", "error_auth"]).await;
    let app = w.app.to_string();
    let mut only_app = Tail::start(&w, &["--app", &app, "--tool", "fail"]).await;
    for (tool, token, status) in [
        ("echo", token.as_str(), "ok"),
        ("fail", token.as_str(), "error_remote"),
        ("denied", "bad-token", "error_auth"),
    ] {
        let started = Instant::now();
        w.call(token, tool, &[]).await;
        // Printed as it happens: before the next call is made.
        let e: Value = serde_json::from_str(&json.line().await).unwrap();
        assert_eq!(e["toolName"], tool);
        assert_eq!(e["status"], status);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // The application by its name, not its id.
    let line = refused.line().await;
    assert!(
        line.contains("error_auth") && line.contains("denied") && line.contains("Agents"),
        "{line}"
    );
    // The integration by its slug and the user by her email.
    let line = only_app.line().await;
    assert!(
        line.contains("error_remote")
            && line.contains("fail")
            && line.contains(&w.slug)
            && line.contains("alice@example.com"),
        "{line}"
    );
    for mut t in [json, refused, only_app] {
        t.child.kill().await.ok();
    }
    w.base.gw.stop().await;
}

async fn metrics_parse_and_count_by_method_integration_and_tool(backend: Backend) {
    let w = world(backend, |_| {}).await;
    let token = w.alice_token().await;
    let (status, _) = w.call(&token, "echo", &[]).await;
    assert_eq!(status, 200);
    w.call("bad-token", "denied", &[]).await;
    // A session's DELETE: an HTTP method with no MCP method.
    let deleted =
        w.gw.http
            .delete(format!("{}/{}", w.app_url, w.slug))
            .header("mcp-session-id", "session-1")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
    deleted.bytes().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let resp =
            w.gw.http
                .get(format!("{}/metrics", w.gw.url))
                .send()
                .await
                .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = resp.text().await.unwrap();
        // The exchange completes as the answer's end goes by, on the server's side.
        if text.contains(r#"http_method="DELETE""#) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let samples = parse_prometheus(&text);
    let value = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("{name} {labels:?} in\n{text}"))
    };
    let route = "/apps/{id}/mcp/{integration}";
    let ok_call = [
        ("route", route),
        ("http_method", "POST"),
        ("mcp_method", "tools/call"),
        ("status", "ok"),
    ];
    assert_eq!(value("keygate_mcp_requests_total", &ok_call), 1.0);
    assert_eq!(
        value(
            "keygate_mcp_requests_total",
            &[("mcp_method", "tools/call"), ("status", "error_auth")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "keygate_mcp_requests_total",
            &[("http_method", "DELETE"), ("mcp_method", "none")]
        ),
        1.0
    );
    assert_eq!(
        value("keygate_mcp_request_duration_seconds_count", &ok_call),
        1.0
    );
    let integration = w.integration.to_string();
    assert!(
        value(
            "keygate_integration_requests_total",
            &[("integration", &integration), ("status", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            "keygate_tool_calls_total",
            &[
                ("integration", &integration),
                ("tool", "echo"),
                ("status", "ok")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            "keygate_tool_call_duration_seconds_count",
            &[("integration", &integration), ("tool", "echo")]
        ),
        1.0
    );
    assert!(
        value(
            "keygate_upstream_response_seconds_count",
            &[("outcome", "ok")]
        ) >= 1.0
    );
    assert_eq!(value("keygate_trace_events_dropped_total", &[]), 0.0);
    value("keygate_trace_queue_depth", &[]);
    value("keygate_open_streams", &[]);
    assert_eq!(
        value(
            "keygate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(value("process_open_fds", &[]) > 0.0);
    assert!(value("process_max_fds", &[]) >= value("process_open_fds", &[]));
    value("process_cpu_seconds_total", &[]);
    let started = value("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 86_400.0 * 365.0 && started <= now + 1.0,
        "{started}"
    );
    assert!(
        !text.contains(&w.alice.to_string()),
        "no user ids in labels"
    );
    w.base.gw.stop().await;
}

type Sample = (String, std::collections::HashMap<String, String>, f64);

/// A strict reader of the Prometheus text format (0.0.4): every line is a `# HELP`/`# TYPE`
/// comment or `name{label="value",…} number`; every sample belongs to a declared family;
/// histogram buckets are cumulative and end in `+Inf` equal to `_count`.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut types = std::collections::HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (parts.next().unwrap(), parts.next().unwrap(), parts.next());
            assert!(matches!(kind, "HELP" | "TYPE"), "{line}");
            if kind == "TYPE" {
                let t = value.unwrap();
                assert!(
                    matches!(t, "counter" | "gauge" | "histogram" | "summary" | "untyped"),
                    "{line}"
                );
                types.insert(name.to_owned(), t.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let mut labels = std::collections::HashMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    let end = after.find('"').unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    labels.insert(k.to_owned(), after[..end].to_owned());
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name, labels)
            }
            None => (series, Default::default()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "undeclared family: {line}");
        samples.push((name.to_owned(), labels, value));
    }
    // Buckets: cumulative, closing with +Inf == _count for the same labels.
    for (name, labels, count) in samples.iter().filter(|(n, _, _)| n.ends_with("_count")) {
        let family = name.trim_end_matches("_count");
        if types.get(family).map(String::as_str) != Some("histogram") {
            continue;
        }
        let bucket_name = format!("{family}_bucket");
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|(n, l, _)| {
                *n == bucket_name && l.iter().all(|(k, v)| k == "le" || labels.get(k) == Some(v))
            })
            .map(|(_, l, v)| (l["le"].parse::<f64>().unwrap_or(f64::INFINITY), *v))
            .collect();
        buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family} not cumulative"
        );
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, *count));
    }
    samples
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, SIGTERMed in the middle of a burst of calls: every call that got its
/// answer has its event in the database after the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_loses_no_event() {
    use keygate_store::{Kek, Store, Vault};
    let dir = tempfile::tempdir().unwrap();
    let key = Kek::generate_base64();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("serve")
        .env("KEYGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYGATE_DATA_DIR", dir.path())
        .env("KEYGATE_VAULT_KEY", &key)
        .env("KEYGATE_OUTBOUND_ALLOWED_PRIVATE_HOSTS", "127.0.0.1")
        .env("KEYGATE_API_RATE_LIMIT_PER_MINUTE", "10000")
        .env("RUST_LOG", "warn,keygate=info")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn keygate serve");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{url}/readyz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Set up through the same database, as the CLI would.
    let mut config = keygate_core::config::Config {
        data_dir: Some(dir.path().display().to_string()),
        ..Default::default()
    };
    config.vault.key = Some(key.clone());
    let db = keygate::app::open_db(&config).await.unwrap();
    let store = Store::new(
        db.clone(),
        Vault::unlock(&db, &Kek::from_base64(&key).unwrap())
            .await
            .unwrap(),
    );
    let org = store.default_organization().await.unwrap().id;
    let secret = keygate_auth::secret::generate_client_secret();
    let sa = store
        .create_service_account(
            org,
            "ops",
            None,
            None,
            &keygate_auth::secret::hash_secret(&secret),
        )
        .await
        .unwrap();
    let admin: Value = http
        .post(format!("{url}/oauth2/token"))
        .basic_auth(sa.id.client_id(), Some(&secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "management:all"),
            ("audience", &format!("{url}/api/v1")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = admin["access_token"].as_str().unwrap().to_owned();
    let api = |method: Method, path: &str, body: Option<Value>| {
        let mut req = http
            .request(method, format!("{url}/api/v1{path}"))
            .bearer_auth(&admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            req.send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap_or(Value::Null)
        }
    };
    let app = api(Method::POST, "/applications", Some(json!({"name": "burst", "oauth": {"type": "public", "redirectUris": ["http://127.0.0.1/cb"]}}))).await;
    let app: ApplicationId = app["application"]["id"].as_str().unwrap().parse().unwrap();
    let up = FakeUpstream::start().await;
    let i = api(
        Method::POST,
        "/integrations",
        Some(json!({"name": "Fake", "url": up.url})),
    )
    .await;
    let integration = i["integration"]["id"].as_str().unwrap();
    let slug = i["integration"]["slug"].as_str().unwrap().to_owned();
    api(
        Method::POST,
        &format!("/applications/{app}/integrations/{integration}"),
        None,
    )
    .await;
    let user = store
        .create_user(org, "burst@example.com", Role::Member, None)
        .await
        .unwrap()
        .id;
    let session = store
        .create_agent_session(
            org,
            keygate_store::NewAgentSession {
                application_id: app,
                user_id: Some(user),
                agent_id: Some(app.client_id()),
                name: None,
                hostname: None,
                user_agent: None,
                client_info: None,
                token_expires_at: None,
            },
        )
        .await
        .unwrap();
    let keys = keygate_auth::KeyRing::load(store.clone(), url.clone())
        .await
        .unwrap();
    let now = keygate_core::Timestamp::now().seconds();
    let mcp = format!("{url}/apps/{app}/mcp");
    let token = keys.sign(&keygate_auth::Claims {
        iss: url.clone(),
        sub: user.to_string(),
        aud: mcp.clone(),
        client_id: app.client_id(),
        scope: String::new(),
        org,
        sid: Some(session.id),
        iat: now,
        exp: now + 600,
        jti: uuid::Uuid::new_v4().to_string(),
    });

    // The burst: fast calls and slow (streamed, 600 ms) ones, SIGTERM while they run.
    let target = format!("{mcp}/{slug}");
    let mut calls = Vec::new();
    for n in 0..400 {
        let (http, target, token) = (http.clone(), target.clone(), token.clone());
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(n as u64)).await;
            let tool = if n % 10 == 0 { "slow" } else { "echo" };
            let resp = http
                .post(&target)
                .bearer_auth(&token)
                .header("accept", "application/json, text/event-stream")
                .json(&json!({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": tool}}))
                .send()
                .await
                .ok()?;
            let ok = resp.status() == 200;
            let body = resp.text().await.ok()?;
            (ok && body.contains("result")).then_some(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut answered = 0;
    for c in calls {
        if c.await.unwrap().is_some() {
            answered += 1;
        }
    }
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the gateway exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        answered >= 100,
        "only {answered} calls were answered before the shutdown"
    );
    let stored = store
        .trace_events_after(org, &keygate_store::EventFilter::default(), None, 10_000)
        .await
        .unwrap();
    assert_eq!(
        stored.len(),
        answered,
        "every answered call has its event, and only those"
    );
    assert!(
        stored
            .iter()
            .all(|e| e.status == "ok" && e.event_type == "tools/call")
    );
}
