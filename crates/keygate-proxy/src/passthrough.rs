//! `…/apps/{id}/mcp/{integration}`: a streaming reverse proxy to one integration.
//!
//! The request body streams upstream untouched and the response streams back frame by frame;
//! nothing is buffered except, when the user must first connect the integration, the (bounded)
//! request body whose JSON-RPC id the `-32042` answer needs. When the gateway answers a request
//! itself (upstream down, unknown integration), the part of the body the upstream never took
//! comes back ([`crate::unsent`]) and is read, bounded, for the id the answer names. Request
//! headers pass by the allow-list of [`crate::forwarded`] (the agent's credentials stay behind,
//! `access_token` leaves the query string); the integration's credential is set instead.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use keygate_core::model::{AuthMode, Integration};
use keygate_core::wire::jsonrpc;
use serde_json::Value;
use url::Url;

use crate::ProxyState;
use crate::approval;
use crate::error::ProxyError;
use crate::forwarded;
use crate::legacy::{EndpointMap, StreamOwner};
use crate::sse::{Answering, Relay};
use crate::stage::credential::{self, Authorization};
use crate::stage::policy::Governed;
use crate::stage::route::Endpoint;
use crate::stage::{self, Call, send};
use crate::traced::{self, ROUTE_MESSAGE, ROUTE_PASSTHROUGH};
use crate::unsent;
use keygate_trace::{Exchange, Peek};

/// Largest request body relayed upstream.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Which upstream URL a pass-through request goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The integration's URL (`…/{integration}` and its legacy alias `…/{integration}/sse`).
    Endpoint,
    /// A legacy SSE message post, `…/{integration}/message?ep=…` (see [`crate::legacy`]).
    Message,
}

pub async fn handle(
    State(state): State<ProxyState>,
    Path((_, integration)): Path<(String, String)>,
    req: Request,
) -> Response {
    let mut ex = traced::start(&state, ROUTE_PASSTHROUGH, req.headers(), req.method());
    let scope = traced::scope(&ex);
    let (req, unsent) = unsent::split(req);
    // Boxed: `forward`'s state is several KiB, and a handler's future is moved by value on its
    // way into the connection's task (`sequential` bench section under callgrind).
    let work = Box::pin(forward(&state, &integration, req, Route::Endpoint, &mut ex));
    let result = traced::within(scope, work).await;
    if let Some(ask) = approval::asked(&result) {
        return ask_approval(&state, ask, ex, integration, Route::Endpoint);
    }
    if result.as_ref().is_err_and(ProxyError::wants_request_id) {
        traced::read_unsent(&mut ex, unsent).await;
    }
    traced::finish(ex, result)
}

/// A call waiting for the user's approval: answered with the elicitation, then handled again
/// (approved) on the same stream ([`crate::approval`]).
fn ask_approval(
    state: &ProxyState,
    ask: approval::Ask,
    ex: Exchange,
    integration: String,
    route: Route,
) -> Response {
    approval::ask(state, ask, ex, move |state, req, mut ex| async move {
        let scope = traced::scope(&ex);
        let work = Box::pin(forward(&state, &integration, req, route, &mut ex));
        let result = traced::within(scope, work).await;
        traced::finish(ex, result)
    })
}

/// `…/{integration}/message?ep=…`: a legacy transport message.
pub async fn handle_message(
    State(state): State<ProxyState>,
    Path((_, integration)): Path<(String, String)>,
    req: Request,
) -> Response {
    let mut ex = traced::start(&state, ROUTE_MESSAGE, req.headers(), req.method());
    let scope = traced::scope(&ex);
    let (req, unsent) = unsent::split(req);
    let work = Box::pin(forward(&state, &integration, req, Route::Message, &mut ex));
    let result = traced::within(scope, work).await;
    if let Some(ask) = approval::asked(&result) {
        return ask_approval(&state, ask, ex, integration, Route::Message);
    }
    if result.as_ref().is_err_and(ProxyError::wants_request_id) {
        traced::read_unsent(&mut ex, unsent).await;
    }
    traced::finish(ex, result)
}

async fn forward(
    state: &ProxyState,
    integration_ref: &str,
    req: Request,
    route: Route,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    let (parts, body) = req.into_parts();
    let stage::authenticate::Authenticated {
        caller,
        body,
        token,
    } = stage::authenticate::run(state, &parts, body, ex).await?;
    let integration = stage::route::integration(state, &caller, integration_ref).await?;
    ex.integration = Some(integration.id);
    let route_label = match route {
        Route::Endpoint => ROUTE_PASSTHROUGH,
        Route::Message => ROUTE_MESSAGE,
    };
    let call = Call {
        state,
        caller: &caller,
        integration: &integration,
        route: route_label,
    };
    // Failures of the stages below name the integration in the log line and the trace.
    let base = stage::route::endpoint(call)?;
    let agent_token = Some(token);
    let owner = StreamOwner {
        org: caller.app.org_id,
        app: caller.app.id,
        integration: integration.id,
        user: caller.user,
    };
    let endpoint = match route {
        Route::Endpoint => match forwarded::query(parts.uri.query(), agent_token) {
            Some(query) => {
                let url = with_query(base.url().clone(), &query);
                Arc::new(Endpoint::checked(call, url)?)
            }
            None => base.clone(),
        },
        Route::Message => {
            let url = message_endpoint(state, &owner, base.url(), &parts)?;
            Arc::new(Endpoint::checked(call, url)?)
        }
    };
    let endpoint_map = (parts.method == http::Method::GET).then(|| EndpointMap {
        upstream: base.url().clone(),
        downstream: format!(
            "{}/apps/{}/mcp/{integration_ref}",
            state.auth.public_url, caller.app.id
        ),
        owner,
        store: state.auth.store.clone(),
    });
    if declared_length(&parts.headers).is_some_and(|n| n > MAX_REQUEST_BYTES as u64) {
        drain(body).await;
        return Err(too_large());
    }
    // The policy stage: only an organization with policies has its request bodies read.
    let policies = if parts.method == http::Method::POST {
        stage::policy::of(state, &caller).await?
    } else {
        None
    };
    let mut initialize = None;
    let (body, governed) = match policies {
        Some(policies) => {
            let message = read_governed(body).await?;
            ex.set_message(&message);
            if let Some(taken) = approval::answered(state, &caller, &parts.headers, &message) {
                return Ok(taken);
            }
            // Each message of a batch is judged like a single one.
            let messages = match &message {
                Value::Array(batch) => batch.as_slice(),
                single => std::slice::from_ref(single),
            };
            let mut asked = None;
            for m in messages {
                if let Some(a) = stage::policy::check(call, &policies, m, None)? {
                    asked.get_or_insert(a);
                }
            }
            if let Some(asked) = asked {
                let why =
                    approval_unsupported(state, &integration, &parts.headers, route, messages);
                let session = approval::session_header(&parts.headers);
                let marker = approval::request(asked, &caller, session, &message, why)?;
                return Ok(approval::with_request(marker, &parts));
            }
            initialize = approval::initialize_declares(&message);
            let governed = Governed::new(policies, messages);
            // The upstream gets the message as judged, not bytes another parser might read
            // differently (duplicate keys).
            let judged = serde_json::to_vec(&message)
                .map_err(|e| ProxyError::internal("writing the judged message", e))?;
            (Body::from(judged), Some(governed))
        }
        None => (body, None),
    };
    let authorization = match credential::authorization(call).await? {
        Authorization::Header(h) => h,
        Authorization::NeedsConnection => {
            let message = request_message(body).await;
            ex.set_message(&message);
            let e = credential::not_connected(&integration);
            return Err(credential::with_connect_link(state, &caller, e).await);
        }
    };
    let build = |body: Body, auth: Option<HeaderValue>| {
        let headers =
            forwarded::request_headers(&parts.headers, &integration.forward_headers, agent_token);
        send::request(parts.method.clone(), &endpoint, headers, auth, body)
    };
    let is_post = parts.method == http::Method::POST;
    let relay_for = |answering: Answering| Relay {
        answering: if is_post {
            answering
        } else {
            Answering::Nothing
        },
        idle_timeout: state.upstream.stream_idle_timeout(),
    };
    if integration.auth_mode != AuthMode::Oauth {
        let peek = Peek::new(body, ex);
        let answering = Answering::Peeked(peek.handle());
        let body = Body::new(Limited::new(peek, MAX_REQUEST_BYTES));
        let resp = send::once(call, build(body, authorization)).await?;
        let relayed = stage::relay::relay(resp, endpoint_map, relay_for(answering));
        approval::note_initialize(state, integration.id, initialize, &relayed);
        return Ok(stage::policy::lets_through(call, governed.as_ref(), relayed).await);
    }
    // An OAuth token can be refused before it expires (revoked, rotated elsewhere): the body is
    // kept, bounded, so the request can be retried once with a refreshed token.
    let bytes = match Limited::new(Peek::new(body, ex), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(ProxyError::RequestBroken(e)),
    };
    let sent = send::with_retry(call, authorization, |auth| {
        let req = build(Body::from(bytes.clone()), auth);
        send::once(call, req)
    })
    .await;
    match sent {
        Ok(resp) => {
            let relayed = stage::relay::relay(
                resp,
                endpoint_map,
                relay_for(Answering::Body(bytes.clone())),
            );
            approval::note_initialize(state, integration.id, initialize, &relayed);
            Ok(stage::policy::lets_through(call, governed.as_ref(), relayed).await)
        }
        Err(e @ ProxyError::NotConnected { .. }) => {
            let message = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
            ex.set_message(&message);
            Err(credential::with_connect_link(state, &caller, e).await)
        }
        Err(e) => Err(e),
    }
}

/// Why the gateway cannot ask the user to approve a pass-through call, if it cannot: the
/// call is part of a batch, comes over the legacy HTTP+SSE transport (whose answers travel on
/// another stream), or its client did not declare `elicitation` in an `initialize` this
/// replica saw go by while the organization had policies.
fn approval_unsupported(
    state: &ProxyState,
    integration: &Integration,
    headers: &HeaderMap,
    route: Route,
    messages: &[Value],
) -> Option<&'static str> {
    if messages.len() > 1 {
        return Some("it is part of a batch; send it alone");
    }
    if route == Route::Message {
        return Some("the legacy HTTP+SSE transport cannot carry the question");
    }
    let session = approval::session_header(headers);
    if !state
        .cache
        .approvals
        .sessions
        .declared(integration.id, session)
    {
        return Some(
            "the client did not declare the elicitation capability (in an initialize this gateway saw)",
        );
    }
    None
}

/// The upstream endpoint of a legacy message post: what its `ep` names, if the gateway sealed
/// it for this user's stream of this integration (see [`crate::legacy`]). Anything else is
/// refused before a byte goes upstream.
fn message_endpoint(
    state: &ProxyState,
    owner: &StreamOwner,
    base: &Url,
    parts: &http::request::Parts,
) -> Result<Url, ProxyError> {
    if parts.method != http::Method::POST {
        return Err(ProxyError::BadRequest {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: jsonrpc::INVALID_REQUEST,
            message: "Legacy messages are POSTed".into(),
        });
    }
    let ep = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "ep")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    owner
        .open(&state.auth.store, base, &ep)
        .ok_or(ProxyError::BadRequest {
            status: StatusCode::BAD_REQUEST,
            code: jsonrpc::INVALID_REQUEST,
            message: "The message endpoint is missing or invalid; reconnect the SSE stream".into(),
        })
}

/// `url` with `extra` (not empty) added to its query.
fn with_query(mut url: Url, extra: &str) -> Url {
    let merged = match url.query() {
        Some(existing) => format!("{existing}&{extra}"),
        None => extra.to_owned(),
    };
    url.set_query(Some(&merged));
    url
}

pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub(crate) fn too_large() -> ProxyError {
    ProxyError::BadRequest {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: jsonrpc::INVALID_REQUEST,
        message: format!("The request body is larger than {MAX_REQUEST_BYTES} bytes"),
    }
}

/// After an oversized body, at most this much more is read and discarded before answering.
const DRAIN_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Reads and discards a body the gateway refuses (bounded in bytes and time), so a client
/// still uploading reads the error instead of a reset connection ("lingering close").
pub async fn drain(mut body: Body) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut seen = 0usize;
        while seen < DRAIN_MAX_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    })
    .await;
}

/// A (small) request body as JSON, or null.
async fn request_message(body: Body) -> Value {
    let Ok(collected) = Limited::new(body, MAX_REQUEST_BYTES).collect().await else {
        return Value::Null;
    };
    serde_json::from_slice::<Value>(&collected.to_bytes()).unwrap_or(Value::Null)
}

/// A request body the policy stage judges: read whole (bounded) and parsed. A body that is
/// no JSON is refused (`-32700`) rather than passed to an upstream that might read it anyway.
async fn read_governed(body: Body) -> Result<Value, ProxyError> {
    let bytes = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(ProxyError::RequestBroken(e)),
    };
    serde_json::from_slice::<Value>(&bytes).map_err(|_| ProxyError::BadRequest {
        status: StatusCode::BAD_REQUEST,
        code: jsonrpc::PARSE_ERROR,
        message: "Parse error".into(),
    })
}
