//! Talking to one upstream of the aggregated endpoint: who can be reached ([`members`]), how a
//! message reaches it on behalf of a downstream client ([`link`], [`exchange`]) in the
//! upstream's own era ([`Link`]), the credential and its OAuth retry ([`send_with`], through the send stage), and one
//! JSON-RPC answer read from JSON or from SSE ([`read_answer`]).

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::{FutureExt, StreamExt};
use http_body_util::{BodyExt, Limited};
use keygate_core::IntegrationId;
use keygate_core::model::Integration;
use keygate_trace::exchange::MCP_SESSION_ID;
use serde_json::{Map, Value, json};

use super::era::{self, Era};
use super::events::{Events, MAX_EVENT_BYTES};
use super::handshakes;
use super::session::{AggregatedSession, UpstreamSession};
use super::sse_upstream::{self, SseSession};
use crate::ProxyState;
use crate::error::ProxyError;
use crate::passthrough::MAX_REQUEST_BYTES;
use crate::sse::is_event_stream;
use crate::stage::McpCaller;
use crate::stage::credential::{self, Authorization};
use crate::stage::route::{self, Endpoint};
use crate::stage::{Call, send};
use crate::traced::ROUTE_AGGREGATED;

const LAST_EVENT_ID: &str = "last-event-id";

/// An upstream the caller can use: the integration and its credential.
#[derive(Clone)]
pub struct Member {
    pub integration: Arc<Integration>,
    pub authorization: Option<HeaderValue>,
    /// Whose credential it is (to refresh it if the upstream refuses it).
    pub caller: Arc<McpCaller>,
}

/// The client on the other side of the aggregated endpoint.
pub enum Downstream {
    /// 2025: the sealed session its `initialize` opened.
    Session(Arc<AggregatedSession>),
    /// 2026-07-28: no session; what its request declared.
    Stateless(Stateless),
}

/// What a 2026 request carries for the upstreams.
pub struct Stateless {
    /// The `io.modelcontextprotocol/*` entries of its `_meta`.
    pub meta: Arc<Map<String, Value>>,
    /// Its `Mcp-Param-*` headers (a routed tool call passes them on).
    pub params: HeaderMap,
}

/// How one message reaches one upstream, in the upstream's era.
pub enum Link {
    /// 2026-07-28: no session; this `_meta` goes into every request.
    Modern(Arc<Map<String, Value>>),
    /// 2025: the upstream's session and the version it negotiated.
    Legacy(UpstreamSession),
    /// 2024-11-05 HTTP+SSE: the stream the gateway holds open with the upstream.
    Sse(Arc<SseSession>),
}

impl Member {
    /// The stages' view of an exchange with this upstream.
    pub fn call<'a>(&'a self, state: &'a ProxyState) -> Call<'a> {
        Call {
            state,
            caller: &self.caller,
            integration: &self.integration,
            route: ROUTE_AGGREGATED,
        }
    }
}

impl Downstream {
    pub fn is_modern(&self) -> bool {
        matches!(self, Downstream::Stateless(_))
    }

    /// Whether `integration` is reached through a session the client holds (a 2025 client's
    /// sealed session names it), rather than one the gateway holds or none.
    pub fn holds(&self, integration: IntegrationId) -> bool {
        match self {
            Downstream::Session(s) => s.upstream(integration).is_some(),
            Downstream::Stateless(_) => false,
        }
    }

    /// The `Mcp-Param-*` headers to pass on with a routed call.
    pub fn params(&self) -> Option<&HeaderMap> {
        match self {
            Downstream::Stateless(s) => Some(&s.params),
            Downstream::Session(_) => None,
        }
    }
}

impl Stateless {
    /// The `Mcp-Param-*` headers of a request.
    pub fn params_of(headers: &HeaderMap) -> HeaderMap {
        headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with(era::PARAM_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The attached, proxied integrations the caller can use now (with credentials).
pub async fn members(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
) -> Result<Vec<Member>, ProxyError> {
    Ok(candidates(state, caller)
        .await?
        .into_iter()
        .filter_map(|(m, connected)| connected.then_some(m))
        .collect())
}

/// Every attached proxied integration, and whether the user can use it (has connected it, where
/// it needs the user's own credential). Deciding mints no connect link. The credentials are
/// resolved at once: stale OAuth tokens of several upstreams are refreshed in parallel.
pub async fn candidates(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
) -> Result<Vec<(Member, bool)>, ProxyError> {
    let proxied = route::proxied(state, caller).await?;
    let resolving = proxied
        .iter()
        .filter(|i| route::is_proxied(i))
        .map(|integration| candidate(state, caller, integration));
    join_all(resolving).await.into_iter().collect()
}

/// The attached proxied integration `slug` names, if the caller can use it. Only its credential
/// is resolved: a call routed to one upstream neither waits for another's token refresh nor
/// fails with it.
pub async fn member(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    slug: &str,
) -> Result<Option<Member>, ProxyError> {
    let proxied = route::proxied(state, caller).await?;
    let Some(integration) = proxied
        .iter()
        .find(|i| route::is_proxied(i) && i.slug == slug)
    else {
        return Ok(None);
    };
    let (member, connected) = candidate(state, caller, integration).await?;
    Ok(connected.then_some(member))
}

/// `integration` as a member, and whether the user can use it.
async fn candidate(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    integration: &Arc<Integration>,
) -> Result<(Member, bool), ProxyError> {
    let call = Call {
        state,
        caller,
        integration,
        route: ROUTE_AGGREGATED,
    };
    let (authorization, connected) = match credential::authorization(call).await? {
        Authorization::Header(h) => (h, true),
        Authorization::NeedsConnection => (None, false),
    };
    let member = Member {
        integration: integration.clone(),
        authorization,
        caller: caller.clone(),
    };
    Ok((member, connected))
}

/// How `member` is reached for `downstream`: a 2025 client's session names the upstream's
/// session (or, for a 2026 upstream, none: `_meta` from the client's `initialize`); a 2026
/// client's `_meta` goes to a 2026 upstream as is, and a 2025 upstream is reached through the
/// session the gateway holds for this user ([`handshakes`]). An upstream missing from a 2025
/// client's session (it missed the `initialize`, or was attached since) is reached the 2026
/// client's way, with `_meta` from that `initialize`: a hung upstream rejoins once it answers.
pub async fn link(
    state: &ProxyState,
    member: &Member,
    downstream: &Downstream,
) -> Result<Link, ProxyError> {
    match downstream {
        Downstream::Session(s) => {
            let meta = || Arc::new(era::meta(s.capabilities.as_ref(), s.client_info.as_ref()));
            match s.upstream(member.integration.id) {
                Some(up) if up.is_modern() => Ok(Link::Modern(meta())),
                Some(up) => Ok(Link::Legacy(up.clone())),
                None => Box::pin(held(state, member, meta())).await,
            }
        }
        Downstream::Stateless(s) => Box::pin(held(state, member, s.meta.clone())).await,
    }
}

/// How the gateway reaches `member` on its own: with `meta` (2026 upstream) or through the
/// session it holds for this user (2025 upstream).
async fn held(
    state: &ProxyState,
    member: &Member,
    meta: Arc<Map<String, Value>>,
) -> Result<Link, ProxyError> {
    match era::era(state, member).await {
        Era::Modern(_) => Ok(Link::Modern(meta)),
        Era::Legacy => Ok(Link::Legacy(
            handshakes::session(state, member, &meta).await?.session,
        )),
        Era::Sse => Ok(Link::Sse(
            sse_upstream::session(state, member, &meta).await?,
        )),
    }
}

/// An upstream's answer to a message.
pub struct Reply {
    pub resp: http::Response<Body>,
    /// Whether the upstream speaks 2026-07-28.
    pub modern: bool,
}

/// POSTs `message` to `member` on behalf of `downstream`. When the upstream has forgotten its
/// session ([`forgot`]), a 2025 client whose session holds it learns its session expired
/// ([`ProxyError::SessionExpired`]); a session the gateway holds is replaced and the message
/// sent once more.
pub async fn exchange<'m>(
    state: &ProxyState,
    member: &Member,
    downstream: &Downstream,
    message: impl Into<Outgoing<'m>>,
) -> Result<Reply, ProxyError> {
    let message = message.into();
    let params = downstream.params();
    let via = link(state, member, downstream).await?;
    let modern = matches!(via, Link::Modern(_));
    let resp = send_message(state, member, &via, message.clone(), params).await?;
    let Some(stale) = forgotten(state, member, resp.status(), &via).await else {
        return Ok(Reply { resp, modern });
    };
    if downstream.holds(member.integration.id) {
        return Err(ProxyError::SessionExpired);
    }
    handshakes::forget(state, member, stale);
    let via = link(state, member, downstream).await?;
    let resp = send_message(state, member, &via, message, params).await?;
    match forgotten(state, member, resp.status(), &via).await {
        None => Ok(Reply { resp, modern }),
        Some(_) => Err(ProxyError::upstream_said(
            "the upstream refused a session it had just opened",
        )),
    }
}

/// The upstream session that an answer with `status`, to a message sent over `link`, shows
/// the upstream has forgotten.
async fn forgotten<'a>(
    state: &ProxyState,
    member: &Member,
    status: StatusCode,
    link: &'a Link,
) -> Option<&'a UpstreamSession> {
    match link {
        Link::Legacy(up) if forgot(state, member, status, up).await => Some(up),
        _ => None,
    }
}

/// Whether an upstream that answered `status` to a request in its session `up` no longer knows
/// that session (it restarted, or ended it). The spec has it answer `404`; servers built like
/// the SDKs' examples answer an unknown session `400` ("No valid session ID") instead — a `400`
/// counts when a `ping` in the same session is refused too (`400` or `404`), so that a request
/// the upstream merely found wrong does not end a live session.
pub async fn forgot(
    state: &ProxyState,
    member: &Member,
    status: StatusCode,
    up: &UpstreamSession,
) -> bool {
    if up.session.is_none() {
        return false;
    }
    match status {
        StatusCode::NOT_FOUND => true,
        // Boxed: the ping is rare, and a send of its own that every exchange would carry.
        StatusCode::BAD_REQUEST => !Box::pin(answers_ping(state, member, up)).await,
        _ => false,
    }
}

/// Whether the upstream still takes requests in its session `up`.
async fn answers_ping(state: &ProxyState, member: &Member, up: &UpstreamSession) -> bool {
    let ping = json!({"jsonrpc": "2.0", "id": "kg-session-check", "method": "ping"});
    let via = Link::Legacy(up.clone());
    match send_message(state, member, &via, &ping, None).await {
        Ok(resp) => !matches!(
            resp.status(),
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST
        ),
        // Unreachable now: no sign that it forgot anything.
        Err(_) => true,
    }
}

/// A request to one upstream, answered as a JSON value. An upstream that fails is left out
/// (`None`, logged); only an expired session fails the client's request.
pub async fn rpc(
    state: &ProxyState,
    member: &Member,
    downstream: &Downstream,
    message: &Value,
) -> Result<Option<Value>, ProxyError> {
    let failed = |error: &ProxyError| {
        let method = message["method"].as_str().unwrap_or("");
        let i = &member.integration;
        tracing::warn!(integration = %i.id, slug = %i.slug, name = %i.name, method, error = %error.chain(), retryable = error.retryable(), "upstream failed");
    };
    match exchange(state, member, downstream, message).await {
        Ok(reply) => match read_answer(reply.resp, message.get("id")).await {
            Ok(answer) => Ok(Some(answer)),
            Err(e) => {
                failed(&e);
                Ok(None)
            }
        },
        Err(ProxyError::SessionExpired) => Err(ProxyError::SessionExpired),
        Err(e) => {
            failed(&e);
            Ok(None)
        }
    }
}

/// Runs `member`'s part of a fan-out (`what`: the method) under the fan-out deadline
/// (`proxy.fanout_timeout_secs`), which covers all of it: connecting, the headers, and the body
/// or SSE stream up to the answer. `None` when the upstream missed it: it is left out of this
/// answer (logged with its slug), and nothing of the miss is remembered — the next fan-out asks
/// it again.
pub fn within<'a, T>(
    state: &ProxyState,
    member: &'a Member,
    what: &'a str,
    part: impl std::future::Future<Output = T> + 'a,
) -> impl std::future::Future<Output = Option<T>> + 'a {
    // Not an `async fn`, which would hold `part` twice (its argument and the timeout around it).
    let deadline = state.fanout_timeout;
    tokio::time::timeout(deadline, part).map(move |answered| {
        if answered.is_err() {
            tracing::warn!(
                integration = %member.integration.id,
                slug = %member.integration.slug,
                name = %member.integration.name,
                method = what,
                timeout_ms = deadline.as_millis() as u64,
                "upstream missed the fan-out deadline; left out of this answer"
            );
        }
        answered.ok()
    })
}

/// Runs an upstream's `initialize` with `message`: the session it opened (if it opened one,
/// with the version it negotiated) and its answer, which may be an error.
pub async fn initialize(
    state: &ProxyState,
    member: &Member,
    message: &Value,
) -> Result<(UpstreamSession, Value), ProxyError> {
    let body = encode(message);
    let resp = send_with(state, member, Method::POST, HeaderMap::new(), Some(body)).await?;
    let session = resp
        .headers()
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = read_answer(resp, message.get("id")).await?;
    let protocol = answer["result"]["protocolVersion"]
        .as_str()
        .map(str::to_owned);
    let up = UpstreamSession {
        integration: member.integration.id,
        session,
        protocol,
    };
    Ok((up, answer))
}

/// POSTs `message` over `link`: with `_meta` and the mirrored headers to a 2026 upstream
/// (plus the client's `Mcp-Param-*`), with the session headers to a 2025 one; to an HTTP+SSE
/// upstream's message endpoint, its answer taken from the stream and given as a JSON body.
pub async fn send_message<'m>(
    state: &ProxyState,
    member: &Member,
    link: &Link,
    message: impl Into<Outgoing<'m>>,
    params: Option<&HeaderMap>,
) -> Result<http::Response<Body>, ProxyError> {
    let message = message.into();
    let (body, headers) = match (link, &message) {
        // Boxed: the HTTP+SSE exchange is a large future that the other links would carry.
        (Link::Sse(session), _) => {
            let message = message.value()?;
            return Box::pin(session.send(state, member, &message)).await;
        }
        (Link::Modern(meta), _) => {
            let mut message = message.value()?.into_owned();
            set_meta(&mut message, Some(meta));
            (encode(&message), modern_headers(&message, params))
        }
        // A client's request as it wrote it has no 2026 `_meta` to take out.
        (Link::Legacy(up), Outgoing::Sent(bytes)) => (bytes.clone(), session_headers(Some(up))),
        (Link::Legacy(up), Outgoing::Value(message)) if has_reserved_meta(message) => {
            let mut message = (*message).clone();
            set_meta(&mut message, None);
            (encode(&message), session_headers(Some(up)))
        }
        (Link::Legacy(up), Outgoing::Value(message)) => {
            (encode(message), session_headers(Some(up)))
        }
    };
    let resp = send_with(state, member, Method::POST, headers, Some(body)).await?;
    Ok(resp.map(Body::new))
}

/// A message for an upstream: one the gateway holds, or a client's request as the client wrote
/// it (renamed for its upstream: [`super::message::Message::without_prefix`]), whose
/// `params._meta` has no key of the 2026 era and which is sent as it is wherever nothing in it
/// must change.
#[derive(Clone)]
pub enum Outgoing<'a> {
    Value(&'a Value),
    /// Valid JSON: a plain request ([`super::message::Outline`]).
    Sent(Bytes),
}

impl<'a> From<&'a Value> for Outgoing<'a> {
    fn from(message: &'a Value) -> Self {
        Self::Value(message)
    }
}

impl Outgoing<'_> {
    /// The message as a value, for an upstream it is rewritten for.
    fn value(&self) -> Result<Cow<'_, Value>, ProxyError> {
        match self {
            Self::Value(message) => Ok(Cow::Borrowed(message)),
            Self::Sent(bytes) => serde_json::from_slice(bytes)
                .map(Cow::Owned)
                .map_err(|_| super::parse_error()),
        }
    }
}

/// `message` as a request body: written straight into bytes (its `Display` would go through
/// the formatting machinery, a few calls per token).
fn encode(message: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(message).expect("a JSON value has string keys"))
}

/// `message` without the reserved `_meta` entries (for an upstream of a handshake era).
pub(super) fn without_reserved_meta(message: &Value) -> Value {
    let mut message = message.clone();
    if has_reserved_meta(&message) {
        set_meta(&mut message, None);
    }
    message
}

fn has_reserved_meta(message: &Value) -> bool {
    message["params"]["_meta"]
        .as_object()
        .is_some_and(|m| m.keys().any(|k| era::foreign_meta(k, false)))
}

/// Replaces the reserved entries of `params._meta` with `meta` (or, for a 2025 upstream, drops
/// those of 2026: `era::strip_meta`), keeping the others (`progressToken`, trace context).
fn set_meta(message: &mut Value, meta: Option<&Map<String, Value>>) {
    let Some(params) = message.as_object_mut().map(|m| {
        m.entry("params")
            .or_insert_with(|| Value::Object(Map::new()))
    }) else {
        return;
    };
    let Some(params) = params.as_object_mut() else {
        return;
    };
    let mut merged = match params.remove("_meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    match meta {
        Some(_) => merged.retain(|k, _| !k.starts_with(era::RESERVED_PREFIX)),
        None => era::strip_meta(&mut merged, false),
    }
    merged.extend(
        meta.into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    if !merged.is_empty() {
        params.insert("_meta".into(), Value::Object(merged));
    }
}

/// The headers a 2026 request mirrors from its body, and the client's `Mcp-Param-*`.
fn modern_headers(message: &Value, params: Option<&HeaderMap>) -> HeaderMap {
    let mut h = params.cloned().unwrap_or_default();
    h.insert(era::PROTOCOL_VERSION, HeaderValue::from_static(era::MODERN));
    if let Some(method) = message["method"]
        .as_str()
        .and_then(|m| HeaderValue::from_str(m).ok())
    {
        h.insert(era::MCP_METHOD, method);
    }
    if let Some(name) = era::name_of(message) {
        h.insert(era::MCP_NAME, era::encode_header_value(name));
    }
    h
}

/// The headers that continue a 2025 upstream session.
fn session_headers(upstream: Option<&UpstreamSession>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let Some(up) = upstream else {
        return h;
    };
    if let Some(s) = up
        .session
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        h.insert(MCP_SESSION_ID, s);
    }
    if let Some(p) = up
        .protocol
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        h.insert(era::PROTOCOL_VERSION, p);
    }
    h
}

/// Sends one message to a 2025 upstream with its session and credential (the `GET` stream and
/// `DELETE` of a session).
pub async fn send(
    state: &ProxyState,
    member: &Member,
    upstream: Option<&UpstreamSession>,
    method: Method,
    body: Option<String>,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
    let headers = session_headers(upstream);
    send_with(state, member, method, headers, body.map(Bytes::from)).await
}

/// Opens a 2025 upstream session's `GET` stream, resuming after `last_event_id` if given.
pub async fn open_stream(
    state: &ProxyState,
    member: &Member,
    upstream: &UpstreamSession,
    last_event_id: Option<&str>,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
    let mut headers = session_headers(Some(upstream));
    if let Some(id) = last_event_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert(LAST_EVENT_ID, id);
    }
    send_with(state, member, Method::GET, headers, None).await
}

/// Sends one message to an upstream with its credential and `headers`, through the send
/// stage's OAuth retry ([`send::with_retry`]); a failure names the integration.
async fn send_with(
    state: &ProxyState,
    member: &Member,
    method: Method,
    headers: HeaderMap,
    body: Option<Bytes>,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
    let endpoint = route::endpoint(member.call(state))?;
    send_to(state, member, &endpoint, method, headers, body).await
}

/// [`send_with`] to `endpoint` (on the integration's origin: an HTTP+SSE upstream's message
/// endpoint).
pub(super) async fn send_to(
    state: &ProxyState,
    member: &Member,
    endpoint: &Endpoint,
    method: Method,
    headers: HeaderMap,
    body: Option<Bytes>,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
    let call = member.call(state);
    send::with_retry(call, member.authorization.clone(), |auth| {
        send_once(
            call,
            endpoint,
            auth,
            method.clone(),
            headers.clone(),
            body.clone(),
        )
    })
    .await
}

/// Sends one message to an upstream, with `headers` (JSON in, JSON or SSE out, unless they
/// say otherwise) and a credential.
async fn send_once(
    call: Call<'_>,
    endpoint: &Endpoint,
    authorization: Option<HeaderValue>,
    method: Method,
    mut headers: HeaderMap,
    body: Option<Bytes>,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
    headers
        .entry(header::ACCEPT)
        .or_insert(HeaderValue::from_static(
            "application/json, text/event-stream",
        ));
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));
    let body = body.map(Body::from).unwrap_or_else(Body::empty);
    let req = send::request(method, endpoint, headers, authorization, body);
    send::once(call, req).await
}

/// The JSON-RPC answer with `id` in a JSON body or an SSE stream. A `4xx` carrying a JSON-RPC
/// error is an answer too (2026-07-28 sends its errors that way).
pub async fn read_answer<B>(
    resp: http::Response<B>,
    id: Option<&Value>,
) -> Result<Value, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = resp.status();
    let is_sse = is_event_stream(resp.headers());
    if !status.is_success() && !status.is_client_error() {
        return Err(ProxyError::upstream_said(format!("answered {status}")));
    }
    let body = resp.into_body();
    if !is_sse {
        let bytes = Limited::new(body, MAX_REQUEST_BYTES)
            .collect()
            .await
            .map_err(|e| ProxyError::upstream("reading the answer", e))?
            .to_bytes();
        let answer: Option<Value> = serde_json::from_slice(&bytes).ok();
        return match answer {
            Some(v) if status.is_success() || v.get("error").is_some() => Ok(v),
            _ => Err(ProxyError::upstream_said(format!(
                "answered {status} without a JSON-RPC answer"
            ))),
        };
    }
    let mut events = Events::new(body, MAX_EVENT_BYTES);
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| ProxyError::upstream("reading the answer's stream", e))?;
        if let Some(v) = event
            .data
            .and_then(|data| serde_json::from_str::<Value>(&data).ok())
            && v.get("method").is_none()
            && v.get("id") == id
        {
            return Ok(v);
        }
    }
    Err(ProxyError::upstream_said(
        "the stream ended without an answer",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_is_replaced_or_dropped_and_the_rest_kept() {
        let mut m = json!({"method": "tools/list", "params": {"_meta": {
            "progressToken": 3, era::META_VERSION: "2026-07-28"}}});
        set_meta(&mut m, None);
        assert_eq!(m["params"]["_meta"], json!({"progressToken": 3}));
        let meta = era::meta(None, None);
        let mut bare = json!({"method": "tools/list"});
        set_meta(&mut bare, Some(&meta));
        assert_eq!(bare["params"]["_meta"][era::META_VERSION], era::MODERN);
        let h = modern_headers(
            &json!({"method": "tools/call", "params": {"name": "échec"}}),
            None,
        );
        assert_eq!(h[&era::MCP_METHOD], "tools/call");
        assert_eq!(h[&era::MCP_NAME], "=?base64?w6ljaGVj?=");
    }
}
