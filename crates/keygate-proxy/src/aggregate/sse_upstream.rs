//! Upstreams of the 2024-11-05 HTTP+SSE transport behind the aggregated endpoint. Such an
//! upstream's session is an open `GET` stream: its first event (`endpoint`) names the URL that
//! messages are POSTed to, and the answers come back as events on that stream. No client of
//! the aggregated endpoint holds that stream, so the gateway does: one per (user, integration)
//! on each replica ([`session`]), opened with the user's credential and initialized the way
//! [`super::handshakes`] initializes a 2025 upstream, valid for one store generation, and
//! opened anew once it ends. Requests get ids of the gateway's own (all of a user's clients
//! share the stream) and each answer goes back with the client's id.
//!
//! The announced endpoint must stay on the integration's origin (`legacy::on_origin`), and
//! every request goes through the SSRF-guarded client with the integration's credential
//! (`upstream::send_to`). A stream nothing was sent on for ten minutes is closed. On the
//! stream, the upstream's `ping` is answered; its other requests are refused (`-32601`: the
//! capabilities that would prompt them are not declared, see `era::bridged`), and its
//! notifications are dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::StreamExt;
use keygate_core::wire::jsonrpc::{self, RequestId};
use keygate_core::{IntegrationId, UserId};
use keygate_store::GenCache;
use serde_json::{Map, Value, json};
use tokio::sync::{OnceCell, oneshot};

use super::era::{self, META_CAPABILITIES, META_CLIENT_INFO};
use super::events::{Events, MAX_EVENT_BYTES};
use super::upstream::{self, Member};
use crate::ProxyState;
use crate::error::ProxyError;
use crate::legacy::on_origin;
use crate::sse::is_event_stream;
use crate::stage::route::{self, Endpoint};

/// Streams held open at once on a replica; a full map starts over (see `GenCache`), which
/// closes them all.
const CAPACITY: usize = 1_000;

/// A stream no message was sent on for this long is closed (a session the store generation
/// retired included); the next request opens a new one.
const IDLE: Duration = Duration::from_secs(600);

/// How often the reader looks whether its stream has become idle.
const IDLE_CHECK: Duration = Duration::from_secs(30);

type Cell = Arc<OnceCell<Arc<SseSession>>>;

/// The sessions, by (user, integration).
pub struct SseSessions {
    cells: GenCache<(UserId, IntegrationId), Cell>,
}

impl Default for SseSessions {
    fn default() -> Self {
        Self {
            cells: GenCache::new(CAPACITY),
        }
    }
}

/// An initialized session with an HTTP+SSE upstream.
pub struct SseSession {
    stream: Stream,
    /// The upstream's capabilities from its `initialize` answer.
    pub capabilities: Value,
}

/// An open stream and where its messages go.
struct Stream {
    endpoint: Arc<Endpoint>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    /// The task reading the stream, stopped when the session is dropped.
    reader: tokio::task::AbortHandle,
}

/// What the reader shares with the requests.
struct Shared {
    /// The requests waiting for an answer, by their id's JSON text.
    waiting: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// The stream has ended: the session is gone.
    ended: AtomicBool,
    /// When a message was last sent on this session.
    last_used: Mutex<Instant>,
}

impl Shared {
    fn new() -> Self {
        Self {
            waiting: Mutex::default(),
            ended: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self.last_used.lock().expect("last used") = Instant::now();
    }

    /// Nothing was sent for [`IDLE`] and nothing is awaited.
    fn is_idle(&self) -> bool {
        let unused = self.last_used.lock().expect("last used").elapsed();
        unused >= IDLE && self.waiting.lock().expect("waiting").is_empty()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn key(member: &Member) -> (UserId, IntegrationId) {
    (member.caller.user, member.integration.id)
}

/// The session the gateway holds with `member`'s upstream for this user, opened now if there is
/// none or its stream has ended; `meta` supplies the capabilities and `clientInfo` declared.
pub async fn session(
    state: &ProxyState,
    member: &Member,
    meta: &Map<String, Value>,
) -> Result<Arc<SseSession>, ProxyError> {
    let cells = &state.cache.sse_sessions.cells;
    let generation = state.auth.store.generation();
    let cell = cells.get_or_insert_with(key(member), generation, Cell::default);
    let session = cell
        .get_or_try_init(|| open(state, member, meta))
        .await?
        .clone();
    if !session.stream.shared.ended.load(Ordering::Acquire) {
        return Ok(session);
    }
    cells.remove_if(&key(member), |c| {
        c.get().is_some_and(|s| Arc::ptr_eq(s, &session))
    });
    let cell = cells.get_or_insert_with(key(member), generation, Cell::default);
    cell.get_or_try_init(|| open(state, member, meta))
        .await
        .cloned()
}

/// Whether `member`'s URL serves the HTTP+SSE transport: a `GET` opens a stream whose first
/// event is an `endpoint` on the integration's origin. The stream is closed again.
pub async fn announces_endpoint(state: &ProxyState, member: &Member) -> bool {
    connect(state, member).await.is_ok()
}

/// Opens the stream, reads its endpoint, and runs `initialize` + `notifications/initialized`.
async fn open(
    state: &ProxyState,
    member: &Member,
    meta: &Map<String, Value>,
) -> Result<Arc<SseSession>, ProxyError> {
    let (endpoint, events) = connect(state, member).await?;
    let shared = Arc::new(Shared::new());
    let reader = tokio::spawn(read(
        events,
        shared.clone(),
        state.clone(),
        member.clone(),
        endpoint.clone(),
    ));
    let stream = Stream {
        endpoint,
        shared,
        next_id: AtomicU64::new(0),
        reader: reader.abort_handle(),
    };
    let info = meta
        .get(META_CLIENT_INFO)
        .cloned()
        .unwrap_or_else(era::gateway_info);
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": era::LATEST_LEGACY,
            "capabilities": era::bridged(meta.get(META_CAPABILITIES)), "clientInfo": info}});
    let answer = stream.request(state, member, &initialize).await?;
    let Some(result) = answer.get("result") else {
        return Err(super::handshakes::refused_initialize(&answer));
    };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    stream.post(state, member, &initialized).await?;
    tracing::debug!(integration = %member.integration.id, "opened an HTTP+SSE upstream session");
    Ok(Arc::new(SseSession {
        capabilities: result["capabilities"].clone(),
        stream,
    }))
}

/// `GET`s the integration's URL: the message endpoint its stream announces first, and the
/// rest of the stream.
async fn connect(
    state: &ProxyState,
    member: &Member,
) -> Result<(Arc<Endpoint>, Events<hyper::body::Incoming>), ProxyError> {
    let base = route::endpoint(member.call(state))?;
    let resp = upstream::send_to(state, member, &base, Method::GET, HeaderMap::new(), None).await?;
    let status = resp.status();
    if !status.is_success() || !is_event_stream(resp.headers()) {
        return Err(ProxyError::upstream_said(format!(
            "no HTTP+SSE stream: GET answered {status}"
        )));
    }
    let mut events = Events::new(resp.into_body(), MAX_EVENT_BYTES);
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| ProxyError::upstream("reading the stream", e))?;
        if !event.is_dispatched() {
            continue; // a comment or a bare id
        }
        if event.event_type() != "endpoint" {
            break;
        }
        let announced = event.data.as_deref().unwrap_or_default();
        let url = on_origin(base.url(), announced).ok_or_else(|| {
            ProxyError::upstream_said("the announced endpoint leaves the integration's origin")
        })?;
        let endpoint = Endpoint::checked(member.call(state), url)?;
        return Ok((Arc::new(endpoint), events));
    }
    Err(ProxyError::upstream_said(
        "the stream announced no endpoint first",
    ))
}

/// Reads the stream until it ends: answers go to the requests waiting for them.
async fn read(
    mut events: Events<hyper::body::Incoming>,
    shared: Arc<Shared>,
    state: ProxyState,
    member: Member,
    endpoint: Arc<Endpoint>,
) {
    loop {
        let next = tokio::time::timeout(IDLE_CHECK, events.next()).await;
        let event = match next {
            Ok(Some(Ok(event))) => Some(event),
            Ok(_) => break, // the upstream ended the stream or broke it
            Err(_) => None,
        };
        if shared.is_idle() {
            break;
        }
        let Some(message) = event
            .and_then(|event| event.data)
            .and_then(|d| serde_json::from_str::<Value>(&d).ok())
        else {
            continue;
        };
        match (message.get("method"), RequestId::of(&message)) {
            (None, Some(_)) => {
                let waiter = shared
                    .waiting
                    .lock()
                    .expect("waiting")
                    .remove(&message["id"].to_string());
                if let Some(waiter) = waiter {
                    let _ = waiter.send(message);
                }
            }
            (Some(method), Some(id)) => {
                let answer = match method.as_str() {
                    Some("ping") => jsonrpc::result(&id, json!({})),
                    _ => jsonrpc::Error::new(
                        jsonrpc::METHOD_NOT_FOUND,
                        "Not supported by the gateway",
                    )
                    .response(Some(&id)),
                };
                let (state, member, endpoint) = (state.clone(), member.clone(), endpoint.clone());
                tokio::spawn(async move {
                    let body = Some(Bytes::from(answer.to_string()));
                    let sent = upstream::send_to(
                        &state,
                        &member,
                        &endpoint,
                        Method::POST,
                        HeaderMap::new(),
                        body,
                    );
                    if let Err(e) = sent.await {
                        tracing::debug!(error = %e.chain(), "could not answer an HTTP+SSE upstream's request");
                    }
                });
            }
            _ => {} // a notification: no client to hand it to
        }
    }
    shared.ended.store(true, Ordering::Release);
    // Dropping the senders fails every request still waiting.
    shared.waiting.lock().expect("waiting").clear();
    tracing::debug!(integration = %member.integration.id, "an HTTP+SSE upstream stream ended");
}

/// A request waiting for its answer; forgotten if the caller gives up.
struct Waiting<'a> {
    shared: &'a Shared,
    key: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared
            .waiting
            .lock()
            .expect("waiting")
            .remove(&self.key);
    }
}

impl Stream {
    /// Sends the request `message` under an id of the gateway's own; its answer, with the
    /// message's own id. The answer must come within `proxy.stream_idle_timeout_secs`.
    async fn request(
        &self,
        state: &ProxyState,
        member: &Member,
        message: &Value,
    ) -> Result<Value, ProxyError> {
        let id = Value::from(format!(
            "kg-{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        ));
        let (tx, rx) = oneshot::channel();
        let waiting = Waiting {
            shared: &self.shared,
            key: id.to_string(),
        };
        self.shared
            .waiting
            .lock()
            .expect("waiting")
            .insert(waiting.key.clone(), tx);
        // The reader marks the end before it drops the waiting requests: one registered after
        // that is failed here rather than left waiting for an answer no stream will bring.
        if self.shared.ended.load(Ordering::Acquire) {
            return Err(ProxyError::upstream_said("the SSE stream has ended"));
        }
        let mut sent = message.clone();
        sent["id"] = id;
        self.post(state, member, &sent).await?;
        let answer = tokio::time::timeout(state.upstream.stream_idle_timeout(), rx).await;
        drop(waiting);
        let mut answer = answer
            .map_err(|_| ProxyError::UpstreamTimeout { integration: None })?
            .map_err(|_| ProxyError::upstream_said("the SSE stream ended before the answer"))?;
        answer["id"] = message["id"].clone();
        Ok(answer)
    }

    /// POSTs `message` to the endpoint; the upstream accepts it (`202`), the answer comes on
    /// the stream.
    async fn post(
        &self,
        state: &ProxyState,
        member: &Member,
        message: &Value,
    ) -> Result<(), ProxyError> {
        self.shared.touch();
        let body = Some(Bytes::from(message.to_string()));
        let resp = upstream::send_to(
            state,
            member,
            &self.endpoint,
            Method::POST,
            HeaderMap::new(),
            body,
        )
        .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s => Err(ProxyError::upstream_said(format!(
                "the message endpoint answered {s}"
            ))),
        }
    }
}

impl SseSession {
    /// Sends `message` (without the 2026 era's reserved `_meta`): a request's answer as a JSON
    /// body, else `202`.
    pub async fn send(
        &self,
        state: &ProxyState,
        member: &Member,
        message: &Value,
    ) -> Result<http::Response<Body>, ProxyError> {
        let message = upstream::without_reserved_meta(message);
        if message.get("method").is_some() && RequestId::of(&message).is_some() {
            let answer = self.stream.request(state, member, &message).await?;
            return Ok(axum::Json(answer).into_response());
        }
        self.stream.post(state, member, &message).await?;
        Ok(StatusCode::ACCEPTED.into_response())
    }
}
