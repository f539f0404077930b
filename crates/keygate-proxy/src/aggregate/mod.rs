//! The aggregated endpoint, `/apps/{id}/mcp` and `/mcp`: one MCP server exposing the tools,
//! prompts and resources of every attached proxied integration, to clients of both eras (design
//! notes in `README.md` here).
//!
//! - A 2025 client's `initialize` fans out (in parallel) to each integration the user has
//!   credentials for, passing the client's capabilities on; the answer's `Mcp-Session-Id` is
//!   the sealed list of upstream sessions ([`session::AggregatedSession`]). A 2026-07-28 client
//!   has no session: each request carries `_meta` ([`era::accept`]), and `server/discover`
//!   answers what `initialize` would ([`lifecycle`]).
//! - Each upstream is spoken to in its own era ([`era::era`], [`upstream::Link`]); for a 2026
//!   client the gateway holds the sessions of 2025 upstreams itself ([`handshakes`]).
//! - Lists fan out and namespace names as `{slug}_{name}`: slugs contain no `_`, so the first
//!   `_` splits them unambiguously. Resource URIs are kept; the upstream whose read of a URI
//!   answers owns it ([`route`]).
//! - `tools/call` and `prompts/get` route by prefix, `resources/subscribe`/`unsubscribe` by
//!   URI owner, `completion/complete` by its `ref`; each streams the upstream's answer back
//!   ([`relay_call`]), translated for the client's era ([`era::cross`]) and cancellable
//!   ([`inflight`]). Server-to-client requests inside it (sampling, elicitation, roots) get ids
//!   namespaced as `{slug}~{original id}`, and the client's answers are routed back by that
//!   prefix.
//! - `notifications/cancelled` goes to the upstream answering that request, other
//!   notifications to every 2025 upstream of the session ([`notify`]); `GET` merges the
//!   upstreams' streams, coalescing their list changes; `DELETE` ends the session on every
//!   replica ([`ended`]) and closes the upstream sessions. Upstreams of the HTTP+SSE transport
//!   (2024-11-05) are reached through streams the gateway holds ([`sse_upstream`]).
//! - An upstream that fails, or misses the fan-out deadline (`proxy.fanout_timeout_secs`, for
//!   its whole part: [`upstream::within`]), is left out (and logged) without failing or delaying
//!   the others, and asked again next time; one that forgot its session (`404`, or a `400` it
//!   confirms: [`upstream::forgot`]) fails a 2025 client's request with `404` so that it
//!   initializes again. A routed call involves only its upstream.

pub mod cursor;
pub mod ended;
pub mod era;
pub mod events;
pub mod handshakes;
pub mod inflight;
pub mod lifecycle;
pub mod message;
pub mod notify;
pub mod route;
pub mod session;
pub mod sse_upstream;
pub mod upstream;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Limited};
use keygate_core::wire::jsonrpc::{self, MessageOutline, RequestId};
use serde_json::{Value, json};

use self::cursor::Cursor;
use self::events::{Events, MAX_EVENT_BYTES, map_event, map_id, message_of};
use self::inflight::{Call, Client};
use self::message::Message;
use self::session::AggregatedSession;
use self::upstream::{
    Downstream, Link, Member, Outgoing, Stateless, exchange, members, rpc, within,
};
use crate::ProxyState;
use crate::approval;
use crate::error::{ProxyError, local_answer};
use crate::forwarded;
use crate::passthrough::{MAX_REQUEST_BYTES, declared_length, too_large};
use crate::sse::{KeepAlive, is_event_stream};
use crate::stage::McpCaller;
use crate::stage::{self, credential};
use crate::traced::{self, ROUTE_AGGREGATED, ROUTE_MCP};
use keygate_trace::Exchange;
use keygate_trace::exchange::MCP_SESSION_ID;

const SEPARATOR: char = '_';
const ID_SEPARATOR: char = '~';

/// MCP 2025's JSON-RPC code for a resource no upstream has.
const RESOURCE_NOT_FOUND: i64 = -32002;

pub async fn handle(State(state): State<ProxyState>, req: Request) -> Response {
    let route = if req.uri().path().starts_with("/mcp") {
        ROUTE_MCP
    } else {
        ROUTE_AGGREGATED
    };
    let mut ex = traced::start(&state, route, req.headers(), req.method());
    let scope = traced::scope(&ex);
    // Boxed, like pass-through's `forward`: the handler's future stays small when moved.
    let result = traced::within(scope, Box::pin(dispatch(&state, req, &mut ex))).await;
    if let Some(ask) = approval::asked(&result) {
        // Asked on this answer's stream, then handled again, approved ([`approval`]).
        return approval::ask(&state, ask, ex, |state, req, mut ex| async move {
            let scope = traced::scope(&ex);
            let result = traced::within(scope, Box::pin(dispatch(&state, req, &mut ex))).await;
            traced::finish(ex, result)
        });
    }
    traced::finish(ex, result)
}

async fn dispatch(
    state: &ProxyState,
    req: Request,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    let (parts, body) = req.into_parts();
    let stage::authenticate::Authenticated {
        caller,
        body,
        token,
    } = stage::authenticate::run(state, &parts, body, ex).await?;
    let caller = Arc::new(caller);
    let session_header = parts
        .headers
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok());
    let session = match session_header {
        Some(h) => Some(ended::live(state, &caller, h).await?),
        None => None,
    };
    match parts.method {
        Method::POST => {
            let message = read_message(&parts.headers, body, ex).await?;
            match post(state, &caller, &parts.headers, token, session, message, ex).await {
                // A routed upstream whose grant turned out to be gone: this answer is sent.
                Err(e) => Err(credential::with_connect_link(state, &caller, e).await),
                // A call waiting for approval is handled again, approved, with this request.
                Ok(answer) => Ok(approval::with_request(answer, &parts)),
            }
        }
        // No stream to open and no session to close without a session (a 2026 client).
        Method::GET | Method::DELETE
            if session.is_none() || era::declares_modern(&parts.headers, None) =>
        {
            Ok(StatusCode::METHOD_NOT_ALLOWED.into_response())
        }
        Method::GET => match session {
            Some(Some(s)) => {
                let last = parts.headers.get("last-event-id");
                let cursor = Cursor::parse(last.and_then(|v| v.to_str().ok()));
                merged_stream(state, &caller, &s, cursor).await
            }
            _ => Err(unknown_session()),
        },
        Method::DELETE => match session {
            Some(Some(s)) => lifecycle::close(state, &caller, &s).await,
            _ => Err(unknown_session()),
        },
        _ => Ok(StatusCode::METHOD_NOT_ALLOWED.into_response()),
    }
}

/// The POSTed JSON-RPC message (bounded; one message, no batch), as far as the route reads it
/// ([`Message`]).
async fn read_message(
    headers: &HeaderMap,
    body: Body,
    ex: &mut Exchange,
) -> Result<Message, ProxyError> {
    if declared_length(headers).is_some_and(|n| n > MAX_REQUEST_BYTES as u64) {
        crate::passthrough::drain(body).await;
        return Err(too_large());
    }
    let bytes = Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|_| too_large())?
        .to_bytes();
    ex.bytes_in = bytes.len() as u64;
    let message = Message::read(&bytes)?;
    match &message {
        Message::Outlined { .. } if !ex.capture().is_on() => {
            ex.set_request(
                message.method(),
                message.id().map(Value::from),
                message.name(),
            );
        }
        _ => ex.set_message(message.value()?),
    }
    message.check()?;
    Ok(message)
}

/// A client's message; `token` is the bearer token the request was let in with.
async fn post(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    headers: &HeaderMap,
    token: &str,
    session: Option<Option<Arc<AggregatedSession>>>,
    message: Message,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    // An answer, or a 2026 `_meta`, is never only outlined.
    if let Some(parsed) = message.parsed()
        && let Some(taken) = approval::answered(state, caller, headers, parsed)
    {
        return Ok(taken);
    }
    if era::declares_modern(headers, message.parsed()) {
        return stateless(state, caller, headers, token, message, ex).await;
    }
    if message.method() == Some("initialize") {
        return lifecycle::initialize(state, caller, message.value()?).await;
    }
    let session = match session {
        Some(Some(s)) => s,
        Some(None) => return Err(unknown_session()),
        None => return Err(invalid("Mcp-Session-Id is required after initialize")),
    };
    let client = headers
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(|h| Client::new(caller.user, &session, h));
    let downstream = Downstream::Session(session.clone());
    serve(state, caller, &downstream, client.as_ref(), message, ex).await
}

/// A 2026-07-28 request: its envelope checked, then served without a session. The era defines
/// no client notifications over HTTP (they are accepted and dropped) and no client responses.
async fn stateless(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    headers: &HeaderMap,
    token: &str,
    message: Message,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    let id = match (message.method(), message.id()) {
        (Some(_), Some(id)) => id,
        (Some(_), None) => return Ok(StatusCode::ACCEPTED.into_response()),
        (None, _) => return Err(invalid("A 2026-07-28 client sends requests only")),
    };
    let meta = match era::accept(headers, message.value()?) {
        Ok(meta) => Arc::new(meta),
        Err(r) => {
            let mut error = jsonrpc::Error::new(r.code, r.message);
            error.data = r.data;
            return Ok(rpc_error_with(StatusCode::BAD_REQUEST, &id, error));
        }
    };
    if message.method() == Some("server/discover") {
        return lifecycle::discover(state, caller, &meta, id).await;
    }
    let downstream = Downstream::Stateless(Stateless {
        meta,
        // `Mcp-Param-*` pass on; one that carries the agent's own token does not.
        params: forwarded::without_token(Stateless::params_of(headers), Some(token)),
    });
    serve(state, caller, &downstream, None, message, ex).await
}

/// One message of a client, in its era, over the upstreams it may use (`client`: a 2025
/// client's session, under which its routed calls can be cancelled). Owned: a routed call
/// sends it on renamed, without a copy.
///
/// A message for every upstream involves each one the user can use ([`members`]); one that
/// missed the client's `initialize` is reached through a session the gateway holds
/// (`upstream::link`). A message routed by name involves its upstream alone, credential
/// included ([`upstream::member`]).
async fn serve(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    downstream: &Downstream,
    client: Option<&Client<'_>>,
    owned: Message,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    let message = &owned;
    let (method, id) = match (message.method(), message.id()) {
        (Some(method), Some(id)) => (method, id),
        (Some(_), None) => {
            let members = members(state, caller).await?;
            let message = message.value()?;
            return notify::from_client(state, &members, downstream, client, message).await;
        }
        (None, Some(RequestId::String(namespaced))) => {
            let message = message.value()?;
            return answer_upstream(state, caller, downstream, message, &namespaced, ex).await;
        }
        _ => return Err(invalid("Not a JSON-RPC request, notification or response")),
    };
    let modern = downstream.is_modern();
    let to = Routed {
        downstream,
        client,
        id: &id,
    };
    match method {
        "ping" if !modern => Ok(result(&id, json!({}))),
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
            let members = members(state, caller).await?;
            let mut body = json!({ list_key(method): fan_out_list(state, &members, downstream, method).await? });
            if modern {
                era::cacheable(&mut body);
            }
            Ok(result(&id, body))
        }
        "tools/call" | "prompts/get" => call_by_name(state, caller, &to, owned, ex).await,
        "resources/read" => {
            let members = members(state, caller).await?;
            read_resource(state, &members, downstream, message.value()?, &id).await
        }
        // 2026-07-28 replaced them with `subscriptions/listen`.
        "resources/subscribe" | "resources/unsubscribe" if !modern => {
            let members = members(state, caller).await?;
            subscription(state, &members, &to, message.value()?, ex).await
        }
        "completion/complete" => complete(state, caller, &to, message.value()?, ex).await,
        "logging/setLevel" if !modern => {
            let members = members(state, caller).await?;
            let message = message.value()?;
            let sent = join_all(
                handshake_era(&members, downstream)
                    .map(|m| within(state, m, method, rpc(state, m, downstream, message))),
            )
            .await;
            sent.into_iter().flatten().collect::<Result<Vec<_>, _>>()?;
            Ok(result(&id, json!({})))
        }
        // A 2026 server answers an unknown method with 404 (ping and setLevel are gone).
        other => Ok(rpc_error_with(
            if modern {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            },
            &id,
            jsonrpc::Error::new(
                jsonrpc::METHOD_NOT_FOUND,
                format!("Method not found: {other}"),
            ),
        )),
    }
}

/// The members that take messages only the 2025 era has (notifications, `logging/setLevel`):
/// the 2025 upstreams of a 2025 client's session.
fn handshake_era<'a>(
    members: &'a [Member],
    downstream: &'a Downstream,
) -> impl Iterator<Item = &'a Member> {
    members.iter().filter(move |m| match downstream {
        Downstream::Session(s) => s.legacy(m.integration.id).is_some(),
        Downstream::Stateless(_) => false,
    })
}

/// A response to a server-to-client request: back to the upstream that asked.
async fn answer_upstream(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    downstream: &Downstream,
    message: &Value,
    namespaced: &str,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    let unknown = || invalid("Unknown response id");
    let (slug, original) = namespaced.split_once(ID_SEPARATOR).ok_or_else(unknown)?;
    let member = upstream::member(state, caller, slug)
        .await?
        .ok_or_else(unknown)?;
    ex.integration = Some(member.integration.id);
    let mut answer = message.clone();
    answer["id"] = serde_json::from_str(original).map_err(|_| unknown())?;
    let reply = exchange(state, &member, downstream, &answer).await?;
    Ok(reply.resp.status().into_response())
}

/// A request routed to one upstream, and whose it is.
struct Routed<'a> {
    downstream: &'a Downstream,
    /// A 2025 client's session, under which the call can be cancelled.
    client: Option<&'a Client<'a>>,
    id: &'a RequestId,
}

/// `tools/call` and `prompts/get`: to the upstream the name's prefix names.
async fn call_by_name(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    to: &Routed<'_>,
    message: Message,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    let name = message.name().unwrap_or("");
    let Some((member, inner)) = route::by_name(state, caller, name).await? else {
        let noun = if message.method() == Some("tools/call") {
            "tool"
        } else {
            "prompt"
        };
        let message = format!("Unknown {noun}: {name}");
        return Ok(rpc_error(to.id, jsonrpc::INVALID_PARAMS, &message));
    };
    let prefix = name.len() - inner.len();
    ex.integration = Some(member.integration.id);
    if let Some(policies) = stage::policy::of(state, caller).await?
        && let Some(asked) =
            stage::policy::check(member.call(state), &policies, message.value()?, Some(inner))?
    {
        let why = approval_unsupported(to.downstream);
        let session = to.client.map(Client::session);
        return approval::request(asked, &member.caller, session, message.value()?, why);
    }
    // Judged, the upstream gets the message as judged; else as the client wrote it.
    let upstream_msg = message.without_prefix(prefix)?;
    relay_call(state, &member, to, upstream_msg.outgoing()).await
}

/// Why the gateway cannot ask the user of this downstream to approve a call, if it cannot: a
/// 2025 client that did not declare `elicitation` in its `initialize`, or a 2026-07-28 client,
/// whose era replaced server-to-client requests with multi round-trip results (`input_required`),
/// which the gateway does not issue for approvals yet.
fn approval_unsupported(downstream: &Downstream) -> Option<&'static str> {
    match downstream {
        Downstream::Session(s) if approval::declares_elicitation(s.capabilities.as_ref()) => None,
        Downstream::Session(_) => {
            Some("the client did not declare the elicitation capability when it initialized")
        }
        Downstream::Stateless(_) => Some(
            "the gateway asks for approval only in 2025 sessions (with elicitation); a 2026-07-28 client cannot be asked yet",
        ),
    }
}

/// `resources/read`: every upstream is asked; the first that has it answers
/// ([`route::resource_owner`]), in the client's era.
async fn read_resource(
    state: &ProxyState,
    members: &[Member],
    downstream: &Downstream,
    message: &Value,
    id: &RequestId,
) -> Result<Response, ProxyError> {
    let modern = downstream.is_modern();
    let readable = readable_by(state, members, message).await?;
    let Some((member, mut answer)) =
        route::resource_owner(state, &readable, downstream, message).await?
    else {
        return Ok(resource_not_found(id, modern));
    };
    let from_modern = route::speaks_modern(state, member, downstream).await;
    era::cross(&mut answer, from_modern, modern);
    let mut r = answer["result"].take();
    if modern {
        era::cacheable(&mut r);
    }
    Ok(result(id, r))
}

/// The policy stage of the aggregated endpoint's caller (every member has the same one), when
/// its organization has policies.
async fn policy_stage(
    state: &ProxyState,
    members: &[Member],
) -> Result<Option<stage::policy::Stage>, ProxyError> {
    match members.first() {
        Some(m) => stage::policy::of(state, &m.caller).await,
        None => Ok(None),
    }
}

/// The members that may be asked to read the resource `message` names: those whose read the
/// policies permit. When policies leave none, the first denial is the answer.
async fn readable_by(
    state: &ProxyState,
    members: &[Member],
    message: &Value,
) -> Result<Vec<Member>, ProxyError> {
    let Some(policies) = policy_stage(state, members).await? else {
        return Ok(members.to_vec());
    };
    let mut readable = Vec::new();
    let mut denial = None;
    for m in members {
        match stage::policy::check(m.call(state), &policies, message, None) {
            Ok(None) => readable.push(m.clone()),
            // A read fans out to find its owner: no one read of it can be asked about.
            Ok(Some(asked)) => {
                let why = "resources/read on the aggregated endpoint cannot be approved (use the integration's own endpoint)";
                denial = denial.or(Some(asked.refused(why)));
            }
            Err(e) => denial = denial.or(Some(e)),
        }
    }
    match denial {
        Some(e) if readable.is_empty() => Err(e),
        _ => Ok(readable),
    }
}

/// "Resource not found": 2026-07-28 replaced its code with Invalid Params.
fn resource_not_found(id: &RequestId, modern: bool) -> Response {
    let code = if modern {
        jsonrpc::INVALID_PARAMS
    } else {
        RESOURCE_NOT_FOUND
    };
    rpc_error(id, code, "Resource not found")
}

/// `resources/subscribe` and `resources/unsubscribe` (2025): to the upstream that owns the
/// URI, the one whose read of it answers ([`route::resource_owner`]). A URI nobody can read
/// yet (a client may watch for a resource to appear) belongs to the only upstream when there
/// is one, as it would directly; among several it has no owner. Its
/// `notifications/resources/updated` reach the client on the merged `GET` stream, or on the
/// answer it sends them on, with the URI unchanged.
async fn subscription(
    state: &ProxyState,
    members: &[Member],
    to: &Routed<'_>,
    message: &Value,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    let uri = &message["params"]["uri"];
    let read = json!({"jsonrpc": "2.0", "id": "kg-owner", "method": "resources/read",
        "params": {"uri": uri}});
    let owner = match route::resource_owner(state, members, to.downstream, &read).await? {
        Some((member, _)) => Some(member),
        None => match members {
            [only] => Some(only),
            _ => None,
        },
    };
    let Some(member) = owner else {
        return Ok(resource_not_found(to.id, false));
    };
    ex.integration = Some(member.integration.id);
    relay_call(state, member, to, Outgoing::Value(message)).await
}

/// `completion/complete`: to the upstream its `ref` names ([`route::completion`]).
async fn complete(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    to: &Routed<'_>,
    message: &Value,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    let Some((member, own)) = route::completion(state, caller, to.downstream, message).await?
    else {
        let reference = &message["params"]["ref"];
        let named = reference["name"].as_str().or(reference["uri"].as_str());
        let message = format!("Unknown reference: {}", named.unwrap_or("none"));
        return Ok(rpc_error(to.id, jsonrpc::INVALID_PARAMS, &message));
    };
    ex.integration = Some(member.integration.id);
    relay_call(state, &member, to, Outgoing::Value(&own)).await
}

/// The result field of a list method's answer.
fn list_key(method: &str) -> &'static str {
    match method {
        "tools/list" => "tools",
        "prompts/list" => "prompts",
        "resources/list" => "resources",
        _ => "resourceTemplates",
    }
}

/// Fetches a list from every upstream (following cursors) and namespaces its names. Each
/// upstream gets the fan-out deadline for all its pages; one that misses it is left out.
async fn fan_out_list(
    state: &ProxyState,
    members: &[Member],
    downstream: &Downstream,
    method: &str,
) -> Result<Vec<Value>, ProxyError> {
    let key = list_key(method);
    let policies = policy_stage(state, members).await?;
    let per_member = join_all(
        members
            .iter()
            .map(|m| within(state, m, method, list_one(state, m, downstream, method))),
    )
    .await;
    let mut out = Vec::new();
    for (member, outcome) in members.iter().zip(per_member) {
        let Some(outcome) = outcome else { continue };
        let (slug, mut items) = outcome?;
        if let Some(policies) = &policies {
            stage::policy::filter_list(member.call(state), policies, method, &mut items);
        }
        for mut item in items {
            if matches!(key, "tools" | "prompts")
                && let Some(name) = item["name"].as_str()
            {
                item["name"] = Value::from(format!("{slug}{SEPARATOR}{name}"));
            }
            out.push(item);
        }
    }
    Ok(out)
}

/// One upstream's list, all pages (at most 20); what it returned before failing, if it fails.
async fn list_one<'a>(
    state: &ProxyState,
    member: &'a Member,
    downstream: &Downstream,
    method: &str,
) -> Result<(&'a str, Vec<Value>), ProxyError> {
    let key = list_key(method);
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..20 {
        let mut params = json!({});
        if let Some(c) = &cursor {
            params["cursor"] = Value::from(c.clone());
        }
        let msg = json!({"jsonrpc": "2.0", "id": format!("kg-list-{page}"), "method": method, "params": params});
        let Some(answer) = rpc(state, member, downstream, &msg).await? else {
            break;
        };
        let result = &answer["result"];
        items.extend(result[key].as_array().cloned().unwrap_or_default());
        cursor = result["nextCursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    Ok((member.integration.slug.as_str(), items))
}

/// Namespaces the id of a server-to-client request coming from `slug`.
fn namespace_request(slug: Arc<str>) -> impl Fn(Value) -> Value + Unpin + Send + 'static {
    move |mut v: Value| {
        if v.get("method").is_some()
            && let Some(id) = v.get("id").filter(|id| !id.is_null())
        {
            v["id"] = Value::from(format!("{slug}{ID_SEPARATOR}{id}"));
        }
        v
    }
}

/// Whether a message from an upstream reaches the client as the upstream wrote it: anything
/// but a server-to-client request (its id is namespaced, [`namespace_request`]) when upstream
/// and client are of one era. Only the others are parsed and encoded again.
fn reaches_client_unchanged(message: &MessageOutline, same_era: bool) -> bool {
    same_era && !(message.method && message.id.as_ref().is_some_and(|id| !id.is_null()))
}

/// What a routed answer's messages go through on their way to the client: server-to-client
/// requests get namespaced ids, and a message of an upstream of the other era is translated
/// ([`era::cross`]).
fn for_client(
    slug: Arc<str>,
    from_modern: bool,
    to_modern: bool,
) -> impl Fn(Value) -> Value + Unpin + Send + 'static {
    let namespace = namespace_request(slug);
    move |v: Value| {
        let mut v = namespace(v);
        era::cross(&mut v, from_modern, to_modern);
        v
    }
}

/// Streams a routed call's answer back, translated between the eras where they differ. The
/// call is tracked while it is relayed ([`Call`]): a 2025 client's `notifications/cancelled`
/// for it drops a 2026 upstream's request (the answer then ends without a message), and a 2026
/// client that goes away before the answer has a 2025 upstream sent `notifications/cancelled`.
async fn relay_call(
    state: &ProxyState,
    member: &Member,
    to: &Routed<'_>,
    message: Outgoing<'_>,
) -> Result<Response, ProxyError> {
    let downstream = to.downstream;
    let mut call = Call::begin(state, to.client, to.id, member.integration.id);
    // Armed before the upstream answers: a tool may send nothing until it is done.
    cancel_on_drop(state, member, downstream, &mut call).await?;
    let reply = tokio::select! {
        reply = exchange(state, member, downstream, message) => reply?,
        () = call.stopped() => return Ok(event_stream(Body::empty())),
    };
    // A session replaced on the way (the upstream forgot it) is the one to cancel on.
    cancel_on_drop(state, member, downstream, &mut call).await?;
    let (mut parts, body) = reply.resp.into_parts();
    let (from_modern, to_modern) = (reply.modern, downstream.is_modern());
    if !to_modern && from_modern && parts.status.is_client_error() {
        // A 2026 upstream sends JSON-RPC errors with a 4xx; a 2025 client reads them in a 200.
        parts.status = StatusCode::OK;
    }
    let slug: Arc<str> = member.integration.slug.as_str().into();
    let mut out = if is_event_stream(&parts.headers) {
        let (data, integration) = (
            for_client(slug, from_modern, to_modern),
            member.integration.id,
        );
        let stopped = call.stopped();
        let same_era = from_modern == to_modern;
        let events = events::relay(body, stopped, move |event| {
            let message = message_of(&event);
            if message.as_ref().is_some_and(|m| call.is_answer(m)) {
                call.answered();
            }
            let cursor = |id: &str| Cursor::one(integration, id);
            if message.is_some_and(|m| reaches_client_unchanged(&m, same_era)) {
                map_id(event, cursor)
            } else {
                map_event(event, &data, cursor)
            }
        });
        event_stream(events)
    } else {
        call.answered(); // the JSON body is the answer
        if from_modern != to_modern {
            translated(body, from_modern, to_modern).await?
        } else {
            let mut r = Response::new(Body::new(body));
            if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
                r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
            }
            r
        }
    };
    *out.status_mut() = parts.status;
    Ok(out)
}

/// For a 2026 client over a 2025 upstream: the session `call` cancels on if the client goes
/// away (the only way such a client cancels).
async fn cancel_on_drop(
    state: &ProxyState,
    member: &Member,
    downstream: &Downstream,
    call: &mut Call,
) -> Result<(), ProxyError> {
    if downstream.is_modern()
        && let Link::Legacy(session) = upstream::link(state, member, downstream).await?
    {
        call.cancel_on_drop(member, session);
    }
    Ok(())
}

/// An SSE answer to the client.
fn event_stream(body: Body) -> Response {
    let mut r = Response::new(Body::new(KeepAlive::new(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// An upstream's JSON answer for a client of the other era, translated ([`era::cross`];
/// bounded, like every message the gateway must rewrite).
async fn translated(
    body: Body,
    from_modern: bool,
    to_modern: bool,
) -> Result<Response, ProxyError> {
    let bytes = Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| ProxyError::upstream("reading the answer", e))?
        .to_bytes();
    let mut answer: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ProxyError::upstream("reading the answer as JSON", e))?;
    era::cross(&mut answer, from_modern, to_modern);
    Ok(axum::Json(answer).into_response())
}

/// `GET`: the upstreams' server-to-client streams, merged, each resumed after the event the
/// client's `cursor` names for it. Every event leaves with the cursor of everything the
/// client has been sent so far as its id. The streams are opened in parallel, each within the
/// fan-out deadline (a stream that opened has no deadline).
async fn merged_stream(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    session: &AggregatedSession,
    cursor: Cursor,
) -> Result<Response, ProxyError> {
    let members = members(state, caller).await?;
    let opening = join_all(members.iter().filter_map(|m| {
        let up = session.legacy(m.integration.id)?;
        let open = upstream::open_stream(state, m, up, cursor.get(m.integration.id));
        Some(async move { (m, up, within(state, m, "GET", open).await) })
    }))
    .await;
    let mut upstreams = Vec::new();
    for (m, up, resp) in opening {
        let Some(Ok(resp)) = resp else {
            continue;
        };
        if upstream::forgot(state, m, resp.status(), up).await {
            return Err(ProxyError::SessionExpired);
        }
        if !resp.status().is_success() {
            continue;
        }
        let integration = m.integration.id;
        let slug: Arc<str> = m.integration.slug.as_str().into();
        // Decoded into whole events here, up to an upstream's first error; the merge rewrites
        // them. Polled by the client's stream itself: no task or channel per upstream.
        let events = Events::new(resp.into_body(), MAX_EVENT_BYTES)
            .take_while(|event| std::future::ready(event.is_ok()))
            .filter_map(move |event| {
                std::future::ready(event.ok().map(|e| (integration, slug.clone(), e)))
            });
        upstreams.push(events);
    }
    if upstreams.is_empty() {
        return Ok(StatusCode::METHOD_NOT_ALLOWED.into_response());
    }
    // One consumer stamps the ids, so they advance in the order the client receives events.
    let stream = notify::merged(futures_util::stream::select_all(upstreams), cursor);
    let mut resp = Response::new(Body::new(KeepAlive::new(Body::from_stream(stream))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// The gateway's own result for the request with `id`.
fn result(id: &RequestId, result: Value) -> Response {
    local_answer(StatusCode::OK, jsonrpc::result(id, result))
}

/// The gateway's own JSON-RPC error for the request with `id`.
fn rpc_error(id: &RequestId, code: i64, message: &str) -> Response {
    rpc_error_with(StatusCode::OK, id, jsonrpc::Error::new(code, message))
}

fn rpc_error_with(status: StatusCode, id: &RequestId, error: jsonrpc::Error) -> Response {
    local_answer(status, error.response(Some(id)))
}

fn invalid(message: &str) -> ProxyError {
    ProxyError::BadRequest {
        status: StatusCode::BAD_REQUEST,
        code: jsonrpc::INVALID_REQUEST,
        message: message.to_owned(),
    }
}

fn parse_error() -> ProxyError {
    ProxyError::BadRequest {
        status: StatusCode::BAD_REQUEST,
        code: jsonrpc::PARSE_ERROR,
        message: "Parse error".into(),
    }
}

fn unknown_session() -> ProxyError {
    ProxyError::BadRequest {
        status: StatusCode::NOT_FOUND,
        code: crate::error::NOT_FOUND,
        message: "Session not found; initialize again".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_messages_namespacing_would_change_are_rewritten() {
        let namespace = namespace_request("beta".into());
        for text in [
            r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#,
            r#"{"jsonrpc":"2.0","id":"x","error":{"code":-1,"message":"no"}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"sampling/createMessage"}"#,
            r#"{"jsonrpc":"2.0","id":"r","method":"roots/list"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
        ] {
            let message: Value = serde_json::from_str(text).unwrap();
            let outline = MessageOutline::read(text.as_bytes()).unwrap();
            let unchanged = namespace(message.clone()) == message;
            assert_eq!(
                reaches_client_unchanged(&outline, true),
                unchanged,
                "{text}"
            );
            assert!(!reaches_client_unchanged(&outline, false), "{text}");
        }
    }
}
