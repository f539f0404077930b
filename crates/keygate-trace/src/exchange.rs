//! One JSON-RPC exchange as the proxy sees it: [`Telemetry::start`] opens an [`Exchange`] when
//! a request arrives, the proxy fills in who and what as it learns them, and the exchange
//! completes — trace event, span, metrics — when the response has been relayed
//! ([`crate::observe::Observed`]), or when the proxy answered with an error itself.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keygate_core::wire::jsonrpc::ParamsOutline;
use keygate_core::{AgentSessionId, ApplicationId, IntegrationId, OrgId, Timestamp, UserId};
use opentelemetry::KeyValue;
use serde::de::IgnoredAny;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::capture::{Capture, Injected};
use crate::metrics::{Metrics, Sample};
use crate::observe::PeekBuf;
use crate::otel::{ServerSpan, SpanParent, Spans};
use crate::sink::{TraceSink, blank_event};

/// Longest error message kept in an event.
const MAX_ERROR_CHARS: usize = 500;
/// Longest error message redacted (then cut to [`MAX_ERROR_CHARS`]): bounds the work, and a
/// secret cut at this length lies beyond what is kept.
const MAX_ERROR_SCAN_CHARS: usize = 4 * MAX_ERROR_CHARS;
/// Longest downstream session id stored as is; longer ones (the aggregated endpoint's sealed
/// sessions) are stored as a digest.
const MAX_SESSION_CHARS: usize = 64;

/// The status of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Answered, but not as hoped: a tool result with `isError`, or the client left early.
    Warn,
    /// The upstream failed: a JSON-RPC error, an HTTP error, a broken stream.
    ErrorRemote,
    /// The gateway refused or failed the request itself.
    ErrorProxy,
    /// Authentication or authorization failed (including a missing upstream connection).
    ErrorAuth,
    /// A tool policy refused the request before it went upstream.
    Denied,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::ErrorRemote => "error_remote",
            Status::ErrorProxy => "error_proxy",
            Status::ErrorAuth => "error_auth",
            Status::Denied => "denied",
        }
    }
}

/// Marks a response the gateway composed itself (not relayed): a JSON-RPC error in it is the
/// gateway's answer, not the upstream's.
#[derive(Clone, Copy, Debug)]
pub struct LocalAnswer;

/// Everything that records exchanges, shared by the proxy's handlers.
pub struct Telemetry {
    pub sink: TraceSink,
    pub capture: Capture,
    pub metrics: Metrics,
    /// Span export; `None` when off.
    pub spans: Option<Spans>,
}

impl Telemetry {
    /// Records nothing but metrics: tracing turned off.
    pub fn disabled() -> Self {
        Self {
            sink: TraceSink::disabled(),
            capture: Capture::default(),
            metrics: Metrics::new(),
            spans: None,
        }
    }

    /// Opens the record of a `http_method` request on `route` (the route template, a metrics
    /// label), in the trace its `traceparent` names.
    pub fn start(
        self: &Arc<Self>,
        route: &'static str,
        http_method: &http::Method,
        traceparent: Option<&str>,
    ) -> Exchange {
        Exchange {
            telemetry: self.clone(),
            route,
            http_method: http_method.clone(),
            started: Instant::now(),
            span: ServerSpan::start(self.spans.as_ref(), traceparent),
            who: None,
            session: None,
            protocol_version: None,
            response_session: None,
            integration: None,
            method: None,
            tool: None,
            rpc_id: None,
            request_json: None,
            injected: Injected::default(),
            bytes_in: 0,
            peek: None,
            outcome: None,
            http_status: None,
            error_type: None,
            response_json: None,
            bytes_out: 0,
            record: true,
            done: false,
        }
    }
}

/// Whose request it is.
#[derive(Clone, Copy, Debug)]
pub struct Who {
    pub org: OrgId,
    pub app: ApplicationId,
    pub user: Option<UserId>,
    pub agent_session: Option<AgentSessionId>,
}

/// A request in flight. Completes exactly once: through [`Exchange::complete`], or when
/// dropped (a handler that bailed out, a client that went away).
pub struct Exchange {
    telemetry: Arc<Telemetry>,
    route: &'static str,
    http_method: http::Method,
    started: Instant,
    span: ServerSpan,
    pub who: Option<Who>,
    /// The downstream MCP session id, as the client sent it.
    pub session: Option<String>,
    /// The client's `MCP-Protocol-Version` header, for the span (set only when exporting).
    pub protocol_version: Option<http::HeaderValue>,
    /// The session id a response assigned (only an `initialize` answer starts a session).
    pub(crate) response_session: Option<String>,
    pub integration: Option<IntegrationId>,
    pub method: Option<String>,
    pub tool: Option<String>,
    /// The JSON-RPC id of the request, to find its response in a stream.
    pub rpc_id: Option<Value>,
    /// The captured payloads, as seen: the capture policy applies when the exchange completes,
    /// once every credential sent upstream is known.
    request_json: Option<Value>,
    injected: Injected,
    pub bytes_in: u64,
    peek: Option<Arc<Mutex<PeekBuf>>>,
    outcome: Option<(Status, Option<String>)>,
    http_status: Option<u16>,
    /// The `error.type` of the span: a JSON-RPC error code, or `tool_error`.
    error_type: Option<String>,
    response_json: Option<Value>,
    pub bytes_out: u64,
    /// False for requests that are not JSON-RPC exchanges (a GET stream, a DELETE): they count
    /// in the metrics and get a span, but leave no trace event.
    pub record: bool,
    done: bool,
}

impl Exchange {
    /// The parent of the client spans of the upstream requests this request causes.
    pub fn span_parent(&self) -> SpanParent {
        SpanParent::new(&self.span)
    }

    pub fn capture(&self) -> &Capture {
        &self.telemetry.capture
    }

    pub fn metrics(&self) -> &Metrics {
        &self.telemetry.metrics
    }

    /// Where the code sending upstream notes each credential it injects, to be masked in
    /// everything this exchange stores (payloads in every capture mode, the error message).
    pub fn injected(&self) -> Injected {
        self.injected.clone()
    }

    /// Whether spans are being exported (sampled or not).
    pub fn exporting(&self) -> bool {
        self.telemetry.spans.is_some()
    }

    /// Whether trace events are being recorded at all.
    pub fn recording(&self) -> bool {
        self.telemetry.sink.is_enabled()
    }

    /// Takes what a parsed JSON-RPC message says about itself.
    pub fn set_message(&mut self, message: &Value) {
        self.set_request(
            message.get("method").and_then(Value::as_str),
            message.get("id").cloned(),
            message["params"]["name"].as_str(),
        );
        if self.telemetry.capture.is_on() {
            self.request_json = Some(message.clone());
        }
    }

    /// Takes a request's method, id and `params.name` (kept as the tool of a call), as read
    /// without a parse of the whole message ([`Exchange::set_message`] reads them from one).
    pub fn set_request(&mut self, method: Option<&str>, id: Option<Value>, name: Option<&str>) {
        self.method = method.map(str::to_owned);
        self.rpc_id = id;
        self.tool = match method {
            Some("tools/call" | "prompts/get") => name.map(str::to_owned),
            _ => None,
        };
        if method.is_none() {
            // A client's answer to a server-to-client request: relayed, not an exchange.
            self.record = false;
        }
    }

    /// Sets the outcome unless one is set already (the first failure is the cause).
    pub fn fail(&mut self, status: Status, message: impl Into<String>) {
        if self.outcome.is_none() {
            self.outcome = Some((status, Some(message.into())));
        }
    }

    pub(crate) fn set_peek(&mut self, peek: Arc<Mutex<PeekBuf>>) {
        self.peek = Some(peek);
    }

    /// What a [`crate::Peek`] of the request body saw (a fresh record when there was none).
    pub(crate) fn peek_or_new(&mut self) -> Arc<Mutex<PeekBuf>> {
        self.peek.get_or_insert_with(Arc::default).clone()
    }

    /// The request's JSON-RPC id, as far as it is known: from the message the handler read,
    /// or from the request body a [`crate::Peek`] saw go by (whole, and small enough).
    pub fn request_id(&mut self) -> Option<Value> {
        self.resolve_request();
        self.rpc_id.clone()
    }

    /// For a pass-through request: fills method, id and tool from the request body seen so far
    /// (the body streams upstream untouched; only a bounded prefix was kept).
    pub(crate) fn resolve_request(&mut self) {
        let Some(peek) = self.peek.take() else { return };
        let peek = peek.lock().unwrap_or_else(|p| p.into_inner());
        self.bytes_in = peek.total;
        if self.method.is_some() {
            return;
        }
        if peek.complete()
            && !self.telemetry.capture.is_on()
            && let Some(outline) = RequestOutline::read(&peek.bytes)
        {
            let name = outline.params.and_then(|p| p.name.flatten());
            self.set_request(outline.method, outline.id, name);
            return;
        }
        if peek.complete()
            && let Ok(message) = serde_json::from_slice::<Value>(&peek.bytes)
        {
            if message.is_array() {
                self.method = Some("batch".to_owned());
            } else {
                self.set_message(&message);
            }
            return;
        }
        if self.telemetry.capture.is_on() {
            self.request_json = self.telemetry.capture.payload(&peek.bytes, peek.total);
        }
    }

    pub(crate) fn set_http_status(&mut self, status: u16) {
        self.http_status = Some(status);
    }

    /// Records the JSON-RPC response relayed to the client.
    pub(crate) fn set_response(&mut self, response: &Value, local: bool) {
        if let Some(error) = response.get("error") {
            let message = error["message"].as_str().unwrap_or("JSON-RPC error");
            let code = error["code"].as_i64().unwrap_or(0);
            if self.error_type.is_none() {
                self.error_type = Some(code.to_string());
            }
            let status = if local {
                if code == -32042 {
                    Status::ErrorAuth
                } else if code == -32043 {
                    Status::Denied
                } else {
                    Status::ErrorProxy
                }
            } else {
                Status::ErrorRemote
            };
            self.fail(status, format!("{message} ({code})"));
        } else if response["result"]["isError"] == Value::Bool(true) {
            let text = response["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or("the tool reported an error");
            if self.error_type.is_none() {
                self.error_type = Some("tool_error".to_owned());
            }
            self.fail(Status::Warn, text.to_owned());
        }
        if self.telemetry.capture.is_on() {
            self.response_json = Some(response.clone());
        }
    }

    pub(crate) fn set_response_payload(&mut self, payload: Option<Value>) {
        if self.response_json.is_none() {
            self.response_json = payload;
        }
    }

    fn status(&self) -> (Status, Option<String>) {
        if let Some(o) = &self.outcome {
            return o.clone();
        }
        match self.http_status {
            Some(401 | 403) => (
                Status::ErrorRemote,
                Some(format!(
                    "the upstream refused the credential ({})",
                    self.http_status.unwrap_or(0)
                )),
            ),
            Some(s) if s >= 400 => (
                Status::ErrorRemote,
                Some(format!("the upstream answered HTTP {s}")),
            ),
            _ => (Status::Ok, None),
        }
    }

    /// Completes the exchange: metrics, span, trace event.
    pub fn complete(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.resolve_request();
        let elapsed = self.started.elapsed();
        let (status, error) = self.status();
        let t = self.telemetry.clone();
        let stores_text =
            error.is_some() || self.request_json.is_some() || self.response_json.is_some();
        let secrets = if stores_text {
            self.injected.secrets()
        } else {
            Vec::new()
        };
        let error = error.map(|m| {
            let scrubbed = t
                .capture
                .scrub_message(&truncate(&m, MAX_ERROR_SCAN_CHARS), &secrets);
            truncate(&scrubbed, MAX_ERROR_CHARS)
        });
        t.metrics.exchange(&Sample {
            route: self.route,
            http_method: self.http_method.as_str(),
            mcp_method: self.method.as_deref(),
            status: status.as_str(),
            integration: self.integration,
            tool: self.tool.as_deref(),
            seconds: elapsed.as_secs_f64(),
        });
        let records_event = self.record && t.sink.is_enabled() && self.who.is_some();
        // The agent's session, or the one an answer just opened; stored digested when long
        // (a digest only the span or the event needs).
        let session_key = if self.span.is_recording() || records_event {
            let raw = self.session.as_deref().or(self.response_session.as_deref());
            raw.map(session_id)
        } else {
            None
        };
        if self.span.is_recording() {
            self.span.end(Finished {
                status,
                error: error.clone(),
                route: self.route,
                http_method: self.http_method.clone(),
                method: self.method.clone(),
                tool: self.tool.clone(),
                rpc_id: self.rpc_id.clone(),
                protocol_version: self.protocol_version.clone(),
                session: session_key.clone(),
                integration: self.integration,
                who: self.who,
                http_status: self.http_status,
                error_type: self.error_type.clone(),
            });
        }
        if !records_event {
            return;
        }
        let Some(who) = self.who else { return };
        let mut e = blank_event(who.org, who.app);
        // An answer's session names the event's only when the request opened it.
        let opened = self.method.as_deref() == Some("initialize");
        let session_key = session_key.filter(|_| self.session.is_some() || opened);
        e.session_id = session_key
            .or(who.agent_session.map(|s| s.to_string()))
            .unwrap_or_else(|| {
                let trace = crate::otel::trace_id_hex(self.span.context().trace_id());
                format!("request-{trace}")
            });
        e.trace_id = trace_id(&e.session_id, who.agent_session);
        e.agent_session_id = who.agent_session;
        e.user_id = who.user;
        e.event_type = self
            .method
            .take()
            .map_or(Cow::Borrowed("unknown"), Cow::Owned);
        e.status = Cow::Borrowed(status.as_str());
        e.duration_ms = elapsed.as_millis().try_into().unwrap_or(i64::MAX);
        e.integration_id = self.integration;
        e.tool_name = self.tool.take();
        e.error_message = error;
        e.bytes_in = self.bytes_in.try_into().unwrap_or(i64::MAX);
        e.bytes_out = self.bytes_out.try_into().unwrap_or(i64::MAX);
        e.request_json = self
            .request_json
            .take()
            .map(|v| t.capture.scrub(v, &secrets));
        e.response_json = self
            .response_json
            .take()
            .map(|v| t.capture.scrub(v, &secrets));
        let context = self.span.context();
        e.otel_trace_id = Some(keygate_core::OtelId(context.trace_id().to_bytes()));
        e.otel_span_id = Some(keygate_core::OtelId(context.span_id().to_bytes()));
        t.sink.emit(e);
    }
}

/// What a server span's request turned out to be, as its exchange knew it on completing. The
/// export task makes the span's name, attributes and status of it ([`Finished::describe`]).
pub struct Finished {
    status: Status,
    error: Option<String>,
    route: &'static str,
    http_method: http::Method,
    method: Option<String>,
    tool: Option<String>,
    rpc_id: Option<Value>,
    protocol_version: Option<http::HeaderValue>,
    /// The stored form of the session id ([`session_id`]).
    session: Option<String>,
    integration: Option<IntegrationId>,
    who: Option<Who>,
    http_status: Option<u16>,
    error_type: Option<String>,
}

impl Finished {
    /// The server span's name, attributes (the MCP semantic conventions, plus keygate's ids)
    /// and error. It fails when the exchange did (`error.type`: the JSON-RPC error code,
    /// `tool_error`, the upstream's HTTP status, or the trace status), as the trace event's
    /// status says; the event's status is `keygate.status`.
    pub(crate) fn describe(self) -> (Cow<'static, str>, Vec<KeyValue>, Option<String>) {
        let status = self.status;
        let mut attributes = Vec::with_capacity(16);
        attributes.extend([
            KeyValue::new("keygate.status", status.as_str()),
            KeyValue::new("http.route", self.route),
            KeyValue::new(
                "http.request.method",
                crate::otel::method_name(&self.http_method),
            ),
            KeyValue::new("network.transport", "tcp"),
            KeyValue::new("network.protocol.name", "http"),
        ]);
        if let Some(method) = &self.method {
            attributes.push(KeyValue::new("mcp.method.name", method.clone()));
        }
        if let Some(tool) = &self.tool {
            match self.method.as_deref() {
                Some("tools/call") => {
                    attributes.push(KeyValue::new("gen_ai.tool.name", tool.clone()));
                    attributes.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
                }
                _ => attributes.push(KeyValue::new("gen_ai.prompt.name", tool.clone())),
            }
        }
        if let Some(id) = self.rpc_id.as_ref().and_then(request_id_text) {
            attributes.push(KeyValue::new("jsonrpc.request.id", id));
        }
        if let Some(version) = self.protocol_version.as_ref().and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("mcp.protocol.version", version.to_owned()));
        }
        if let Some(session) = self.session {
            attributes.push(KeyValue::new("mcp.session.id", session));
        }
        if let Some(i) = self.integration {
            attributes.push(KeyValue::new("keygate.integration_id", i.to_string()));
        }
        if let Some(who) = self.who {
            attributes.push(KeyValue::new("keygate.application_id", who.app.to_string()));
            if let Some(u) = who.user {
                attributes.push(KeyValue::new("enduser.id", u.to_string()));
            }
        }
        if let Some(s) = self.http_status {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        if let Some(code) = self.error_type.as_ref().filter(|t| *t != "tool_error") {
            attributes.push(KeyValue::new("rpc.response.status_code", code.clone()));
        }
        let error_type = match (self.error_type, status) {
            (Some(t), _) => Some(t),
            (None, Status::Ok | Status::Warn) => None,
            (None, _) => Some(match self.http_status {
                Some(s) if s >= 400 => s.to_string(),
                _ => status.as_str().to_owned(),
            }),
        };
        let failed = error_type.is_some();
        if let Some(t) = error_type {
            attributes.push(KeyValue::new("error.type", t));
        }
        let name = match (self.method, &self.tool) {
            (Some(method), Some(tool)) => format!("{method} {tool}").into(),
            (Some(method), None) => method.into(),
            (None, _) => crate::otel::method_name(&self.http_method),
        };
        let error = failed.then(|| self.error.unwrap_or_else(|| status.as_str().to_owned()));
        (name, attributes, error)
    }
}

#[cfg(test)]
impl Finished {
    /// A `tools/call` that went well.
    pub(crate) fn ok_call() -> Self {
        Self {
            status: Status::Ok,
            error: None,
            route: "/test",
            http_method: http::Method::POST,
            method: Some("tools/call".to_owned()),
            tool: None,
            rpc_id: None,
            protocol_version: None,
            session: None,
            integration: None,
            who: None,
            http_status: Some(200),
            error_type: None,
        }
    }
}

/// What [`Exchange::set_message`] takes from a request, read without building the message:
/// an object's `method`, `id` and `params.name`. `None` unless these bytes are one object this
/// reads as the parsed message would be read; anything else — a batch, a member among these
/// that is duplicated, escaped or of another type, `params` that is no object — is left to
/// the parsed message. (Strings it skips are not checked for valid UTF-8, as parsing them
/// would: such a request has its method recorded where the parsed message had none.)
#[derive(serde::Deserialize)]
struct RequestOutline<'a> {
    #[serde(borrow, default)]
    method: Option<&'a str>,
    /// Present (`null` included) or absent, as `Value::get` tells them apart.
    #[serde(default, deserialize_with = "present_value")]
    id: Option<Value>,
    #[serde(borrow, default)]
    params: Option<ParamsOutline<'a, IgnoredAny>>,
}

impl<'a> RequestOutline<'a> {
    fn read(json: &'a [u8]) -> Option<Self> {
        if !crate::observe::opens_object(json) {
            return None;
        }
        serde_json::from_slice(json).ok()
    }
}

fn present_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// A JSON-RPC id as the `jsonrpc.request.id` attribute: strings as they are, numbers in
/// decimal; `null` is no id.
fn request_id_text(id: &Value) -> Option<String> {
    match id {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.done {
            self.fail(
                Status::Warn,
                "the client closed the connection before the response",
            );
            self.finish();
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The MCP session header; a constant name costs no parsing on a lookup.
pub const MCP_SESSION_ID: http::HeaderName = http::HeaderName::from_static("mcp-session-id");

/// The stored form of a downstream session id: as is when short, else a digest (the
/// aggregated endpoint's sealed sessions are long; a digest still groups and filters).
pub fn session_id(raw: &str) -> String {
    if raw.len() <= MAX_SESSION_CHARS {
        return raw.to_owned();
    }
    digested(raw, |d| d.stored.to_string())
}

/// Sessions whose digest each thread remembers: a session's calls digest the same id again
/// and again (up to 700 characters for an aggregated one).
const DIGESTS_KEPT: usize = 256;

/// The SHA-256 of a session id, and the stored form of a long one made of it.
struct Digested {
    sha256: [u8; 32],
    /// `sha256:` and the hex of the first 16 bytes.
    stored: Box<str>,
}

thread_local! {
    static DIGESTS: std::cell::RefCell<HashMap<Box<str>, Digested, foldhash::fast::RandomState>> =
        std::cell::RefCell::default();
}

/// What `read` takes from the digest of `text`, remembered per thread for the last sessions
/// seen.
fn digested<T>(text: &str, read: impl FnOnce(&Digested) -> T) -> T {
    DIGESTS.with(|kept| {
        if let Some(d) = kept.borrow().get(text) {
            return read(d);
        }
        let sha256: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let hex = keygate_core::hex::encode(&sha256[..16]);
        let digest = Digested {
            sha256,
            stored: format!("sha256:{hex}").into(),
        };
        let answer = read(&digest);
        let mut kept = kept.borrow_mut();
        if kept.len() >= DIGESTS_KEPT {
            kept.clear();
        }
        kept.insert(text.into(), digest);
        answer
    })
}

/// The trace an event belongs to: one per downstream session, the same on every replica
/// without coordination. A UUID v7 whose time is the agent session's start (so traces sort
/// roughly by when their agent connected) and whose other bits are a digest of the session.
pub fn trace_id(session: &str, agent_session: Option<AgentSessionId>) -> uuid::Uuid {
    let millis = agent_session
        .and_then(|s| s.0.get_timestamp())
        .map(|t| {
            let (secs, nanos) = t.to_unix();
            secs * 1000 + u64::from(nanos / 1_000_000)
        })
        .unwrap_or_else(|| Timestamp::now().millis().max(0) as u64);
    let mut bytes = [0u8; 10];
    digested(session, |d| bytes.copy_from_slice(&d.sha256[..10]));
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_stable_per_session_and_sort_by_agent_session() {
        let early = AgentSessionId::new();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let late = AgentSessionId::new();
        let a = trace_id("s-1", Some(early));
        assert_eq!(a, trace_id("s-1", Some(early)));
        assert_ne!(a, trace_id("s-2", Some(early)));
        assert!(trace_id("s-0", Some(late)) > a);
        assert_eq!(a.get_version_num(), 7);
    }

    /// What an exchange records of a request body: read by a peek, or parsed by a handler.
    fn read(body: &str, by_peek: bool) -> (Option<String>, Option<Value>, Option<String>, bool) {
        let mut ex = Arc::new(Telemetry::disabled()).start("/test", &http::Method::POST, None);
        if by_peek {
            let peek = ex.peek_or_new();
            let mut seen = peek.lock().unwrap();
            seen.bytes = body.as_bytes().to_vec();
            seen.total = body.len() as u64;
            drop(seen);
            ex.resolve_request();
        } else if let Ok(message) = serde_json::from_str::<Value>(body) {
            if message.is_array() {
                ex.method = Some("batch".to_owned());
            } else {
                ex.set_message(&message);
            }
        }
        (
            ex.method.take(),
            ex.rpc_id.take(),
            ex.tool.take(),
            ex.record,
        )
    }

    #[test]
    fn a_peeked_request_is_recorded_as_its_parsed_message() {
        for body in [
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"x":[1,{"name":"no"}]}}}"#,
            r#" {"method":"prompts/get","id":"a\"b","params":{"arguments":{},"name":"p"}}"#,
            r#"{"method":"tools/list","id":null,"params":{"name":"ignored"}}"#,
            r#"{"method":"tools/call","params":["echo"]}"#,
            r#"{"method":"tools/call","id":1,"params":{"name":"a","name":"b"}}"#,
            r#"{"method":"tools/call","id":1,"id":2,"params":{"name":7}}"#,
            r#"{"method":"tools\/call","id":1,"params":{"n\u0061me":"echo"}}"#,
            r#"{"method":3,"id":1}"#,
            r#"{"jsonrpc":"2.0","id":4,"result":{}}"#,
            r#"[{"method":"tools/call","id":1,"params":{"name":"echo"}}]"#,
            r#""tools/call""#,
            r#"{"method":"tools/call","id":1} trailing"#,
        ] {
            assert_eq!(read(body, true), read(body, false), "{body}");
        }
    }

    #[test]
    fn long_sessions_are_digested() {
        assert_eq!(session_id("abc"), "abc");
        let long = "x".repeat(300);
        let d = session_id(&long);
        assert!(d.starts_with("sha256:") && d.len() == 39, "{d}");
        assert_eq!(d, session_id(&long));
    }
}
