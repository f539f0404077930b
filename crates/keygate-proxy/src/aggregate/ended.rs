//! Aggregated sessions their client ended (`DELETE`). A sealed session opens on any replica by
//! itself, so ending one is recorded in the store ([`end`]: a row kept until the session would
//! have expired anyway, and a change of the store's ended-sessions generation that every
//! replica hears). Whether a session was ended ([`live`]) is read once per session and
//! generation, then answered from memory: a warm request reads and writes nothing.

use keygate_core::OrgId;
use keygate_store::GenCache;

use super::session::AggregatedSession;
use crate::ProxyState;
use crate::error::ProxyError;
use crate::gate::McpCaller;

/// Sessions whose verdict is remembered at once; a full cache starts over (see `GenCache`).
const CAPACITY: usize = 100_000;

/// Whether each session was ended, per (organization, session id), for one generation of
/// `Store::ended_sessions_generation`.
pub struct Ended {
    verdicts: GenCache<(OrgId, String), bool>,
}

impl Default for Ended {
    fn default() -> Self {
        Self {
            verdicts: GenCache::new(CAPACITY),
        }
    }
}

/// The session `header` names, if it opens for `caller` (sealed for its organization, user and
/// application, not expired) and its client has not ended it.
pub async fn live(
    state: &ProxyState,
    caller: &McpCaller,
    header: &str,
) -> Result<Option<AggregatedSession>, ProxyError> {
    let org = caller.app.org_id;
    let opened = AggregatedSession::open(&state.auth.store, org, caller.user, header)
        .filter(|s| s.app == caller.app.id);
    let Some(session) = opened else {
        return Ok(None);
    };
    if was_ended(state, org, &session.id).await? {
        return Ok(None);
    }
    Ok(Some(session))
}

/// Records that the client ended `session`: from now on [`live`] refuses it on every replica.
pub async fn end(
    state: &ProxyState,
    org: OrgId,
    session: &AggregatedSession,
) -> Result<(), ProxyError> {
    let store = &state.auth.store;
    store
        .end_mcp_session(org, &session.id, session.expires_at())
        .await?;
    let generation = store.ended_sessions_generation();
    let verdicts = &state.cache.ended.verdicts;
    verdicts.put((org, session.id.clone()), generation, true);
    Ok(())
}

async fn was_ended(state: &ProxyState, org: OrgId, id: &str) -> Result<bool, ProxyError> {
    let store = &state.auth.store;
    // Read before the query: a session ended meanwhile moves it, and the verdict is not kept.
    let generation = store.ended_sessions_generation();
    let key = (org, id.to_owned());
    let verdicts = &state.cache.ended.verdicts;
    if let Some(ended) = verdicts.get(&key, generation) {
        return Ok(ended);
    }
    let ended = store.mcp_session_ended(org, id).await?;
    verdicts.put(key, generation, ended);
    Ok(ended)
}
