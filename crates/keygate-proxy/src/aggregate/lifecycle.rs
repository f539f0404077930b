//! What the aggregated server says about itself: a 2025 client's `initialize`, which opens the
//! sealed session, and a 2026 client's `server/discover`. Both ask every upstream the user can
//! use, in parallel and each in its own era, and merge what they can do. Each upstream's whole
//! part (era probe, `initialize` or the gateway's own handshake) runs within the fan-out
//! deadline; one that misses it is left out and named "unavailable" in the instructions.

use std::sync::Arc;

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::join_all;
use keygate_core::wire::jsonrpc::{self, RequestId};
use keygate_trace::exchange::MCP_SESSION_ID;
use serde_json::{Map, Value, json};

use super::ended;
use super::era::{self, Era};
use super::handshakes;
use super::session::{AggregatedSession, UpstreamSession};
use super::sse_upstream;
use super::upstream::{self, Member, candidates, within};
use super::{SEPARATOR, invalid, result};
use crate::ProxyState;
use crate::error::ProxyError;
use crate::stage::McpCaller;
use crate::stage::credential;

/// An upstream that took part: its session (2025 client) and its capabilities.
struct Joined {
    session: Option<UpstreamSession>,
    capabilities: Value,
}

/// What the upstreams add up to.
#[derive(Default)]
struct Summary {
    capabilities: Map<String, Value>,
    /// `{slug}: {name}` per integration, or why it is not available.
    notes: Vec<String>,
    sessions: Vec<UpstreamSession>,
}

/// `initialize` (2025): each upstream joins in its era — a 2025 one gets the client's own
/// `initialize`, a 2026 one is only discovered — and the answer's `Mcp-Session-Id` seals them
/// with the client's capabilities.
pub async fn initialize(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    message: &Value,
) -> Result<Response, ProxyError> {
    let Some(id) = RequestId::of(message) else {
        return Err(invalid("initialize is a request: it has an id"));
    };
    let params = &message["params"];
    let version = era::handshake_version(params["protocolVersion"].as_str());
    // Upstreams are offered the version the client gets (never a stateless one).
    let mut offer = message.clone();
    offer["params"]["protocolVersion"] = Value::from(version);
    let candidates = candidates(state, caller).await?;
    let summary = summarize(state, "initialize", &candidates, false, |m| {
        join_initialize(state, m, &offer)
    })
    .await;
    let session = AggregatedSession::new(
        caller.app.id,
        summary.sessions,
        params.get("capabilities").cloned(),
        params.get("clientInfo").cloned(),
    );
    let sealed = session.seal(&state.auth.store, caller.app.org_id, caller.user);
    let body = jsonrpc::result(
        &id,
        json!({
            "protocolVersion": version,
            "capabilities": Value::Object(summary.capabilities),
            "serverInfo": server_info(caller),
            "instructions": instructions(&summary.notes),
        }),
    );
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert(
        MCP_SESSION_ID,
        HeaderValue::from_str(&sealed).expect("base64url is a valid header"),
    );
    Ok(resp)
}

/// `DELETE` (2025): ends the session — recorded first, so that no replica opens it again
/// whatever the upstreams do — then closes its 2025 upstream sessions.
pub async fn close(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    session: &AggregatedSession,
) -> Result<Response, ProxyError> {
    ended::end(state, caller.app.org_id, session).await?;
    let members = upstream::members(state, caller).await?;
    join_all(members.iter().filter_map(|m| {
        let up = session.legacy(m.integration.id)?.clone();
        let delete = async move { upstream::send(state, m, Some(&up), Method::DELETE, None).await };
        Some(within(state, m, "DELETE", delete))
    }))
    .await;
    Ok(StatusCode::OK.into_response())
}

/// `server/discover` (2026): the versions the endpoint speaks and what the user's upstreams can
/// do; a 2025 upstream is asked through the session the gateway holds for this user.
pub async fn discover(
    state: &ProxyState,
    caller: &Arc<McpCaller>,
    meta: &Map<String, Value>,
    id: RequestId,
) -> Result<Response, ProxyError> {
    let candidates = candidates(state, caller).await?;
    let summary = summarize(state, "server/discover", &candidates, true, |m| {
        join_discover(state, m, meta)
    })
    .await;
    let mut body = json!({
        "supportedVersions": era::SUPPORTED,
        "capabilities": Value::Object(summary.capabilities),
        "instructions": instructions(&summary.notes),
        "_meta": {era::META_SERVER_INFO: server_info(caller)},
    });
    era::cacheable(&mut body);
    Ok(result(&id, body))
}

async fn join_initialize(
    state: &ProxyState,
    member: &Member,
    message: &Value,
) -> Result<Joined, String> {
    match era::era(state, member).await {
        Era::Modern(capabilities) => {
            return Ok(Joined {
                session: Some(UpstreamSession::modern(member.integration.id)),
                capabilities: (*capabilities).clone(),
            });
        }
        // The gateway holds that session; the client's session does not name the upstream.
        Era::Sse => {
            let params = &message["params"];
            let meta = era::meta(params.get("capabilities"), params.get("clientInfo"));
            let held = sse_upstream::session(state, member, &meta).await;
            return Ok(Joined {
                session: None,
                capabilities: held
                    .map_err(|e| unavailable(member, &e))?
                    .capabilities
                    .clone(),
            });
        }
        Era::Legacy => {}
    }
    let (session, answer) = upstream::initialize(state, member, message)
        .await
        .map_err(|e| unavailable(member, &e))?;
    match answer.get("result") {
        Some(r) => Ok(Joined {
            session: Some(session),
            capabilities: r["capabilities"].clone(),
        }),
        None => {
            let i = &member.integration;
            tracing::warn!(integration = %i.id, slug = %i.slug, name = %i.name, error = %answer["error"], "upstream refused initialize");
            let why = answer["error"]["message"].as_str().unwrap_or("error");
            Err(format!("unavailable ({why})"))
        }
    }
}

/// The note for an upstream that could not be reached; the detail goes to the log only.
fn unavailable(member: &Member, error: &ProxyError) -> String {
    let i = &member.integration;
    tracing::warn!(integration = %i.id, slug = %i.slug, name = %i.name, error = %error.chain(), retryable = error.retryable(), "upstream left out of the aggregated server");
    "unavailable".to_owned()
}

async fn join_discover(
    state: &ProxyState,
    member: &Member,
    meta: &Map<String, Value>,
) -> Result<Joined, String> {
    let capabilities = match era::era(state, member).await {
        Era::Modern(capabilities) => (*capabilities).clone(),
        Era::Legacy => {
            let h = handshakes::session(state, member, meta).await;
            h.map_err(|e| unavailable(member, &e))?.capabilities
        }
        Era::Sse => {
            let s = sse_upstream::session(state, member, meta).await;
            s.map_err(|e| unavailable(member, &e))?.capabilities.clone()
        }
    };
    Ok(Joined {
        session: None,
        capabilities,
    })
}

/// Joins every connected candidate with `join` (in parallel, each within the fan-out deadline)
/// and adds up the outcome; one that fails or misses the deadline is left out and named in the
/// notes, as is one the user has not connected — with a connect link, minted here because the
/// notes are the one place an aggregated client learns of it (its tools are not listed).
async fn summarize<'a, Fut>(
    state: &ProxyState,
    what: &str,
    candidates: &'a [(Member, bool)],
    modern: bool,
    join: impl Fn(&'a Member) -> Fut,
) -> Summary
where
    Fut: std::future::Future<Output = Result<Joined, String>>,
{
    let connected = candidates.iter().filter(|(_, connected)| *connected);
    let join = &join;
    let outcomes = join_all(connected.map(|(m, _)| async move {
        let joined = within(state, m, what, join(m)).await;
        (
            m,
            joined.unwrap_or_else(|| Err("unavailable (no answer in time)".into())),
        )
    }))
    .await;
    let mut summary = Summary::default();
    for (member, outcome) in outcomes {
        summary.add(member, outcome, modern);
    }
    for (member, _) in candidates.iter().filter(|(_, connected)| !*connected) {
        let slug = &member.integration.slug;
        let note = match credential::connect_link(state, &member.caller).await {
            Ok(url) => format!("{slug}: not connected; connect at {url}"),
            Err(e) => {
                tracing::warn!(integration = %member.integration.id, error = %e.chain(), "no connect link for the notes");
                format!("{slug}: not connected")
            }
        };
        summary.notes.push(note);
    }
    summary
}

impl Summary {
    fn add(&mut self, member: &Member, outcome: Result<Joined, String>, modern: bool) {
        let slug = &member.integration.slug;
        let joined = match outcome {
            Ok(joined) => joined,
            Err(why) => {
                self.notes.push(format!("{slug}: {why}"));
                return;
            }
        };
        merge_capabilities(&mut self.capabilities, &joined.capabilities, modern);
        self.sessions.extend(joined.session);
        self.notes
            .push(format!("{slug}: {}", member.integration.name));
    }
}

/// Adds an upstream's capabilities to the gateway's. 2025 clients hear of list changes
/// (coalesced) and resource updates on the merged GET stream, so `listChanged` and `subscribe`
/// are declared when an upstream declares them; 2026 clients would need
/// `subscriptions/listen`, which the gateway does not offer (nor logging, removed).
fn merge_capabilities(ours: &mut Map<String, Value>, theirs: &Value, modern: bool) {
    for cap in ["tools", "prompts", "resources", "logging", "completions"] {
        let Some(their) = theirs.get(cap).filter(|_| !(modern && cap == "logging")) else {
            continue;
        };
        let our = ours.entry(cap).or_insert_with(|| json!({}));
        let flags: &[&str] = match cap {
            _ if modern => &[],
            "resources" => &["listChanged", "subscribe"],
            "tools" | "prompts" => &["listChanged"],
            _ => &[],
        };
        for flag in flags {
            if their[*flag] == true {
                our[*flag] = Value::Bool(true);
            }
        }
    }
}

/// The gateway, titled with the application's name.
fn server_info(caller: &McpCaller) -> Value {
    let mut info = era::gateway_info();
    info["title"] = Value::from(caller.app.name.as_str());
    info
}

fn instructions(notes: &[String]) -> String {
    format!(
        "Tools, prompts and resources of several integrations, named {{integration}}{SEPARATOR}{{name}}. Integrations: {}.",
        notes.join("; ")
    )
}
