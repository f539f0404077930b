//! The upstream sessions the gateway holds itself. A 2026-07-28 client has no session, so for
//! a 2025 upstream the gateway runs the `initialize` + `notifications/initialized` handshake on
//! the user's behalf and keeps that session per (user, integration), for one store generation,
//! in a bounded map. Requests racing on one key share one handshake; a session the upstream
//! forgets (`404`) is dropped and the next request opens a new one.

use std::sync::Arc;

use keygate_core::{IntegrationId, UserId};
use keygate_store::GenCache;
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;

use super::era::{self, META_CAPABILITIES, META_CLIENT_INFO};
use super::session::UpstreamSession;
use super::upstream::{self, Link, Member};
use crate::ProxyState;
use crate::error::ProxyError;

/// Upstream sessions held at once; a full map starts over (see `GenCache`).
const CAPACITY: usize = 10_000;

/// A 2025 upstream session opened by the gateway.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub session: UpstreamSession,
    /// The upstream's capabilities from its `initialize` answer.
    pub capabilities: Value,
}

type Cell = Arc<OnceCell<Handshake>>;

/// The sessions, by (user, integration).
pub struct Handshakes {
    cells: GenCache<(UserId, IntegrationId), Cell>,
}

impl Default for Handshakes {
    fn default() -> Self {
        Self {
            cells: GenCache::new(CAPACITY),
        }
    }
}

fn key(member: &Member) -> (UserId, IntegrationId) {
    (member.caller.user, member.integration.id)
}

/// The session the gateway holds with `member`'s upstream for this user, opened now if there
/// is none; `meta` (the 2026 client's) supplies the capabilities and `clientInfo` declared.
pub async fn session(
    state: &ProxyState,
    member: &Member,
    meta: &Map<String, Value>,
) -> Result<Handshake, ProxyError> {
    let generation = state.auth.store.generation();
    let cell =
        state
            .cache
            .handshakes
            .cells
            .get_or_insert_with(key(member), generation, Cell::default);
    cell.get_or_try_init(|| handshake(state, member, meta))
        .await
        .cloned()
}

/// Drops `stale`, the session the upstream no longer knows, unless it was replaced already.
pub fn forget(state: &ProxyState, member: &Member, stale: &UpstreamSession) {
    state
        .cache
        .handshakes
        .cells
        .remove_if(&key(member), |cell| {
            cell.get().is_some_and(|h| h.session == *stale)
        });
}

async fn handshake(
    state: &ProxyState,
    member: &Member,
    meta: &Map<String, Value>,
) -> Result<Handshake, ProxyError> {
    let info = meta
        .get(META_CLIENT_INFO)
        .cloned()
        .unwrap_or_else(era::gateway_info);
    let message = json!({"jsonrpc": "2.0", "id": "kg-initialize", "method": "initialize",
        "params": {"protocolVersion": era::LATEST_LEGACY,
            "capabilities": era::bridged(meta.get(META_CAPABILITIES)), "clientInfo": info}});
    let (session, answer) = upstream::initialize(state, member, &message).await?;
    let Some(result) = answer.get("result") else {
        return Err(refused_initialize(&answer));
    };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let via = Link::Legacy(session.clone());
    upstream::send_message(state, member, &via, &initialized, None).await?;
    tracing::debug!(integration = %member.integration.id, "opened an upstream session for a 2026 client");
    Ok(Handshake {
        capabilities: result["capabilities"].clone(),
        session,
    })
}

/// An upstream's error answer to `initialize`, with the message it gave.
pub(super) fn refused_initialize(answer: &Value) -> ProxyError {
    ProxyError::upstream_said(format!(
        "the upstream refused initialize: {}",
        answer["error"]["message"].as_str().unwrap_or("no answer")
    ))
}
