//! A fake MCP server (Streamable HTTP) for proxy tests. It answers JSON-RPC requests with what
//! it saw — method, params and every request header — and a fixed `Mcp-Session-Id`, and has
//! a few scripted behaviours:
//!
//! - `tools/call` of `slow`: an SSE response of three events 300 ms apart;
//! - `tools/call` of `reset`: one SSE event, then the connection drops mid-stream;
//! - `tools/call` of `hang`: never answers;
//! - `tools/call` of `stall`: SSE response headers, then nothing, ever;
//! - `tools/call` of `fail`: a JSON-RPC error (`-32000`, "the tool failed");
//! - `tools/call` of `crash`: HTTP 500;
//! - `tools/call` of `invalid`: a JSON-RPC error `-32602` (Invalid params), sent by a 2026
//!   fake with `400` as its SDKs do;
//! - `tools/call` of `reveal`: a result that gives away everything it got, as a careless tool
//!   would: its arguments and headers as JSON text, and the bearer credential it was sent in
//!   free text; `tools/call` of `reveal_error`: a JSON-RPC error quoting that credential;
//! - `tools/call` of `ask`: an SSE response that first sends the client a
//!   `sampling/createMessage` request (id 5), waits for the client's answer (POSTed back), and
//!   ends with a result quoting it;
//! - `tools/call` of `long`: an SSE response with a progress notification every 100 ms and
//!   the result after 10 s; it ends early, without a result, when `notifications/cancelled`
//!   names its request id, and an answer the client drops before its end is listed by
//!   [`FakeUpstream::dropped`] (a 2026 server's cancellation);
//! - `tools/call` of `wait`: a JSON result after 10 s; a request dropped before is listed by
//!   [`FakeUpstream::dropped`] too;
//! - `initialize`, `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`
//!   and `resources/read` answer like a real server with tools `echo` (annotated
//!   `readOnlyHint`), `slow`, `ask`, prompt
//!   `hello`, resource `{name}://doc` and template `{name}://items/{id}` (`name` given to
//!   [`FakeUpstream::named`]); it declares `listChanged` for its lists, resource
//!   subscriptions and completions (`completion/complete` is echoed);
//! - `resources/subscribe` and `resources/unsubscribe` answer `{}`; a subscribe also sends
//!   `notifications/resources/updated` for its URI on every open `GET` stream;
//! - `GET /mcp`: events 1–3 (resuming after `Last-Event-ID`), then an open stream, which also
//!   carries what [`FakeUpstream::push`] sends (ids from 4 on);
//! - `tools/call` of `refuse`: `400` with a JSON-RPC error `-32600`, in a live session;
//! - legacy HTTP+SSE: `GET /sse` opens with `event: endpoint` (`/messages?sessionId=legacy-1`),
//!   and each request POSTed to `/messages?sessionId=legacy-1` is answered `202`, its answer
//!   sent on the stream: the Streamable HTTP one, its result also carrying the request's
//!   `method` and `headers` (the echo); notifications get nothing.
//!
//! Sessions are `upstream-session-{n}`, `n` starting at 1 ([`SESSION_ID`]); other ids are
//! accepted as they are. [`FakeUpstream::forget_sessions`] makes it forget the ones it issued:
//! a request carrying one gets `404` — or, after [`FakeUpstream::refuse_unknown_sessions_with_400`],
//! `400` "No valid session ID" as server-everything answers — and the next `initialize` issues
//! `n + 1`.
//! [`FakeUpstream::requests`] lists every message POSTed to `/mcp`, with its headers;
//! [`FakeUpstream::hits`] every HTTP request it received on any path (known or not), with its
//! method, path, query and headers — what a test asserts on to show that nothing reached it.
//! [`FakeUpstream::stall`] makes it stop answering `/mcp` (never, or after the headers) until
//! it is told to answer again. [`FakeUpstream::split_writes`] makes it send every result as an
//! SSE event in two writes cut inside a UTF-8 character (and list a tool described as
//! `café crème`).
//!
//! [`FakeUpstream::modern`] speaks only 2026-07-28: stateless (no `Mcp-Session-Id`, `GET` and
//! `DELETE` → `405`), `server/discover`, results with `resultType`; every request must carry
//! `params._meta` with the version and client capabilities and the `MCP-Protocol-Version`,
//! `Mcp-Method` and `Mcp-Name` headers that mirror it (else `400`, `-32602` or `-32020`);
//! every result carries its `_meta["io.modelcontextprotocol/serverInfo"]`;
//! `initialize` is refused with `400` and `-32022` naming the one version it speaks; `ping`
//! and `logging/setLevel` are unknown (`404`, `-32601`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

use axum::extract::Query;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use serde_json::{Value, json};

use crate::fake_oauth::FakeOAuth;

pub const SESSION_ID: &str = "upstream-session-1";
/// The only version a [`FakeUpstream::modern`] speaks.
pub const MODERN: &str = "2026-07-28";
const SESSION_PREFIX: &str = "upstream-session-";

/// How a fake answers `/mcp` ([`FakeUpstream::stall`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// It answers as usual.
    No = 0,
    /// It accepts each request and never answers, not even with headers.
    Silent = 1,
    /// It sends the headers of an SSE answer, then nothing.
    AfterHeaders = 2,
}

/// A running fake upstream.
pub struct FakeUpstream {
    /// `http://127.0.0.1:PORT/mcp`
    pub url: String,
    /// `http://127.0.0.1:PORT/sse` (legacy transport)
    pub sse_url: String,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

/// What the handlers share.
struct Shared {
    name: &'static str,
    /// Speaks only 2026-07-28.
    modern: bool,
    /// Sessions `upstream-session-{n}` with `n` below this are forgotten; `n` is the live one.
    epoch: AtomicU32,
    /// Every message POSTed to `/mcp`: `{method, id, params, headers}`.
    log: Mutex<Vec<Value>>,
    /// Every HTTP request, any path: `{method, path, query, headers}`.
    hits: Arc<Mutex<Vec<Value>>>,
    /// The client's answers to the fake's own requests, and its notifications.
    answers: tokio::sync::broadcast::Sender<Value>,
    /// A [`Stall`], as its discriminant.
    stall: AtomicU8,
    /// The line end of results sent in two writes ([`FakeUpstream::split_writes`]).
    split: Mutex<Option<&'static str>>,
    /// Messages for the open `GET` streams ([`FakeUpstream::push`]).
    pushes: tokio::sync::broadcast::Sender<Value>,
    /// The ids of `long` and `wait` calls dropped before their end.
    dropped: Arc<Mutex<Vec<Value>>>,
    /// Forgotten sessions get `400` rather than `404`.
    forgotten_is_400: std::sync::atomic::AtomicBool,
    /// Moves when the legacy streams are to end ([`FakeUpstream::end_legacy_streams`]).
    legacy_epoch: tokio::sync::watch::Sender<u32>,
}

impl Shared {
    /// The answer of a stalled fake, if it is stalled: one that never comes, or headers only.
    async fn stalled(&self) -> Option<Response> {
        match self.stall.load(Ordering::SeqCst) {
            x if x == Stall::Silent as u8 => std::future::pending().await,
            x if x == Stall::AfterHeaders as u8 => Some(
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(Body::from_stream(stream::pending::<
                        Result<Bytes, Infallible>,
                    >()))
                    .expect("valid response"),
            ),
            _ => None,
        }
    }

    fn session(&self) -> String {
        format!("{SESSION_PREFIX}{}", self.epoch.load(Ordering::SeqCst))
    }

    /// The answer to a request naming a forgotten session (`id`: the request's).
    fn unknown_session(&self, id: &Value) -> Response {
        if self.forgotten_is_400.load(Ordering::SeqCst) {
            let message = "Bad Request: No valid session ID provided";
            rpc_error(StatusCode::BAD_REQUEST, id, -32000, message, Value::Null)
        } else {
            StatusCode::NOT_FOUND.into_response()
        }
    }

    /// Whether a request names a session this fake issued and forgot.
    fn forgotten(&self, headers: &HeaderMap) -> bool {
        headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix(SESSION_PREFIX))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n < self.epoch.load(Ordering::SeqCst))
    }
}

impl FakeUpstream {
    pub async fn start() -> Self {
        Self::named("fake").await
    }

    /// A fake whose resource URIs and server name carry `name`.
    pub async fn named(name: &'static str) -> Self {
        Self::serve(name, None, false).await
    }

    /// A fake of the 2026-07-28 era only (see the module doc).
    pub async fn modern(name: &'static str) -> Self {
        Self::serve(name, None, true).await
    }

    /// Every JSON-RPC message POSTed to `/mcp` so far: `{method, id, params, headers, body}`
    /// (`body`: the text as it arrived).
    pub fn requests(&self) -> Vec<Value> {
        self.shared.log.lock().expect("log").clone()
    }

    /// Every HTTP request it received on any path, in order: `{method, path, query, headers}`
    /// (`query` is null when there was none).
    pub fn hits(&self) -> Vec<Value> {
        self.shared.hits.lock().expect("hits").clone()
    }

    /// Forgets the requests logged so far (a long run's log is most of its memory).
    pub fn clear_requests(&self) {
        *self.shared.log.lock().expect("log") = Vec::new();
        *self.shared.hits.lock().expect("hits") = Vec::new();
    }

    /// How many requests (or notifications) of `method` it received.
    pub fn count(&self, method: &str) -> usize {
        let log = self.shared.log.lock().expect("log");
        log.iter().filter(|r| r["method"] == method).count()
    }

    /// From now on answers `/mcp` requests as `stall` says (in flight ones are unaffected).
    pub fn stall(&self, stall: Stall) {
        self.shared.stall.store(stall as u8, Ordering::SeqCst);
    }

    /// From now on sends every result as one SSE event whose lines end with `line_end`, in two
    /// writes 50 ms apart, cut inside its first multi-byte character; `tools/list` then also
    /// lists a tool `menu` described as `café crème`.
    pub fn split_writes(&self, line_end: &'static str) {
        *self.shared.split.lock().expect("split") = Some(line_end);
    }

    /// Sends `message` on every open `GET` stream.
    pub fn push(&self, message: Value) {
        let _ = self.shared.pushes.send(message);
    }

    /// The request ids of `long` and `wait` calls the client (the gateway) dropped before
    /// their end.
    pub fn dropped(&self) -> Vec<Value> {
        self.shared.dropped.lock().expect("dropped").clone()
    }

    /// Forgets every session it issued: requests carrying one get `404`.
    pub fn forget_sessions(&self) {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends every open legacy HTTP+SSE stream, as a restart would (new ones open as before).
    pub fn end_legacy_streams(&self) {
        self.shared.legacy_epoch.send_modify(|n| *n += 1);
    }

    /// From now on answers a forgotten session `400` with a JSON-RPC error `-32000` ("No valid
    /// session ID"), as servers built on the TypeScript SDK's examples do, instead of `404`.
    pub fn refuse_unknown_sessions_with_400(&self) {
        self.shared.forgotten_is_400.store(true, Ordering::SeqCst);
    }

    /// A fake that accepts only live access tokens of `provider` (else `401` with an RFC 9728
    /// challenge) and publishes `/.well-known/oauth-protected-resource/mcp` naming it.
    pub async fn protected(name: &'static str, provider: &FakeOAuth) -> Self {
        Self::serve(name, Some(provider.clone()), false).await
    }

    async fn serve(name: &'static str, provider: Option<FakeOAuth>, modern: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (url, sse_url) = (format!("http://{addr}/mcp"), format!("http://{addr}/sse"));
        let (tx, _) = tokio::sync::broadcast::channel::<Value>(16);
        let legacy_tx = tx.clone();
        let (answers, _) = tokio::sync::broadcast::channel::<Value>(16);
        let shared = Arc::new(Shared {
            name,
            modern,
            epoch: AtomicU32::new(1),
            log: Mutex::new(Vec::new()),
            hits: Arc::default(),
            answers,
            stall: AtomicU8::new(Stall::No as u8),
            split: Mutex::new(None),
            pushes: tokio::sync::broadcast::channel(16).0,
            dropped: Arc::default(),
            forgotten_is_400: Default::default(),
            legacy_epoch: tokio::sync::watch::Sender::new(0),
        });
        let hits = shared.hits.clone();
        let (on_post, on_get, on_delete) = (shared.clone(), shared.clone(), shared.clone());
        let (on_message, on_sse) = (shared.clone(), shared.clone());
        let app = Router::new()
            .route(
                "/mcp",
                post(move |headers: HeaderMap, body: String| rpc(on_post.clone(), headers, body))
                    .get(move |headers: HeaderMap| open_stream(on_get.clone(), headers))
                    .delete(move |headers: HeaderMap| close(on_delete.clone(), headers)),
            )
            .route(
                "/sse",
                get(move || {
                    let ended = on_sse.legacy_epoch.subscribe();
                    legacy_stream(legacy_tx.subscribe(), ended)
                }),
            )
            .route(
                "/messages",
                post(
                    move |q: Query<HashMap<String, String>>,
                          headers: HeaderMap,
                          Json(req): Json<Value>| {
                        let (tx, shared) = (tx.clone(), on_message.clone());
                        async move {
                            if q.get("sessionId").map(String::as_str) != Some("legacy-1") {
                                return StatusCode::NOT_FOUND;
                            }
                            if !req["id"].is_null() && req.get("method").is_some() {
                                tokio::spawn(async move {
                                    let _ = tx.send(legacy_answer(&shared, headers, req).await);
                                });
                            }
                            StatusCode::ACCEPTED
                        }
                    },
                ),
            );
        let app = match provider {
            None => app,
            Some(provider) => protect(app, provider, &url),
        };
        let app = record_hits(app, hits);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            sse_url,
            task,
            shared,
        }
    }
}

/// Only live access tokens of `provider` pass (else `401` with an RFC 9728 challenge), and
/// `/.well-known/oauth-protected-resource/mcp` names it.
fn protect(app: Router, provider: FakeOAuth, url: &str) -> Router {
    let metadata_url = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp");
    let document = json!({
        "resource": url,
        "authorization_servers": [provider.issuer],
        "scopes_supported": ["read"],
    });
    app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let provider = provider.clone();
            let metadata_url = metadata_url.clone();
            async move {
                let token = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if provider.is_valid(token) {
                    return next.run(req).await;
                }
                let challenge = format!("Bearer resource_metadata=\"{metadata_url}\"");
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, challenge)],
                )
                    .into_response()
            }
        },
    ))
    .route(
        "/.well-known/oauth-protected-resource/mcp",
        get(move || {
            let d = document.clone();
            async move { Json(d) }
        }),
    )
}

/// Logs every request the fake receives, whatever its path (an unknown one still gets `404`).
fn record_hits(app: Router, hits: Arc<Mutex<Vec<Value>>>) -> Router {
    app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            hits.lock().expect("hits").push(json!({
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "query": req.uri().query(),
                "headers": header_map(req.headers()),
            }));
            next.run(req)
        },
    ))
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header_map(headers: &HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in headers {
        out.insert(
            k.as_str().to_owned(),
            json!(v.to_str().unwrap_or("<binary>")),
        );
    }
    Value::Object(out)
}

fn event(id: u32, body: &Value) -> Bytes {
    Bytes::from(format!("id: {id}\nevent: message\ndata: {body}\n\n"))
}

/// `message` as one SSE event with `line_end` line ends, in two writes 50 ms apart, cut inside
/// its first multi-byte character (in the middle, if it has none).
fn split_event(message: &Value, line_end: &str) -> Body {
    let text = format!("event: message{line_end}data: {message}{line_end}{line_end}");
    let bytes = text.as_bytes();
    let cut = bytes
        .iter()
        .position(|b| !b.is_ascii())
        .map_or(bytes.len() / 2, |at| at + 1);
    let (first, second) = (
        Bytes::copy_from_slice(&bytes[..cut]),
        Bytes::copy_from_slice(&bytes[cut..]),
    );
    let later = stream::once(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, Infallible>(second)
    });
    Body::from_stream(stream::iter([Ok(first)]).chain(later))
}

fn rpc_error(status: StatusCode, id: &Value, code: i64, message: &str, data: Value) -> Response {
    let mut error = json!({"code": code, "message": message});
    if !data.is_null() {
        error["data"] = data;
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "error": error});
    (status, Json(body)).into_response()
}

async fn rpc(shared: Arc<Shared>, headers: HeaderMap, body: String) -> Response {
    let Ok(req) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    shared.log.lock().expect("log").push(json!({
        "method": req["method"], "id": req["id"], "params": req["params"],
        "headers": header_map(&headers), "body": body,
    }));
    if let Some(stalled) = shared.stalled().await {
        return stalled;
    }
    if shared.forgotten(&headers) {
        return shared.unknown_session(&req["id"]);
    }
    if req.get("method").is_none() {
        // A client's answer to one of our requests.
        let _ = shared.answers.send(req);
        return StatusCode::ACCEPTED.into_response();
    }
    if req["id"].is_null() {
        let _ = shared.answers.send(req); // a notification (`long` listens for cancels)
        return StatusCode::ACCEPTED.into_response();
    }
    if shared.modern
        && let Some(refused) = refuse_modern(&headers, &req)
    {
        return refused;
    }
    answer(&shared, headers, req).await
}

/// How a 2026-07-28-only server refuses what it cannot take: `initialize`, removed methods,
/// requests whose `_meta` or headers are missing or disagree.
fn refuse_modern(headers: &HeaderMap, req: &Value) -> Option<Response> {
    let refuse = |status, code, message: &str, data| {
        Some(rpc_error(status, &req["id"], code, message, data))
    };
    let method = req["method"].as_str().unwrap_or("");
    if method == "initialize" {
        let message = format!("Unsupported protocol version; this server speaks only {MODERN}");
        let requested = &req["params"]["protocolVersion"];
        let data = json!({"supported": [MODERN], "requested": requested});
        return refuse(StatusCode::BAD_REQUEST, -32022, &message, data);
    }
    let meta = &req["params"]["_meta"];
    if meta["io.modelcontextprotocol/protocolVersion"] != MODERN
        || !meta["io.modelcontextprotocol/clientCapabilities"].is_object()
    {
        let message = "params._meta lacks the protocol version or client capabilities";
        return refuse(StatusCode::BAD_REQUEST, -32602, message, Value::Null);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let name = match method {
        "tools/call" | "prompts/get" => req["params"]["name"].as_str(),
        "resources/read" => req["params"]["uri"].as_str(),
        _ => None,
    };
    if header("mcp-protocol-version") != Some(MODERN)
        || header("mcp-method") != Some(method)
        || name.is_some_and(|n| header("mcp-name").map(decode_header) != Some(n.to_owned()))
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            -32020,
            "Header mismatch",
            Value::Null,
        );
    }
    if matches!(method, "ping" | "logging/setLevel") {
        return refuse(
            StatusCode::NOT_FOUND,
            -32601,
            "Method not found",
            Value::Null,
        );
    }
    None
}

/// `Mcp-Name` as sent: plain, or `=?base64?…?=`.
fn decode_header(value: &str) -> String {
    use base64::Engine;
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default(),
        None => value.to_owned(),
    }
}

/// How the fake answers one request: within its session (2025) or with `resultType` (2026).
struct Reply {
    id: Value,
    session: Option<String>,
    /// The server's name, if it speaks only 2026-07-28.
    modern: Option<&'static str>,
    /// Results as SSE in two writes, with these line ends.
    split: Option<&'static str>,
}

impl Reply {
    fn result(&self, mut result: Value) -> Response {
        if let Some(name) = self.modern {
            result["resultType"] = json!("complete");
            result["_meta"]["io.modelcontextprotocol/serverInfo"] =
                json!({"name": name, "version": "1"});
        }
        let message = json!({"jsonrpc": "2.0", "id": self.id, "result": result});
        if let Some(line_end) = self.split {
            return self.sse(split_event(&message, line_end));
        }
        let body = Json(message);
        match &self.session {
            Some(s) => ([("mcp-session-id", s.clone())], body).into_response(),
            None => body.into_response(),
        }
    }

    fn sse(&self, body: Body) -> Response {
        let mut resp = Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(body)
            .expect("valid response");
        if let Some(s) = &self.session {
            resp.headers_mut()
                .insert("mcp-session-id", s.parse().expect("valid header"));
        }
        resp
    }
}

async fn answer(shared: &Shared, headers: HeaderMap, req: Value) -> Response {
    let name = shared.name;
    let reply = Reply {
        id: req["id"].clone(),
        session: (!shared.modern).then(|| shared.session()),
        modern: shared.modern.then_some(name),
        split: *shared.split.lock().expect("split"),
    };
    let uri = &req["params"]["uri"];
    match req["method"].as_str().unwrap_or("") {
        "server/discover" if shared.modern => reply.result(json!({"supportedVersions": [MODERN],
            "capabilities": capabilities()})),
        "initialize" => reply.result(json!({"protocolVersion": req["params"]["protocolVersion"],
            "serverInfo": {"name": name, "version": "1"}, "capabilities": capabilities()})),
        "tools/list" => {
            let schema = json!({"type": "object"});
            let mut tools = vec![
                json!({"name": "echo", "inputSchema": schema,
                    "annotations": {"readOnlyHint": true}}),
                json!({"name": "slow", "inputSchema": schema}),
                json!({"name": "ask", "inputSchema": schema}),
            ];
            if reply.split.is_some() {
                tools.push(
                    json!({"name": "menu", "description": "café crème", "inputSchema": schema}),
                );
            }
            reply.result(json!({"tools": tools}))
        }
        "prompts/list" => reply.result(json!({"prompts": [{"name": "hello"}]})),
        "resources/list" => {
            reply.result(json!({"resources": [{"uri": format!("{name}://doc"), "name": "doc"}]}))
        }
        "resources/templates/list" => reply.result(json!({"resourceTemplates": [
            {"uriTemplate": format!("{name}://items/{{id}}"), "name": "items"}]})),
        "resources/subscribe" => {
            let updated = json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                "params": {"uri": uri}});
            let _ = shared.pushes.send(updated);
            reply.result(json!({}))
        }
        "resources/unsubscribe" => reply.result(json!({})),
        "resources/read" if *uri == format!("{name}://doc") => {
            let text = format!("the {name} document");
            reply.result(json!({"contents": [{"uri": uri, "text": text}]}))
        }
        "resources/read" => rpc_error(
            StatusCode::OK,
            &reply.id,
            -32002,
            "no such resource",
            Value::Null,
        ),
        "tools/call" => tool(shared, &reply, headers, &req).await,
        _ => reply.result(echo(&headers, &req)),
    }
}

/// What every fake declares it can do.
fn capabilities() -> Value {
    json!({"tools": {"listChanged": true}, "prompts": {"listChanged": true},
        "resources": {"subscribe": true, "listChanged": true}, "completions": {}})
}

/// What the fake saw of a request: method, params and every header.
fn echo(headers: &HeaderMap, req: &Value) -> Value {
    json!({"method": req["method"], "params": req["params"], "headers": header_map(headers)})
}

/// `tools/call`: the scripted tools, else an echo.
async fn tool(shared: &Shared, reply: &Reply, headers: HeaderMap, req: &Value) -> Response {
    let id = &reply.id;
    match req["params"]["name"].as_str().unwrap_or("") {
        "slow" => reply.sse(Body::from_stream(slow(id.clone()))),
        "reset" => {
            let first = event(
                0,
                &json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 0}}),
            );
            // Let the first event go out on the wire, then fail the stream.
            let frames = stream::iter([Ok(first)]).chain(stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("upstream reset"))
            }));
            reply.sse(Body::from_stream(frames))
        }
        "stall" => reply.sse(Body::from_stream(stream::pending::<
            Result<Bytes, Infallible>,
        >())),
        "ask" => reply.sse(ask(shared, id.clone())),
        "long" => reply.sse(long(shared, id.clone())),
        "wait" => {
            let mut watch = Watch::new(shared, id.clone());
            tokio::time::sleep(Duration::from_secs(10)).await;
            watch.end();
            reply.result(json!({"content": []}))
        }
        "reveal" => {
            let seen = echo(&headers, req).to_string();
            let told = format!(
                "I was called with the credential {}; keep it safe",
                bearer(&headers)
            );
            reply.result(json!({"content": [{"type": "text", "text": seen},
                {"type": "text", "text": told}]}))
        }
        "reveal_error" => {
            let message = format!("the credential {} was refused", bearer(&headers));
            rpc_error(StatusCode::OK, id, -32000, &message, Value::Null)
        }
        "fail" => rpc_error(StatusCode::OK, id, -32000, "the tool failed", Value::Null),
        "invalid" => {
            let status = if shared.modern {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            rpc_error(status, id, -32602, "invalid arguments", Value::Null)
        }
        "refuse" => rpc_error(StatusCode::BAD_REQUEST, id, -32600, "refused", Value::Null),
        "crash" => (StatusCode::INTERNAL_SERVER_ERROR, "upstream crashed").into_response(),
        "hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => reply.result(echo(&headers, req)),
    }
}

/// The bearer token of a request's `Authorization`, without its scheme.
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Two progress notifications and the result, 300 ms apart.
fn slow(id: Value) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    stream::unfold(0u32, move |n| {
        let id = id.clone();
        async move {
            if n == 3 {
                return None;
            }
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let body = if n < 2 {
                json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": n}})
            } else {
                json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "done"}]}})
            };
            Some((Ok::<_, Infallible>(event(n, &body)), n + 1))
        }
    })
}

/// A call of `long` or `wait`: noted in `dropped` unless it ended (or was cancelled) first.
struct Watch {
    id: Value,
    dropped: Arc<Mutex<Vec<Value>>>,
    done: bool,
}
impl Watch {
    fn new(shared: &Shared, id: Value) -> Self {
        Self {
            id,
            dropped: shared.dropped.clone(),
            done: false,
        }
    }

    /// The answer is complete, or was cancelled: nothing was dropped.
    fn end(&mut self) {
        self.done = true;
    }
}
impl Drop for Watch {
    fn drop(&mut self) {
        if !self.done {
            self.dropped.lock().expect("dropped").push(self.id.clone());
        }
    }
}
/// Progress every 100 ms and a result after 10 s; nothing more once `notifications/cancelled`
/// names `id`; `id` noted in `dropped` if the client drops the answer before its end.
fn long(shared: &Shared, id: Value) -> Body {
    let watch = Watch::new(shared, id.clone());
    let rx = shared.answers.subscribe();
    Body::from_stream(stream::unfold(
        (0u32, rx, watch),
        |(n, mut rx, mut watch)| async move {
            let wanted = watch.id.clone();
            let cancelled = {
                let cancel = async {
                    loop {
                        match rx.recv().await {
                            Ok(m)
                                if m["method"] == "notifications/cancelled"
                                    && m["params"]["requestId"] == wanted =>
                            {
                                break;
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await
                            }
                            _ => continue,
                        }
                    }
                };
                tokio::select! {
                    () = cancel => true,
                    () = tokio::time::sleep(Duration::from_millis(100)) => false,
                }
            };
            if cancelled || n == u32::MAX {
                watch.end();
                return None;
            }
            let body = if n == 100 {
                watch.end();
                json!({"jsonrpc": "2.0", "id": wanted, "result": {"content": []}})
            } else {
                json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": n}})
            };
            let next = if n == 100 { u32::MAX } else { n + 1 };
            Some((Ok::<_, Infallible>(event(n, &body)), (next, rx, watch)))
        },
    ))
}

/// A `sampling/createMessage` request (id 5) to the client, then a result quoting its answer.
fn ask(shared: &Shared, id: Value) -> Body {
    let mut rx = shared.answers.subscribe();
    let question = event(
        0,
        &json!({"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage",
        "params": {"messages": [{"role": "user", "content": {"type": "text", "text": "2+2?"}}], "maxTokens": 5}}),
    );
    let finish = stream::once(async move {
        let answer = loop {
            match rx.recv().await {
                Ok(a) if a["id"] == 5 => break a,
                Ok(_) => continue,
                Err(_) => break Value::Null,
            }
        };
        let text = answer["result"]["content"]["text"]
            .as_str()
            .unwrap_or("no answer")
            .to_owned();
        let done = json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}]}});
        Ok::<_, Infallible>(event(1, &done))
    });
    Body::from_stream(stream::iter([Ok(question)]).chain(finish))
}

/// A request's answer on the legacy stream: the Streamable HTTP answer (its last SSE event's,
/// for a streamed one), its result also carrying the request's method and headers.
async fn legacy_answer(shared: &Shared, headers: HeaderMap, req: Value) -> Value {
    let seen = header_map(&headers);
    let resp = answer(shared, headers, req.clone()).await;
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let last_event = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&text);
    let mut message: Value = serde_json::from_str(last_event).unwrap_or(Value::Null);
    if let Some(result) = message.get_mut("result").and_then(Value::as_object_mut) {
        result.insert("method".into(), req["method"].clone());
        result.insert("headers".into(), seen);
    }
    message
}

/// The legacy stream: the endpoint, then every answer, until [`FakeUpstream::end_legacy_streams`].
async fn legacy_stream(
    rx: tokio::sync::broadcast::Receiver<Value>,
    mut ended: tokio::sync::watch::Receiver<u32>,
) -> Response {
    let endpoint = Bytes::from_static(b"event: endpoint\ndata: /messages?sessionId=legacy-1\n\n");
    let messages = stream::unfold(rx, |mut rx| async move {
        let msg = rx.recv().await.ok()?;
        let frame = Bytes::from(format!("event: message\ndata: {msg}\n\n"));
        Some((Ok::<_, Infallible>(frame), rx))
    })
    .take_until(async move {
        let _ = ended.changed().await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(
            stream::iter([Ok(endpoint)]).chain(messages),
        ))
        .expect("valid response")
}

/// `DELETE /mcp`: the end of a session (405 for a 2026 fake, 404 for a forgotten session).
async fn close(shared: Arc<Shared>, headers: HeaderMap) -> StatusCode {
    if shared.modern {
        StatusCode::METHOD_NOT_ALLOWED
    } else if shared.forgotten(&headers) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::NO_CONTENT
    }
}

/// What [`FakeUpstream::push`] sends, as events 4, 5, …; never ends.
fn pushed(
    rx: tokio::sync::broadcast::Receiver<Value>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    stream::unfold((rx, 4u32), |(mut rx, n)| async move {
        loop {
            match rx.recv().await {
                Ok(message) => return Some((Ok(event(n, &message)), (rx, n + 1))),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await
                }
            }
        }
    })
}

/// `GET /mcp`: events 1, 2 and 3, 100 ms apart, then an open stream of what is pushed. With `Last-Event-ID: n`
/// it resumes after event n (the upstream's side of resumption). A 2026 fake has no such
/// stream (405); a forgotten session gets 404.
async fn open_stream(shared: Arc<Shared>, headers: HeaderMap) -> Response {
    if let Some(stalled) = shared.stalled().await {
        return stalled;
    }
    if shared.modern {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if shared.forgotten(&headers) {
        return shared.unknown_session(&Value::Null);
    }
    let after: u32 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let seen = header_map(&headers);
    let frames = stream::unfold(after + 1, move |n| {
        let seen = seen.clone();
        async move {
            if n > 3 {
                return None;
            }
            if n > after + 1 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let body = json!({"jsonrpc": "2.0", "method": "notifications/message",
                "params": {"seq": n, "headers": seen}});
            Some((Ok::<_, Infallible>(event(n, &body)), n + 1))
        }
    })
    .chain(pushed(shared.pushes.subscribe()));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(frames))
        .expect("valid response")
}

use futures_util::StreamExt as _;
