//! What the MCP handlers tell `keygate-trace` about each request: who, which integration,
//! which JSON-RPC message, which credentials went upstream, how it ended. It observes the
//! stages ([`crate::stage`]) and drives none of them: [`start`] opens the exchange, [`within`]
//! runs the handler's work in its [`scope`] (every upstream request the send stage sends gets a
//! client span under the request's span, and its credential noted), [`finish`] hands the
//! exchange to the relayed response, which completes it once the answer has gone by. The
//! authentication stage names the caller ([`identify`]) or has a refused request attributed
//! ([`refused`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use keygate_core::model::Application;
use keygate_core::wire::jsonrpc::RequestId;
use keygate_core::{ApplicationId, OrgId};
use keygate_store::GenCache;
use keygate_trace::exchange::MCP_SESSION_ID;
use keygate_trace::otel::{SpanParent, TRACEPARENT, UpstreamSpan};
use keygate_trace::{Exchange, Injected, LocalAnswer, Observed, Status, Telemetry, Who};
use serde_json::Value;

use crate::ProxyState;
use crate::aggregate::era::PROTOCOL_VERSION;
use crate::error::{Blame, ProxyError};
use crate::stage::McpCaller;

/// Route labels (metrics, spans).
pub const ROUTE_PASSTHROUGH: &str = "/apps/{id}/mcp/{integration}";
pub const ROUTE_MESSAGE: &str = "/apps/{id}/mcp/{integration}/message";
pub const ROUTE_AGGREGATED: &str = "/apps/{id}/mcp";
pub const ROUTE_MCP: &str = "/mcp";

/// Most of an unauthenticated request's body read to name its method and tool, and how long
/// the gateway waits for it.
const UNAUTHENTICATED_PEEK_BYTES: usize = 64 * 1024;
const UNAUTHENTICATED_PEEK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

tokio::task_local! {
    /// The span of the request being handled: the parent of every upstream request it causes.
    static PARENT: SpanParent;
    /// Where [`note_credentials`] notes the credentials sent for the request being handled.
    static INJECTED: Injected;
}

/// The proxy's telemetry and what it needs to attribute refused requests.
pub struct Tracing {
    pub telemetry: Arc<Telemetry>,
    /// Application → organization, for requests whose token did not say.
    orgs: GenCache<ApplicationId, Option<OrgId>>,
}

impl Tracing {
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        Self {
            telemetry,
            orgs: GenCache::new(10_000),
        }
    }
}

/// Opens the record of one request.
pub fn start(
    state: &ProxyState,
    route: &'static str,
    headers: &HeaderMap,
    method: &Method,
) -> Exchange {
    let traceparent = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok());
    let mut ex = state.tracing.telemetry.start(route, method, traceparent);
    ex.session = headers
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if ex.exporting() {
        ex.protocol_version = headers.get(PROTOCOL_VERSION).cloned();
    }
    if *method != Method::POST {
        // A GET stream or a DELETE is not a JSON-RPC exchange: metrics and a span only.
        ex.record = false;
    }
    ex
}

/// The caller is known (the authentication stage's answer).
pub fn identify(ex: &mut Exchange, caller: &McpCaller) {
    ex.who = Some(Who {
        org: caller.app.org_id,
        app: caller.app.id,
        user: Some(caller.user),
        agent_session: caller.claims.sid,
    });
}

/// An error as a trace status: who caused it ([`ProxyError::blame`]), with the client's
/// refusals told apart — authentication (or a missing connection) and a policy's denial.
pub fn status_of(e: &ProxyError) -> Status {
    match (e, e.blame()) {
        (
            ProxyError::Unauthorized(_)
            | ProxyError::ForeignOrigin
            | ProxyError::NotConnected { .. }
            | ProxyError::ConnectionRequired { .. },
            _,
        ) => Status::ErrorAuth,
        (ProxyError::PolicyDenied { .. }, _) => Status::Denied,
        (_, Blame::Upstream) => Status::ErrorRemote,
        (_, Blame::Client | Blame::Gateway) => Status::ErrorProxy,
    }
}

/// The trace's message for an error: the whole chain of causes (credentials never appear in
/// one), or, for a refused token, only that (the verifier's reason stays in the `401`).
pub fn message_of(e: &ProxyError) -> String {
    match e {
        ProxyError::Unauthorized(_) => "authentication failed".to_owned(),
        other => other.chain().to_string(),
    }
}

/// Hands the exchange to the response: relayed, or the gateway's own error, which answers the
/// request's id as far as the exchange knows it.
pub fn finish(mut ex: Exchange, result: Result<Response, ProxyError>) -> Response {
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            ex.fail(status_of(&e), message_of(&e));
            let id = ex.request_id().as_ref().and_then(RequestId::from_value);
            let mut resp = e.answer(id.as_ref());
            resp.extensions_mut().insert(LocalAnswer);
            resp
        }
    };
    let (parts, body) = resp.into_parts();
    let observed = Observed::new(body, ex, parts.status, &parts.headers, &parts.extensions);
    Response::from_parts(parts, Body::new(observed))
}

/// Before a pass-through request's error is answered: the part of its body that never went
/// upstream is read (bounded), so that the answer names the request's id.
pub async fn read_unsent(ex: &mut Exchange, unsent: crate::unsent::Returned) {
    if let Some(body) = unsent.take() {
        keygate_trace::observe::read_unsent(ex, body).await;
    }
}

/// A request the authentication stage refused for its token: attributed to the application its
/// URL names (when there is one), with the method and tool its body names (read briefly and
/// bounded). The user stays unknown.
pub async fn refused(state: &ProxyState, ex: &mut Exchange, uri: &Uri, body: Body) {
    let Some(app) = app_of(state, uri).await else {
        return;
    };
    ex.who = Some(Who {
        org: app.org_id,
        app: app.id,
        user: None,
        agent_session: None,
    });
    if let Some(r) = uri.path().split('/').nth(4).filter(|r| !r.is_empty())
        && let Ok(attached) = crate::stage::route::attached(state, &app).await
    {
        ex.integration = attached
            .iter()
            .find(|i| i.slug == r || i.id.to_string() == r)
            .map(|i| i.id);
    }
    if ex.record {
        let read = tokio::time::timeout(
            UNAUTHENTICATED_PEEK_WAIT,
            Limited::new(body, UNAUTHENTICATED_PEEK_BYTES).collect(),
        )
        .await;
        if let Ok(Ok(collected)) = read {
            let bytes = collected.to_bytes();
            ex.bytes_in = bytes.len() as u64;
            if let Ok(message) = serde_json::from_slice::<Value>(&bytes) {
                ex.set_message(&message);
                ex.record = true; // even a stray response is worth seeing when refused
            }
        }
    }
}

/// The application named by `/apps/{id}/…`, if it exists.
async fn app_of(state: &ProxyState, uri: &Uri) -> Option<Arc<Application>> {
    let id: ApplicationId = uri
        .path()
        .strip_prefix("/apps/")?
        .split('/')
        .next()?
        .parse()
        .ok()?;
    let store = &state.auth.store;
    let generation = store.generation();
    let org = match state.tracing.orgs.get(&id, generation) {
        Some(org) => org,
        None => {
            let org = store.application_org(id).await.ok()?;
            state.tracing.orgs.put(id, generation, org);
            org
        }
    }?;
    if let Some(app) = state.cache.apps.get(&(org, id), generation) {
        return Some(app);
    }
    store.get_application(org, id).await.ok().map(Arc::new)
}

/// What the upstream requests sent on behalf of one exchange need from it.
pub struct Scope {
    injected: Injected,
    parent: SpanParent,
}

/// The scope of `ex`, for [`within`].
pub fn scope(ex: &Exchange) -> Scope {
    Scope {
        injected: ex.injected(),
        parent: ex.span_parent(),
    }
}

/// Runs a handler's `work` in `scope`: every request the send stage
/// ([`crate::stage::send::once`]) sends on its behalf gets a client span under the exchange's
/// span ([`client_span`]), and its credential is noted in the exchange's
/// [`Exchange::injected`] ([`note_credentials`]), which masks it in all the exchange stores.
///
/// A plain function, not an `async fn`: an `async fn` would hold `work` twice (as its argument
/// and inside the future it awaits), doubling the size of every handler future, and a request
/// moves its handler's future several times.
pub fn within<F: Future>(scope: Scope, work: F) -> impl Future<Output = F::Output> {
    INJECTED.scope(scope.injected, PARENT.scope(scope.parent, work))
}

/// Notes the credential an upstream request carries (`Authorization`, or any header marked
/// sensitive) in the exchange of the request being handled (its [`scope`]), which masks it in
/// everything the exchange stores. Called by the send stage before every send.
pub fn note_credentials(req: &http::Request<Body>) {
    let _ = INJECTED.try_with(|injected| {
        for (name, value) in req.headers() {
            if name == http::header::AUTHORIZATION || value.is_sensitive() {
                injected.note(value);
            }
        }
    });
}

/// In a request's [`scope`]: the client span of an upstream request, a child of the request's
/// span, whose `traceparent` `req` now carries (until the answer's headers).
pub fn client_span(req: &mut http::Request<Body>) -> Option<UpstreamSpan> {
    let span = PARENT
        .try_with(|parent| parent.upstream(req.method(), req.uri()))
        .ok()?;
    req.headers_mut().insert(TRACEPARENT, span.traceparent());
    Some(span)
}

/// How an upstream request sent at `started` went: its client span ends, and the upstream
/// latency histogram counts it under `route`.
pub fn sent<B>(
    state: &ProxyState,
    route: &'static str,
    span: Option<UpstreamSpan>,
    result: &Result<http::Response<B>, ProxyError>,
    started: Instant,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(ProxyError::UpstreamTimeout { .. }) => "timeout",
        Err(_) => "error",
    };
    if let Some(span) = span {
        match result {
            Ok(resp) => span.answered(resp.status().as_u16()),
            Err(e) => span.failed(outcome, e.chain().to_string()),
        }
    }
    state
        .tracing
        .telemetry
        .metrics
        .upstream(route, outcome, started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hyper's connect error: a description over the OS error.
    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Connect(#[source] std::io::Error);

    #[test]
    fn the_trace_message_holds_the_whole_cause_chain() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = ProxyError::upstream("sending", Connect(refused));
        assert_eq!(
            message_of(&e),
            "upstream unavailable: sending: tcp connect error: Connection refused"
        );
    }

    #[test]
    fn a_refused_token_is_traced_without_the_verifiers_reason() {
        let e = ProxyError::Unauthorized(Box::new(Response::new(Body::from("bad signature"))));
        assert_eq!(message_of(&e), "authentication failed");
    }

    #[test]
    fn the_trace_status_follows_the_blame() {
        let upstream = ProxyError::UpstreamTimeout { integration: None };
        let gateway = ProxyError::Internal {
            what: "a bug".into(),
            cause: None,
        };
        let client = ProxyError::NotFound("Integration not found");
        assert_eq!(status_of(&upstream), Status::ErrorRemote);
        assert_eq!(status_of(&gateway), Status::ErrorProxy);
        assert_eq!(status_of(&client), Status::ErrorProxy);
        assert_eq!(status_of(&ProxyError::ForeignOrigin), Status::ErrorAuth);
    }
}
