//! Approval of the calls a `@approval("user")` permit allows: before forwarding, the gateway
//! asks the user with an MCP elicitation (`elicitation/create`, form mode, accept or decline)
//! on the call's own answer stream.
//!
//! 1. The policy stage finds a call that needs approval ([`crate::policy::Stage::check`]); the
//!    route checks that the client declared the `elicitation` capability (aggregated: in its
//!    sealed session; pass-through: [`Sessions`], what the gateway saw of its `initialize`) and
//!    answers with a marker response carrying the [`Ask`] ([`request`]).
//! 2. The route's handler turns it into an SSE answer ([`ask`]): the `elicitation/create`
//!    request with a gateway-owned id (`keygate-approval-…`), then nothing until the user
//!    answers.
//! 3. The client POSTs its answer to that id in the same MCP session; the route hands it to
//!    [`answered`] (it never goes upstream), which wakes the waiting answer stream.
//! 4. Accepted: the original request is handled again from the start, marked approved for the
//!    policy stage ([`is_approved`]), so authentication and the policies are checked anew, and
//!    its answer follows on the same stream. Declined, cancelled, or no answer within
//!    [`TIMEOUT`]: `-32043`, and the call never reaches the upstream.
//!
//! Pending approvals live in this replica's memory, bounded per user ([`MAX_PENDING_PER_USER`])
//! and in all ([`MAX_PENDING`]): an answer that reaches another replica finds nothing to wake
//! (the call then times out), so approvals need session affinity between replicas.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Limited};
use keygate_core::{IntegrationId, UserId};
use keygate_trace::Exchange;
use keygate_trace::exchange::MCP_SESSION_ID;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::ProxyState;
use crate::error::ProxyError;
use crate::sse::{KeepAlive, is_event_stream};
use crate::stage::McpCaller;

/// The prefix of the ids of the gateway's own elicitation requests.
pub const ID_PREFIX: &str = "keygate-approval-";
/// How long the gateway waits for the user's answer.
pub const TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Most approvals one user can have pending at once (each holds an open request).
pub const MAX_PENDING_PER_USER: usize = 8;
/// Most approvals pending on this replica.
pub const MAX_PENDING: usize = 10_000;
/// Most pass-through sessions whose `elicitation` capability is remembered (oldest forgotten).
pub const MAX_SESSIONS: usize = 100_000;
/// Most characters of the arguments shown in the question.
const MAX_SHOWN_ARGUMENTS: usize = 2_000;
/// Largest JSON answer relayed after an approval (read whole to become one event).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

tokio::task_local! {
    /// Set while a request the user approved is handled again.
    static APPROVED: ();
}

/// Whether the request being handled is one the user approved.
pub fn is_approved() -> bool {
    APPROVED.try_with(|()| ()).is_ok()
}

/// What the gateway asks the user about.
#[derive(Clone, Debug)]
pub struct Asked {
    /// `tools/call`, `prompts/get` or `resources/read`.
    pub method: String,
    /// The tool, prompt or resource as the integration names it.
    pub name: String,
    pub integration_slug: String,
    pub integration_name: String,
    pub integration: IntegrationId,
    pub arguments: Value,
    /// The permits asking for approval.
    pub policy_ids: Vec<String>,
}

impl Asked {
    fn what(&self) -> String {
        format!("{} {} of {}", self.method, self.name, self.integration_slug)
    }

    /// The question shown to the user.
    fn question(&self) -> String {
        let noun = match self.method.as_str() {
            "tools/call" => "tool",
            "prompts/get" => "prompt",
            _ => "resource",
        };
        let mut arguments = self.arguments.to_string();
        if let Some((cut, _)) = arguments.char_indices().nth(MAX_SHOWN_ARGUMENTS) {
            arguments.truncate(cut);
            arguments.push('…');
        }
        let with = if self.arguments.is_null() {
            String::new()
        } else {
            format!(" with arguments {arguments}")
        };
        format!(
            "Approve the call of {noun} \"{}\" of integration \"{}\" ({}){with}?",
            self.name, self.integration_name, self.integration_slug
        )
    }

    /// The denial of a call that needs approval the gateway cannot ask for (`why`).
    pub fn refused(self, why: &str) -> ProxyError {
        ProxyError::PolicyDenied {
            what: format!("{} requires the user's approval, but {why}", self.what()),
            policy_ids: self.policy_ids,
        }
    }
}

/// A call waiting for approval, as the route hands it to its handler.
pub struct Ask {
    asked: Asked,
    /// The JSON-RPC id of the call, which its final answer names.
    rpc_id: Value,
    /// The request to handle again once approved.
    replay: Option<http::Request<Body>>,
    message: Value,
    user: UserId,
    session: Option<String>,
    caller: Who,
}

#[derive(Clone)]
struct Who {
    org: keygate_core::OrgId,
    app: keygate_core::ApplicationId,
    agent_session: Option<keygate_core::AgentSessionId>,
}

/// Marks a response as standing for an [`Ask`] (the handler builds the real answer).
#[derive(Clone)]
struct Marker(std::sync::Arc<Mutex<Option<Ask>>>);

/// The answer to a call that needs approval: `-32043` when the gateway cannot ask (a batch, a
/// client without `elicitation`, `unsupported` saying why), otherwise a marker response for
/// the route's handler, which completes it with [`with_request`] and answers with [`ask`].
pub fn request(
    asked: Asked,
    caller: &McpCaller,
    session: Option<&str>,
    message: &Value,
    unsupported: Option<&str>,
) -> Result<Response, ProxyError> {
    if let Some(why) = unsupported {
        return Err(asked.refused(why));
    }
    let ask = Ask {
        asked,
        rpc_id: message.get("id").cloned().unwrap_or(Value::Null),
        replay: None,
        message: message.clone(),
        user: caller.user,
        session: session.map(str::to_owned),
        caller: Who {
            org: caller.app.org_id,
            app: caller.app.id,
            agent_session: caller.claims.sid,
        },
    };
    let mut marker = StatusCode::ACCEPTED.into_response();
    marker
        .extensions_mut()
        .insert(Marker(std::sync::Arc::new(Mutex::new(Some(ask)))));
    Ok(marker)
}

/// Gives a marker response the request to handle again once approved: `parts` of the
/// original request, with the message as judged as its body.
pub fn with_request(resp: Response, parts: &http::request::Parts) -> Response {
    if let Some(marker) = resp.extensions().get::<Marker>()
        && let Some(ask) = marker.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
    {
        let mut replay = http::Request::new(Body::from(ask.message.to_string()));
        *replay.method_mut() = parts.method.clone();
        *replay.uri_mut() = parts.uri.clone();
        *replay.version_mut() = parts.version;
        *replay.headers_mut() = parts.headers.clone();
        replay.headers_mut().remove(header::CONTENT_LENGTH);
        ask.replay = Some(replay);
    }
    resp
}

/// The [`Ask`] a handler's result stands for, if it is a marker response.
pub fn asked(result: &Result<Response, ProxyError>) -> Option<Ask> {
    let marker = result.as_ref().ok()?.extensions().get::<Marker>()?;
    marker.0.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// The SSE answer to a call waiting for approval: the elicitation, then — once the user has
/// answered — what `replay` (the route's handler, run with the request marked approved)
/// answers, or `-32043`. `ex` is the call's exchange, completed by that final answer.
pub fn ask<F, Fut>(state: &ProxyState, mut ask: Ask, ex: Exchange, replay: F) -> Response
where
    F: FnOnce(ProxyState, http::Request<Body>, Exchange) -> Fut + Send + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let Some(request) = ask.replay.take() else {
        let e = ProxyError::Internal {
            what: "an approval without its request".into(),
            cause: None,
        };
        return crate::traced::finish(ex, Err(e));
    };
    let pending = match add(state, ask.user, ask.session.clone()) {
        Ok(pending) => pending,
        Err(why) => return crate::traced::finish(ex, Err(ask.asked.refused(why))),
    };
    let elicitation = json!({
        "jsonrpc": "2.0",
        "id": pending.id.clone(),
        "method": "elicitation/create",
        "params": {
            "message": ask.asked.question(),
            "requestedSchema": {"type": "object", "properties": {}},
        },
    });
    let first = futures_util::stream::once(async move { Ok(sse_event(&elicitation)) });
    let state = state.clone();
    let rest = async move {
        let answer = tokio::time::timeout(TIMEOUT, pending.wait()).await;
        let outcome = Outcome::of(answer.ok().flatten().as_ref());
        record(&state, &ask, outcome);
        let resp = match outcome {
            Outcome::Accepted => APPROVED.scope((), replay(state, request, ex)).await,
            _ => {
                // The gateway's own answer: the exchange's status is `denied`.
                crate::traced::finish(ex, Err(ask.asked.clone().refused(outcome.why())))
            }
        };
        as_events(resp, ask.rpc_id).await
    };
    let events = first.chain(futures_util::stream::once(rest).flatten());
    let mut resp = Response::new(Body::new(KeepAlive::new(Body::from_stream(events))));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// The user's answer, as the approval's trace event and the final answer see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Declined,
    Cancelled,
    TimedOut,
}

impl Outcome {
    /// From the client's answer (`None`: none within the timeout, or the approval was dropped).
    fn of(answer: Option<&Value>) -> Self {
        let Some(answer) = answer else {
            return Outcome::TimedOut;
        };
        match answer["result"]["action"].as_str() {
            Some("accept") => Outcome::Accepted,
            Some("decline") => Outcome::Declined,
            // `cancel`, an error answer, or anything unexpected: not an approval.
            _ => Outcome::Cancelled,
        }
    }

    fn why(self) -> &'static str {
        match self {
            Outcome::Accepted => "the user approved it",
            Outcome::Declined => "the user declined",
            Outcome::Cancelled => "the user dismissed the request",
            Outcome::TimedOut => "the user did not answer in time",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Declined => "declined",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed out",
        }
    }
}

/// Records the approval as a trace event of its own (`approval`): `ok` when accepted,
/// `denied` otherwise, with the outcome in its message.
fn record(state: &ProxyState, ask: &Ask, outcome: Outcome) {
    let telemetry = &state.tracing.telemetry;
    if !telemetry.sink.is_enabled() {
        return;
    }
    let who = &ask.caller;
    let mut e = keygate_trace::sink::blank_event(who.org, who.app);
    e.session_id = match &ask.session {
        Some(s) => keygate_trace::exchange::session_id(s),
        None => who
            .agent_session
            .map_or_else(|| "approval".to_owned(), |s| s.to_string()),
    };
    e.trace_id = keygate_trace::exchange::trace_id(&e.session_id, who.agent_session);
    e.agent_session_id = who.agent_session;
    e.user_id = Some(ask.user);
    e.event_type = "approval".into();
    e.integration_id = Some(ask.asked.integration);
    e.tool_name = Some(ask.asked.name.clone());
    e.status = if outcome == Outcome::Accepted {
        keygate_trace::Status::Ok.as_str().into()
    } else {
        keygate_trace::Status::Denied.as_str().into()
    };
    e.error_message = Some(format!(
        "approval {} for {} (policies {})",
        outcome.as_str(),
        ask.asked.what(),
        ask.asked.policy_ids.join(", ")
    ));
    telemetry.sink.emit(e);
}

/// The final answer as SSE events: an event stream as it is, a JSON answer as one event.
async fn as_events(
    resp: Response,
    rpc_id: Value,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, axum::Error>> {
    let (parts, body) = resp.into_parts();
    if is_event_stream(&parts.headers) {
        return StreamExt::boxed(body.into_data_stream());
    }
    let event = match Limited::new(body, MAX_ANSWER_BYTES).collect().await {
        Ok(collected) => match serde_json::from_slice::<Value>(&collected.to_bytes()) {
            Ok(answer) if answer.is_object() => sse_event(&answer),
            _ => sse_event(&internal_error(
                &rpc_id,
                "the integration's answer is not JSON",
            )),
        },
        Err(e) => sse_event(&internal_error(
            &rpc_id,
            &format!("reading the answer: {e}"),
        )),
    };
    StreamExt::boxed(futures_util::stream::once(async move { Ok(event) }))
}

fn internal_error(id: &Value, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": message}})
}

fn sse_event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The id of a client's answer to one of the gateway's elicitations, if `message` is one.
fn answer_id(message: &Value) -> Option<&str> {
    if message.get("method").is_some() {
        return None;
    }
    message["id"]
        .as_str()
        .filter(|id| id.starts_with(ID_PREFIX))
}

/// A client's answer to an approval this replica is waiting for, taken (`202`); `None` for
/// any other message, which the route handles as usual (an answer with the gateway's prefix
/// that nothing waits for included: it may be the upstream's own id).
pub fn answered(
    state: &ProxyState,
    caller: &McpCaller,
    headers: &HeaderMap,
    message: &Value,
) -> Option<Response> {
    let id = answer_id(message)?;
    let taken = state
        .cache
        .approvals
        .take(id, caller.user, session_of(headers).as_deref())?;
    // The waiting stream may be gone (the client left): the answer is still taken.
    let _ = taken.send(message.clone());
    Some(StatusCode::ACCEPTED.into_response())
}

/// The approvals pending on this replica, and what pass-through sessions declared.
#[derive(Default)]
pub struct Approvals {
    pending: DashMap<String, Waiting>,
    per_user: DashMap<UserId, usize>,
    pub(crate) sessions: Sessions,
}

struct Waiting {
    user: UserId,
    session: Option<String>,
    answer: oneshot::Sender<Value>,
}

/// One pending approval: forgotten when answered or dropped (the client went away).
struct OwnedPending {
    id: String,
    state: ProxyState,
    user: UserId,
    answer: oneshot::Receiver<Value>,
}

impl OwnedPending {
    /// The client's answer; `None` if the approval was dropped unanswered.
    async fn wait(mut self) -> Option<Value> {
        (&mut self.answer).await.ok()
    }
}

impl Drop for OwnedPending {
    fn drop(&mut self) {
        self.state.cache.approvals.forget(&self.id, self.user);
    }
}

/// Starts waiting for an approval of `user` in `session`; refused (why) beyond the bounds.
fn add(
    state: &ProxyState,
    user: UserId,
    session: Option<String>,
) -> Result<OwnedPending, &'static str> {
    let approvals = &state.cache.approvals;
    if approvals.pending.len() >= MAX_PENDING {
        return Err("too many approvals are pending on this gateway");
    }
    match approvals.per_user.entry(user) {
        Entry::Occupied(n) if *n.get() >= MAX_PENDING_PER_USER => {
            return Err("the user has too many approvals pending");
        }
        Entry::Occupied(mut n) => *n.get_mut() += 1,
        Entry::Vacant(v) => {
            v.insert(1);
        }
    }
    let id = format!("{ID_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let (tx, rx) = oneshot::channel();
    let waiting = Waiting {
        user,
        session,
        answer: tx,
    };
    approvals.pending.insert(id.clone(), waiting);
    Ok(OwnedPending {
        id,
        state: state.clone(),
        user,
        answer: rx,
    })
}

impl Approvals {
    /// The waiting approval `id` of `user` in `session`, removed.
    fn take(
        &self,
        id: &str,
        user: UserId,
        session: Option<&str>,
    ) -> Option<oneshot::Sender<Value>> {
        let (_, waiting) = self.pending.remove_if(id, |_, w| {
            w.user == user && (w.session.is_none() || w.session.as_deref() == session)
        })?;
        Some(waiting.answer)
    }

    fn forget(&self, id: &str, user: UserId) {
        self.pending.remove(id);
        if let Entry::Occupied(mut n) = self.per_user.entry(user) {
            if *n.get() <= 1 {
                n.remove();
            } else {
                *n.get_mut() -= 1;
            }
        }
    }

    /// The pass-through sessions' declared capabilities.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

/// Whether the clients of pass-through sessions declared `elicitation` in their `initialize`,
/// as the gateway saw it go by (only while the organization had policies: the stage reads
/// request bodies then only), keyed by integration and the session id its upstream issued.
/// Bounded: beyond [`MAX_SESSIONS`] the oldest are forgotten (such a session counts as not
/// declaring, and the client must initialize again for approvals).
#[derive(Default)]
pub struct Sessions(Mutex<SessionMap>);

#[derive(Default)]
struct SessionMap {
    declared: HashMap<(IntegrationId, String), bool>,
    order: VecDeque<(IntegrationId, String)>,
}

impl Sessions {
    /// Notes what the `initialize` that opened `session` of `integration` declared.
    pub fn remember(&self, integration: IntegrationId, session: &str, elicitation: bool) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (integration, session.to_owned());
        if map.declared.insert(key.clone(), elicitation).is_none() {
            map.order.push_back(key);
        }
        while map.order.len() > MAX_SESSIONS {
            if let Some(oldest) = map.order.pop_front() {
                map.declared.remove(&oldest);
            }
        }
    }

    /// Whether the client of `session` declared `elicitation` (unknown sessions did not).
    pub fn declared(&self, integration: IntegrationId, session: Option<&str>) -> bool {
        let Some(session) = session else { return false };
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.declared
            .get(&(integration, session.to_owned()))
            .copied()
            .unwrap_or(false)
    }
}

/// Whether an `initialize` request declares form elicitation: `capabilities.elicitation` is
/// an object, empty (form only, 2025-06-18) or naming `form`. `None` for other messages.
pub fn initialize_declares(message: &Value) -> Option<bool> {
    if message["method"] != "initialize" {
        return None;
    }
    Some(declares_elicitation(message["params"].get("capabilities")))
}

/// Whether client `capabilities` include form elicitation.
pub fn declares_elicitation(capabilities: Option<&Value>) -> bool {
    match capabilities.and_then(|c| c.get("elicitation")) {
        Some(Value::Object(modes)) => modes.is_empty() || modes.contains_key("form"),
        _ => false,
    }
}

/// After a pass-through `initialize` (declaring `elicitation` or not): what its client
/// declared, under the session id the upstream's answer issued.
pub fn note_initialize(
    state: &ProxyState,
    integration: IntegrationId,
    declares: Option<bool>,
    resp: &Response,
) {
    let Some(elicitation) = declares else { return };
    if let Some(session) = resp
        .headers()
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
    {
        state
            .cache
            .approvals
            .sessions
            .remember(integration, session, elicitation);
    }
}

/// The session id a request names.
pub fn session_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(MCP_SESSION_ID).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_elicitation_is_declared_by_an_empty_object_or_form() {
        let caps = |c: Value| declares_elicitation(Some(&c));
        assert!(caps(json!({"elicitation": {}})));
        assert!(caps(json!({"elicitation": {"form": {}, "url": {}}})));
        assert!(!caps(json!({"elicitation": {"url": {}}})));
        assert!(!caps(json!({"sampling": {}})));
        assert!(!declares_elicitation(None));
    }

    #[test]
    fn the_outcome_is_an_approval_only_when_accepted() {
        let answer =
            |action: &str| json!({"jsonrpc": "2.0", "id": "x", "result": {"action": action}});
        assert_eq!(Outcome::of(Some(&answer("accept"))), Outcome::Accepted);
        assert_eq!(Outcome::of(Some(&answer("decline"))), Outcome::Declined);
        assert_eq!(Outcome::of(Some(&answer("cancel"))), Outcome::Cancelled);
        let error = json!({"jsonrpc": "2.0", "id": "x", "error": {"code": -1, "message": "no"}});
        assert_eq!(Outcome::of(Some(&error)), Outcome::Cancelled);
        assert_eq!(Outcome::of(None), Outcome::TimedOut);
    }

    #[test]
    fn remembered_sessions_are_bounded_oldest_first() {
        let sessions = Sessions::default();
        let integration = IntegrationId::new();
        sessions.remember(integration, "first", true);
        for n in 0..MAX_SESSIONS {
            sessions.remember(integration, &n.to_string(), true);
        }
        assert!(!sessions.declared(integration, Some("first")));
        assert!(sessions.declared(integration, Some("0")));
        assert!(!sessions.declared(IntegrationId::new(), Some("0")));
    }

    #[test]
    fn only_answers_with_the_gateway_prefix_are_approvals() {
        let answer = json!({"jsonrpc": "2.0", "id": format!("{ID_PREFIX}abc"), "result": {}});
        assert!(answer_id(&answer).is_some());
        let upstream = json!({"jsonrpc": "2.0", "id": "7", "result": {}});
        assert!(answer_id(&upstream).is_none());
        let request = json!({"jsonrpc": "2.0", "id": format!("{ID_PREFIX}abc"), "method": "ping"});
        assert!(answer_id(&request).is_none());
    }
}
