//! The aggregated endpoint, `/apps/{id}/mcp` and `/mcp`: one MCP server exposing the tools,
//! prompts and resources of every attached proxied integration.
//!
//! - `initialize` fans out (in parallel) to each integration the user has credentials for,
//!   passing the client's capabilities on; the answer's `Mcp-Session-Id` is the sealed list of
//!   upstream sessions ([`session::AggregatedSession`]).
//! - Lists fan out and namespace names as `{slug}_{name}`: slugs contain no `_`, so the first
//!   `_` splits them unambiguously. Resource URIs are kept; `resources/read` asks every upstream.
//! - `tools/call` and `prompts/get` route by prefix and stream the upstream's answer back.
//!   Server-to-client requests inside it (sampling, elicitation, roots) get ids namespaced as
//!   `{slug}~{original id}`, and the client's answers are routed back by that prefix.
//! - Notifications fan out; `GET` merges the upstreams' streams; `DELETE` closes them all.
//! - An upstream that fails is left out (and logged) without failing the others.

pub mod events;
pub mod session;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Limited};
use keygate_core::model::{AuthMode, Category, Integration};
use serde_json::{Value, json};

use self::events::MapEvents;
use self::session::{AggregatedSession, UpstreamSession};
use crate::ProxyState;
use crate::credentials;
use crate::error::ProxyError;
use crate::gate::{McpCaller, authenticate};
use crate::passthrough::{MAX_REQUEST_BYTES, declared_length, too_large};
use crate::sse::{KeepAlive, event_data, is_event_stream};
use crate::traced::{self, ROUTE_AGGREGATED, ROUTE_MCP, TRACEPARENT};
use keygate_trace::{Exchange, LocalAnswer};

const SEPARATOR: char = '_';
const ID_SEPARATOR: char = '~';

/// An upstream the caller can use: the integration and its credential.
#[derive(Clone)]
struct Member {
    integration: Integration,
    authorization: Option<HeaderValue>,
    /// Whose credential it is (to refresh it if the upstream refuses it).
    caller: Arc<McpCaller>,
}

pub async fn handle(State(state): State<ProxyState>, req: Request) -> Response {
    let route = if req.uri().path().starts_with("/mcp") {
        ROUTE_MCP
    } else {
        ROUTE_AGGREGATED
    };
    let mut ex = traced::start(&state, route, req.headers(), req.method());
    let traceparent = ex.traceparent();
    let result = TRACEPARENT
        .scope(traceparent, dispatch(&state, req, &mut ex))
        .await;
    traced::finish(ex, result)
}

async fn dispatch(
    state: &ProxyState,
    req: Request,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    let (parts, body) = req.into_parts();
    let caller = match authenticate(state, &parts.headers, &parts.uri).await {
        Ok(caller) => caller,
        Err(e) => {
            if matches!(e, ProxyError::Unauthorized(_)) {
                traced::unauthenticated(state, ex, &parts.uri, body).await;
            }
            return Err(e);
        }
    };
    traced::identify(ex, &caller);
    let caller = Arc::new(caller);
    let session_header = parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok());
    let session = session_header.map(|h| {
        AggregatedSession::open(&state.auth.store, caller.app.org_id, caller.user, h)
            .filter(|s| s.app == caller.app.id)
    });
    match parts.method {
        Method::POST => {
            if declared_length(&parts.headers).is_some_and(|n| n > MAX_REQUEST_BYTES as u64) {
                crate::passthrough::drain(body).await;
                return Err(too_large());
            }
            let bytes = Limited::new(body, MAX_REQUEST_BYTES)
                .collect()
                .await
                .map_err(|_| too_large())?
                .to_bytes();
            ex.bytes_in = bytes.len() as u64;
            let message: Value = serde_json::from_slice(&bytes).map_err(|_| parse_error())?;
            if message.is_array() {
                return Err(invalid("JSON-RPC batches are not supported"));
            }
            ex.set_message(&message);
            post(state, &caller, session, message, ex).await
        }
        Method::GET => match session {
            Some(Some(s)) => merged_stream(state, &caller, &s).await,
            _ => Err(unknown_session()),
        },
        Method::DELETE => match session {
            Some(Some(s)) => {
                let members = members(state, &caller).await?;
                join_all(members.iter().filter_map(|m| {
                    let up = s.upstream(m.integration.id)?.clone();
                    Some(async move { send(state, m, Some(&up), Method::DELETE, None).await })
                }))
                .await;
                Ok(StatusCode::OK.into_response())
            }
            _ => Err(unknown_session()),
        },
        _ => Ok(StatusCode::METHOD_NOT_ALLOWED.into_response()),
    }
}

async fn post(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    session: Option<Option<AggregatedSession>>,
    message: Value,
    ex: &mut Exchange,
) -> Result<Response, ProxyError> {
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let id = message.get("id").cloned();
    if method.as_deref() == Some("initialize") {
        return initialize(state, caller, &message).await;
    }
    let session = match session {
        Some(Some(s)) => s,
        Some(None) => return Err(unknown_session()),
        None => return Err(invalid("Mcp-Session-Id is required after initialize")),
    };
    // Only the upstreams this session initialized take part; one whose initialize failed is
    // not contacted again until the client initializes anew.
    let members: Vec<Member> = members(state, caller)
        .await?
        .into_iter()
        .filter(|m| session.upstream(m.integration.id).is_some())
        .collect();
    match (method.as_deref(), id) {
        (Some("ping"), Some(id)) => Ok(result(id, json!({}))),
        (
            Some(
                list @ ("tools/list"
                | "prompts/list"
                | "resources/list"
                | "resources/templates/list"),
            ),
            Some(id),
        ) => {
            let items = fan_out_list(state, &members, &session, list).await;
            let key = list_key(list);
            Ok(result(id, json!({ key: items })))
        }
        (Some(routed @ ("tools/call" | "prompts/get")), Some(id)) => {
            let name = message["params"]["name"].as_str().unwrap_or("");
            let Some((slug, inner)) = name.split_once(SEPARATOR) else {
                return Ok(rpc_error(
                    id,
                    -32602,
                    &format!("Unknown {}: {name}", noun(routed)),
                ));
            };
            let Some(member) = members.iter().find(|m| m.integration.slug == slug) else {
                return Ok(rpc_error(
                    id,
                    -32602,
                    &format!("Unknown {}: {name}", noun(routed)),
                ));
            };
            ex.integration = Some(member.integration.id);
            let mut upstream_msg = message.clone();
            upstream_msg["params"]["name"] = Value::from(inner);
            relay_call(
                state,
                member,
                session.upstream(member.integration.id),
                upstream_msg,
            )
            .await
        }
        (Some("resources/read"), Some(id)) => {
            let answers = join_all(
                members
                    .iter()
                    .map(|m| rpc(state, m, session.upstream(m.integration.id), &message)),
            )
            .await;
            let found = answers
                .into_iter()
                .flatten()
                .find_map(|v| v.get("result").cloned());
            Ok(match found {
                Some(r) => result(id, r),
                None => rpc_error(id, -32002, "Resource not found"),
            })
        }
        (Some("logging/setLevel"), Some(id)) => {
            join_all(
                members
                    .iter()
                    .map(|m| rpc(state, m, session.upstream(m.integration.id), &message)),
            )
            .await;
            Ok(result(id, json!({})))
        }
        (Some(other), Some(id)) => Ok(rpc_error(id, -32601, &format!("Method not found: {other}"))),
        // Notifications go to every upstream.
        (Some(_), None) => {
            join_all(members.iter().map(|m| {
                let up = session.upstream(m.integration.id).cloned();
                let body = message.to_string();
                async move { send(state, m, up.as_ref(), Method::POST, Some(body)).await }
            }))
            .await;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        // A response to a server-to-client request: back to the upstream that asked.
        (None, Some(Value::String(namespaced))) => {
            let Some((slug, original)) = namespaced.split_once(ID_SEPARATOR) else {
                return Err(invalid("Unknown response id"));
            };
            let member = members
                .iter()
                .find(|m| m.integration.slug == slug)
                .ok_or_else(|| invalid("Unknown response id"))?;
            ex.integration = Some(member.integration.id);
            let mut answer = message.clone();
            answer["id"] =
                serde_json::from_str(original).map_err(|_| invalid("Unknown response id"))?;
            let resp = send(
                state,
                member,
                session.upstream(member.integration.id),
                Method::POST,
                Some(answer.to_string()),
            )
            .await?;
            Ok(resp.status().into_response())
        }
        _ => Err(invalid("Not a JSON-RPC request, notification or response")),
    }
}

fn noun(method: &str) -> &'static str {
    if method == "tools/call" {
        "tool"
    } else {
        "prompt"
    }
}

/// The attached, proxied integrations the caller can use now (with credentials).
async fn members(state: &ProxyState, caller: &Arc<McpCaller>) -> Result<Vec<Member>, ProxyError> {
    Ok(candidates(state, caller)
        .await?
        .into_iter()
        .filter_map(|(m, missing)| missing.is_none().then_some(m))
        .collect())
}

/// Every attached proxied integration, with the connect URL for those the user has not
/// connected yet.
async fn candidates(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
) -> Result<Vec<(Member, Option<String>)>, ProxyError> {
    let mut integrations: Vec<Integration> = crate::gate::attached(state, &caller.app)
        .await?
        .as_ref()
        .clone();
    integrations.retain(|i| i.category == Category::GatewayRemoteMcp);
    let mut out = Vec::with_capacity(integrations.len());
    for integration in integrations {
        match credentials::authorization(state, caller, &integration).await {
            Ok(authorization) => out.push((
                Member {
                    integration,
                    authorization,
                    caller: caller.clone(),
                },
                None,
            )),
            Err(ProxyError::ConnectionRequired { connect_url, .. }) => {
                out.push((
                    Member {
                        integration,
                        authorization: None,
                        caller: caller.clone(),
                    },
                    Some(connect_url),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

async fn initialize(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    message: &Value,
) -> Result<Response, ProxyError> {
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let requested = message["params"]["protocolVersion"]
        .as_str()
        .unwrap_or("2025-06-18")
        .to_owned();
    let candidates = candidates(state, caller).await?;
    let results = join_all(
        candidates
            .iter()
            .filter(|(_, missing)| missing.is_none())
            .map(|(m, _)| async move {
                let resp = send(state, m, None, Method::POST, Some(message.to_string())).await;
                let outcome = match resp {
                    Ok(resp) => {
                        let session = resp
                            .headers()
                            .get("mcp-session-id")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        read_answer(resp, message.get("id"))
                            .await
                            .map(|v| (session, v))
                    }
                    Err(e) => Err(e.to_string()),
                };
                (m, outcome)
            }),
    )
    .await;
    let mut upstreams = Vec::new();
    let mut caps = serde_json::Map::new();
    let mut notes = Vec::new();
    for (member, outcome) in results {
        let slug = &member.integration.slug;
        match outcome {
            Ok((session, answer)) if answer.get("result").is_some() => {
                let r = &answer["result"];
                for cap in ["tools", "prompts", "resources", "logging"] {
                    if r["capabilities"].get(cap).is_some() {
                        caps.insert(
                            cap.to_owned(),
                            if cap == "logging" {
                                json!({})
                            } else {
                                json!({"listChanged": true})
                            },
                        );
                    }
                }
                upstreams.push(UpstreamSession {
                    integration: member.integration.id,
                    session,
                    protocol: r["protocolVersion"].as_str().map(str::to_owned),
                });
                notes.push(format!("{slug}: {}", member.integration.name));
            }
            Ok((_, answer)) => {
                tracing::warn!(integration = %member.integration.id, error = %answer["error"], "upstream refused initialize");
                notes.push(format!(
                    "{slug}: unavailable ({})",
                    answer["error"]["message"].as_str().unwrap_or("error")
                ));
            }
            Err(e) => {
                tracing::warn!(integration = %member.integration.id, error = %e, "upstream initialize failed");
                notes.push(format!("{slug}: unavailable"));
            }
        }
    }
    for (member, missing) in &candidates {
        if let Some(url) = missing {
            notes.push(format!(
                "{}: not connected; connect at {url}",
                member.integration.slug
            ));
        }
    }
    let session = AggregatedSession {
        app: caller.app.id,
        upstreams,
    };
    let sealed = session.seal(&state.auth.store, caller.app.org_id, caller.user);
    let body = json!({"jsonrpc": "2.0", "id": id, "result": {
        "protocolVersion": requested,
        "capabilities": Value::Object(caps),
        "serverInfo": {"name": "keygate", "title": caller.app.name, "version": env!("CARGO_PKG_VERSION")},
        "instructions": format!(
            "Tools, prompts and resources of several integrations, named {{integration}}{SEPARATOR}{{name}}. Integrations: {}.",
            notes.join("; ")
        ),
    }});
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert(
        "mcp-session-id",
        HeaderValue::from_str(&sealed).expect("base64url is a valid header"),
    );
    Ok(resp)
}

/// Sends one message to an upstream with its session and credential; an OAuth token the
/// upstream refuses is refreshed and the message sent once more.
async fn send(
    state: &ProxyState,
    member: &Member,
    upstream: Option<&UpstreamSession>,
    method: Method,
    body: Option<String>,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
    let sent = member.authorization.as_ref();
    if member.integration.auth_mode != AuthMode::Oauth {
        return send_once(state, member, sent, upstream, method, body).await;
    }
    let resp = send_once(state, member, sent, upstream, method.clone(), body.clone()).await?;
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    match credentials::after_rejection(state, &member.caller, &member.integration, sent).await? {
        Some(fresh) => send_once(state, member, Some(&fresh), upstream, method, body).await,
        None => Ok(resp),
    }
}

/// Sends one message to an upstream, with its session and credential.
async fn send_once(
    state: &ProxyState,
    member: &Member,
    authorization: Option<&HeaderValue>,
    upstream: Option<&UpstreamSession>,
    method: Method,
    body: Option<String>,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
    let url = url::Url::parse(&member.integration.url)
        .map_err(|_| ProxyError::Upstream("invalid integration URL".into()))?;
    state.upstream.check(&url)?;
    let mut req = http::Request::builder()
        .method(method)
        .uri(url.as_str())
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .map_err(|e| ProxyError::Internal(e.to_string()))?;
    let h = req.headers_mut();
    if let Some(auth) = authorization {
        h.insert(header::AUTHORIZATION, auth.clone());
    }
    if let Some(up) = upstream {
        if let Some(s) = up
            .session
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            h.insert("mcp-session-id", s);
        }
        if let Some(p) = up
            .protocol
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        {
            h.insert("mcp-protocol-version", p);
        }
    }
    if let Ok(traceparent) = TRACEPARENT.try_with(HeaderValue::clone) {
        h.insert("traceparent", traceparent);
    }
    traced::send_upstream(state, ROUTE_AGGREGATED, req).await
}

/// A request to one upstream, answered as a JSON value (from JSON or from its SSE stream).
async fn rpc(
    state: &ProxyState,
    member: &Member,
    upstream: Option<&UpstreamSession>,
    message: &Value,
) -> Option<Value> {
    let resp = send(
        state,
        member,
        upstream,
        Method::POST,
        Some(message.to_string()),
    )
    .await
    .ok()?;
    read_answer(resp, message.get("id")).await.ok()
}

/// The JSON-RPC answer with `id` in a JSON body or an SSE stream.
async fn read_answer(
    resp: http::Response<hyper::body::Incoming>,
    id: Option<&Value>,
) -> Result<Value, String> {
    let status = resp.status();
    let is_sse = is_event_stream(resp.headers());
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    let mut body = resp.into_body();
    if !is_sse {
        let bytes = Limited::new(body, MAX_REQUEST_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        return serde_json::from_slice(&bytes).map_err(|e| e.to_string());
    }
    let mut buf = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            buf.push_str(&String::from_utf8_lossy(d).replace("\r\n", "\n"));
        }
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data = event_data(&event);
            if let Ok(v) = serde_json::from_str::<Value>(&data)
                && v.get("method").is_none()
                && v.get("id") == id
            {
                return Ok(v);
            }
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Err("answer too large".into());
        }
    }
    Err("the stream ended without an answer".into())
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

/// Fetches a list from every upstream (following cursors) and namespaces its names.
async fn fan_out_list(
    state: &ProxyState,
    members: &[Member],
    session: &AggregatedSession,
    method: &str,
) -> Vec<Value> {
    let key = list_key(method);
    let per_member = join_all(members.iter().map(|m| async move {
        let upstream = session.upstream(m.integration.id)?;
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0..20 {
            let mut params = json!({});
            if let Some(c) = &cursor {
                params["cursor"] = Value::from(c.clone());
            }
            let msg = json!({"jsonrpc": "2.0", "id": format!("kg-list-{page}"), "method": method, "params": params});
            let Some(answer) = rpc(state, m, Some(upstream), &msg).await else {
                tracing::warn!(integration = %m.integration.id, method, "upstream list failed");
                break;
            };
            let result = &answer["result"];
            items.extend(result[key].as_array().cloned().unwrap_or_default());
            cursor = result["nextCursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        Some((m.integration.slug.clone(), items))
    }))
    .await;
    let mut out = Vec::new();
    for (slug, items) in per_member.into_iter().flatten() {
        for mut item in items {
            if matches!(key, "tools" | "prompts")
                && let Some(name) = item["name"].as_str()
            {
                item["name"] = Value::from(format!("{slug}{SEPARATOR}{name}"));
            }
            out.push(item);
        }
    }
    out
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

/// Streams a routed call's answer back, namespacing server-to-client requests.
async fn relay_call(
    state: &ProxyState,
    member: &Member,
    upstream: Option<&UpstreamSession>,
    message: Value,
) -> Result<Response, ProxyError> {
    let resp = send(
        state,
        member,
        upstream,
        Method::POST,
        Some(message.to_string()),
    )
    .await?;
    if resp.status() == StatusCode::NOT_FOUND && upstream.and_then(|u| u.session.as_ref()).is_some()
    {
        // The upstream forgot its session: the client must initialize again.
        return Err(unknown_session());
    }
    let (parts, body) = resp.into_parts();
    let is_sse = is_event_stream(&parts.headers);
    let slug: Arc<str> = member.integration.slug.as_str().into();
    let mut out = if is_sse {
        let mut r = Response::new(Body::new(KeepAlive::new(MapEvents::new(
            body,
            namespace_request(slug),
        ))));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        let mut r = Response::new(Body::new(body));
        if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
            r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
        }
        r
    };
    *out.status_mut() = parts.status;
    Ok(out)
}

/// `GET`: the upstreams' server-to-client streams, merged.
async fn merged_stream(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    session: &AggregatedSession,
) -> Result<Response, ProxyError> {
    let members = members(state, caller).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let mut opened = 0;
    for m in &members {
        let Some(up) = session.upstream(m.integration.id) else {
            continue;
        };
        let Ok(resp) = send(state, m, Some(up), Method::GET, None).await else {
            continue;
        };
        if !resp.status().is_success() {
            continue;
        }
        opened += 1;
        let tx = tx.clone();
        let map = namespace_request(m.integration.slug.as_str().into());
        let mut body = MapEvents::new(resp.into_body(), map);
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data()
                    && tx.send(Ok(data)).await.is_err()
                {
                    break; // the client went away
                }
            }
        });
    }
    if opened == 0 {
        return Ok(StatusCode::METHOD_NOT_ALLOWED.into_response());
    }
    drop(tx);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::new(KeepAlive::new(Body::from_stream(stream))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

fn result(id: Value, result: Value) -> Response {
    let mut resp =
        axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response();
    resp.extensions_mut().insert(LocalAnswer);
    resp
}

fn rpc_error(id: Value, code: i64, message: &str) -> Response {
    let mut resp = axum::Json(
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
    )
    .into_response();
    resp.extensions_mut().insert(LocalAnswer);
    resp
}

fn invalid(message: &str) -> ProxyError {
    ProxyError::BadRequest {
        status: StatusCode::BAD_REQUEST,
        code: -32600,
        message: message.to_owned(),
    }
}

fn parse_error() -> ProxyError {
    ProxyError::BadRequest {
        status: StatusCode::BAD_REQUEST,
        code: -32700,
        message: "Parse error".into(),
    }
}

fn unknown_session() -> ProxyError {
    ProxyError::BadRequest {
        status: StatusCode::NOT_FOUND,
        code: -32001,
        message: "Session not found; initialize again".into(),
    }
}
