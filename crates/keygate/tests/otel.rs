//! OpenTelemetry end to end: a real gateway configured through the standard `OTEL_*`
//! variables exports to an OTLP/HTTP collector inside the test, which decodes what it gets
//! (protobuf with `opentelemetry-proto`, or JSON). Pins the server span of each MCP request
//! and the client span of its upstream call (parentage, the MCP semantic-convention
//! attributes, status), the client spans of an aggregated fan-out, the collector's required
//! header, the trace event's W3C ids joining the spans, and the sampler. Every `both_backends!` body runs on SQLite and PostgreSQL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use keygate_core::IntegrationId;
use keygate_core::config::TelemetryConfig;
use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    spans_reach_a_collector_as_protobuf_with_its_required_header,
    spans_reach_a_collector_as_json,
    a_failed_tool_call_is_an_error_span_with_its_json_rpc_code,
    the_always_off_sampler_exports_nothing,
    an_aggregated_request_has_a_client_span_per_upstream,
);

const AGENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AGENT_SPAN: &str = "00f067aa0ba902b7";
const SPAN_KIND_SERVER: i64 = 2;
const SPAN_KIND_CLIENT: i64 = 3;
const STATUS_UNSET: i64 = 0;
const STATUS_ERROR: i64 = 2;

fn agent_traceparent() -> String {
    format!("00-{AGENT_TRACE}-{AGENT_SPAN}-01")
}

/// One span as a collector received it, whatever the encoding.
#[derive(Clone, Debug)]
struct SpanSeen {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i64,
    attributes: HashMap<String, String>,
    status_code: i64,
    status_message: String,
}

impl SpanSeen {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_protobuf(body: &[u8]) -> Vec<SpanSeen> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for s in scope.spans {
                let attributes = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(s)) => s.clone(),
                            Some(any_value::Value::IntValue(i)) => i.to_string(),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), value)
                    })
                    .collect();
                let status = s.status.clone().unwrap_or_default();
                spans.push(SpanSeen {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: i64::from(s.kind),
                    attributes,
                    status_code: i64::from(status.code),
                    status_message: status.message,
                });
            }
        }
    }
    spans
}

fn from_json(body: &[u8]) -> Vec<SpanSeen> {
    let request: Value = serde_json::from_slice(body).expect("an OTLP JSON request");
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let int = |v: &Value| v.as_i64().or_else(|| v.as_str()?.parse().ok()).unwrap_or(0);
    let mut spans = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for s in scope["spans"].as_array().into_iter().flatten() {
                let attributes = s["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|kv| {
                        let v = &kv["value"];
                        let value = [&v["stringValue"], &v["intValue"]]
                            .into_iter()
                            .map(text)
                            .find(|t| !t.is_empty())
                            .unwrap_or_default();
                        (text(&kv["key"]), value)
                    })
                    .collect();
                spans.push(SpanSeen {
                    trace_id: text(&s["traceId"]),
                    span_id: text(&s["spanId"]),
                    parent_span_id: text(&s["parentSpanId"]),
                    name: text(&s["name"]),
                    kind: int(&s["kind"]),
                    attributes,
                    status_code: int(&s["status"]["code"]),
                    status_message: text(&s["status"]["message"]),
                });
            }
        }
    }
    spans
}

/// An OTLP/HTTP collector on an ephemeral port: decodes `POST /v1/traces` by its content
/// type; with a required header, refuses (401) a request without it.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<SpanSeen>>>,
    content_types: Arc<Mutex<Vec<String>>>,
    refused: Arc<AtomicUsize>,
}

impl Collector {
    async fn start(required: Option<(&'static str, &'static str)>) -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let content_types = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let (s, c, r) = (spans.clone(), content_types.clone(), refused.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (spans, content_types, refused) = (s.clone(), c.clone(), r.clone());
                async move {
                    if let Some((name, value)) = required
                        && headers.get(name).and_then(|v| v.to_str().ok()) != Some(value)
                    {
                        refused.fetch_add(1, Ordering::SeqCst);
                        return StatusCode::UNAUTHORIZED;
                    }
                    let content_type = headers["content-type"].to_str().unwrap().to_owned();
                    let decoded = match content_type.as_str() {
                        "application/x-protobuf" => from_protobuf(&body),
                        "application/json" => from_json(&body),
                        other => panic!("unexpected content type {other}"),
                    };
                    content_types.lock().unwrap().push(content_type);
                    spans.lock().unwrap().extend(decoded);
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url,
            spans,
            content_types,
            refused,
        }
    }

    /// The spans received, once there are at least `n` (waiting up to 10 s).
    async fn spans(&self, n: usize) -> Vec<SpanSeen> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if spans.len() >= n || Instant::now() > deadline {
                assert!(spans.len() >= n, "{n} spans expected: {spans:#?}");
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `[telemetry]` settings that the binary's loader makes of these variables.
fn from_env(vars: &[(&str, &str)]) -> TelemetryConfig {
    let dir = tempfile::tempdir().unwrap();
    let env = |name: &str| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    };
    keygate::settings::load(None, Some(dir.path()), env)
        .expect("the variables are valid")
        .telemetry
}

/// A gateway with `telemetry`, and one fake upstream attached as a pass-through integration.
struct World {
    base: McpWorld,
    integration: IntegrationId,
    slug: String,
    _up: FakeUpstream,
}

impl World {
    async fn start(backend: Backend, telemetry: TelemetryConfig) -> Self {
        let base = McpWorld::start(backend, AppClient::Public, |c| c.telemetry = telemetry).await;
        let up = FakeUpstream::start().await;
        let (integration, slug) = base
            .integration(json!({"name": "Fake", "url": up.url}))
            .await;
        Self {
            base,
            integration,
            slug,
            _up: up,
        }
    }

    /// A pass-through `tools/call` in the agent's trace; the status and the JSON answer.
    async fn call(&self, token: &str, tool: &str) -> (u16, Value) {
        let resp = self
            .base
            .gw
            .http
            .post(format!("{}/{}", self.base.app_url, self.slug))
            .header("accept", "application/json, text/event-stream")
            .header("traceparent", agent_traceparent())
            .header("mcp-session-id", "session-1")
            .bearer_auth(token)
            .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": tool, "arguments": {}}}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The trace events once there are `n`.
    async fn events(&self, query: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, body) = self
                .base
                .gw
                .api(
                    Method::GET,
                    &format!("/events?{query}"),
                    &self.base.admin,
                    None,
                )
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

/// The gateway's server span and the client span of its upstream call.
fn server_and_client(spans: &[SpanSeen]) -> (&SpanSeen, &SpanSeen) {
    let one = |kind| {
        let found: Vec<_> = spans.iter().filter(|s| s.kind == kind).collect();
        assert_eq!(found.len(), 1, "one span of kind {kind}: {spans:#?}");
        found[0]
    };
    (one(SPAN_KIND_SERVER), one(SPAN_KIND_CLIENT))
}

async fn spans_reach_a_collector_as_protobuf_with_its_required_header(backend: Backend) {
    let collector = Collector::start(Some(("x-api-key", "k+1=="))).await;
    let telemetry = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=k%2B1%3D%3D"),
    ]);
    let w = World::start(backend, telemetry).await;
    let token = w.base.token(w.base.alice).await;
    let (status, answer) = w.call(&token, "echo").await;
    assert_eq!(status, 200, "{answer}");

    let spans = collector.spans(2).await;
    assert_eq!(collector.refused.load(Ordering::SeqCst), 0);
    assert!(
        collector
            .content_types
            .lock()
            .unwrap()
            .iter()
            .all(|t| t == "application/x-protobuf")
    );
    let (server, client) = server_and_client(&spans);
    // The server span continues the agent's trace; the client span is its child, and it is
    // the parent the upstream was told about.
    assert_eq!(server.trace_id, AGENT_TRACE);
    assert_eq!(server.parent_span_id, AGENT_SPAN);
    assert_eq!(client.trace_id, AGENT_TRACE);
    assert_eq!(client.parent_span_id, server.span_id);
    let sent = answer["result"]["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(sent, format!("00-{AGENT_TRACE}-{}-01", client.span_id));

    assert_eq!(server.name, "tools/call echo");
    assert_eq!(server.attr("mcp.method.name"), Some("tools/call"));
    assert_eq!(server.attr("gen_ai.tool.name"), Some("echo"));
    assert_eq!(server.attr("gen_ai.operation.name"), Some("execute_tool"));
    assert_eq!(server.attr("jsonrpc.request.id"), Some("7"));
    assert_eq!(server.attr("mcp.session.id"), Some("session-1"));
    assert_eq!(server.attr("http.request.method"), Some("POST"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("keygate.status"), Some("ok"));
    let integration = w.integration.to_string();
    assert_eq!(server.attr("keygate.integration_id"), Some(&*integration));
    assert_eq!(server.attr("error.type"), None);
    assert_eq!(server.status_code, STATUS_UNSET);
    assert_eq!(client.name, "POST");
    assert_eq!(client.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(client.attr("http.response.status_code"), Some("200"));

    // The trace event carries the span's W3C ids, and can be found by them.
    let events = w.events("limit=10", 1).await;
    assert_eq!(events[0]["otelTraceId"], AGENT_TRACE);
    assert_eq!(events[0]["otelSpanId"], server.span_id.as_str());
    let joined = w.events(&format!("otelTraceId={AGENT_TRACE}"), 1).await;
    assert_eq!(joined[0]["id"], events[0]["id"]);
    w.events(&format!("otelTraceId={}", "0".repeat(32)), 0)
        .await;
    w.base.gw.stop().await;
}

async fn spans_reach_a_collector_as_json(backend: Backend) {
    let collector = Collector::start(None).await;
    let telemetry = from_env(&[
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", collector.url).as_str(),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ]);
    let w = World::start(backend, telemetry).await;
    let token = w.base.token(w.base.alice).await;
    let (status, _) = w.call(&token, "echo").await;
    assert_eq!(status, 200);

    let spans = collector.spans(2).await;
    assert!(
        collector
            .content_types
            .lock()
            .unwrap()
            .iter()
            .all(|t| t == "application/json")
    );
    let (server, client) = server_and_client(&spans);
    assert_eq!(server.trace_id, AGENT_TRACE);
    assert_eq!(server.parent_span_id, AGENT_SPAN);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(server.attr("mcp.method.name"), Some("tools/call"));
    assert_eq!(server.attr("gen_ai.tool.name"), Some("echo"));
    let events = w.events("limit=10", 1).await;
    assert_eq!(events[0]["otelTraceId"], server.trace_id.as_str());
    w.base.gw.stop().await;
}

async fn a_failed_tool_call_is_an_error_span_with_its_json_rpc_code(backend: Backend) {
    let collector = Collector::start(None).await;
    let telemetry = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str())]);
    let w = World::start(backend, telemetry).await;
    let token = w.base.token(w.base.alice).await;
    let (status, answer) = w.call(&token, "fail").await;
    assert_eq!(status, 200);
    assert_eq!(answer["error"]["code"], -32000);

    let spans = collector.spans(2).await;
    let (server, _) = server_and_client(&spans);
    assert_eq!(server.status_code, STATUS_ERROR);
    assert!(
        server.status_message.contains("the tool failed"),
        "{server:?}"
    );
    assert_eq!(server.attr("error.type"), Some("-32000"));
    assert_eq!(server.attr("rpc.response.status_code"), Some("-32000"));
    assert_eq!(server.attr("keygate.status"), Some("error_remote"));
    let events = w.events("limit=10", 1).await;
    assert_eq!(events[0]["status"], "error_remote");
    w.base.gw.stop().await;
}

async fn the_always_off_sampler_exports_nothing(backend: Backend) {
    let collector = Collector::start(None).await;
    let telemetry = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
        ("OTEL_TRACES_SAMPLER", "always_off"),
    ]);
    let w = World::start(backend, telemetry).await;
    let token = w.base.token(w.base.alice).await;
    let (status, answer) = w.call(&token, "echo").await;
    assert_eq!(status, 200);
    // The upstream is still told the trace, marked not sampled.
    let sent = answer["result"]["headers"]["traceparent"].as_str().unwrap();
    assert!(
        sent.starts_with(&format!("00-{AGENT_TRACE}-")) && sent.ends_with("-00"),
        "{sent}"
    );
    let events = w.events("limit=10", 1).await;
    assert_eq!(events[0]["otelTraceId"], AGENT_TRACE);
    // Stopping the gateway sends whatever was queued: nothing.
    w.base.gw.stop().await;
    assert!(collector.spans.lock().unwrap().is_empty());
    assert!(collector.content_types.lock().unwrap().is_empty());
}

async fn an_aggregated_request_has_a_client_span_per_upstream(backend: Backend) {
    let collector = Collector::start(None).await;
    let telemetry = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str())]);
    let w = McpWorld::start(backend, AppClient::Public, |c| c.telemetry = telemetry).await;
    let (alpha, beta) = (
        FakeUpstream::named("alpha").await,
        FakeUpstream::named("beta").await,
    );
    for (name, up) in [("Alpha", &alpha), ("Beta", &beta)] {
        w.integration(json!({"name": name, "url": up.url})).await;
    }
    let token = w.token(w.alice).await;
    let post = |session: Option<&str>, body: Value| {
        let mut req =
            w.gw.http
                .post(&w.app_url)
                .bearer_auth(&token)
                .header("accept", "application/json, text/event-stream")
                .header("traceparent", agent_traceparent())
                .json(&body);
        if let Some(s) = session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-06-18");
        }
        req.send()
    };
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let resp = post(None, initialize).await.unwrap();
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let resp = post(Some(&session), list).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let (server, clients) = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let server = spans
            .iter()
            .find(|s| s.attr("mcp.method.name") == Some("tools/list"))
            .cloned();
        let clients: Vec<SpanSeen> = server
            .iter()
            .flat_map(|server| spans.iter().filter(|s| s.parent_span_id == server.span_id))
            .cloned()
            .collect();
        if clients.len() >= 2 || Instant::now() > deadline {
            break (server.expect("the tools/list span"), clients);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(server.kind, SPAN_KIND_SERVER);
    assert_eq!(server.trace_id, AGENT_TRACE);
    assert_eq!(server.attr("mcp.protocol.version"), Some("2025-06-18"));
    // The sealed aggregated session is long: the span names it as the event does, digested.
    assert!(
        server
            .attr("mcp.session.id")
            .is_some_and(|s| s.starts_with("sha256:")),
        "{server:?}"
    );
    assert_eq!(clients.len(), 2, "{clients:#?}");
    let ports: std::collections::HashSet<_> = clients
        .iter()
        .inspect(|c| assert_eq!(c.kind, SPAN_KIND_CLIENT))
        .map(|c| c.attr("server.port").unwrap().to_owned())
        .collect();
    assert_eq!(ports.len(), 2, "one client span per upstream: {clients:#?}");
    w.gw.stop().await;
}
