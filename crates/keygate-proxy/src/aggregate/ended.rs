//! Aggregated sessions their client ended (`DELETE`). A sealed session opens on any replica by
//! itself, so ending one is recorded in the store ([`end`]: a row kept until the session would
//! have expired anyway, and a change of the store's ended-sessions generation that every
//! replica hears). Whether a session was ended ([`live`]) is read once per session and
//! generation, then answered from memory: a warm request reads and writes nothing.
//!
//! Opening a sealed session (base64, AES-GCM, JSON: 300–700 characters) is done once per
//! replica too: the opened session is kept, found by a fast hash of the sealed id and compared
//! in full, for the organization and user it was opened for. Its expiry is checked on every
//! use, and whether it was ended once per ended-sessions generation.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use keygate_core::{OrgId, Timestamp, UserId};
use keygate_store::GenCache;

use super::session::AggregatedSession;
use crate::ProxyState;
use crate::error::ProxyError;
use crate::stage::McpCaller;

/// Sessions whose verdict is remembered at once; a full cache starts over (see `GenCache`).
const CAPACITY: usize = 100_000;

/// Whether each session was ended, per (organization, session id), for one generation of
/// `Store::ended_sessions_generation`.
pub struct Ended {
    verdicts: GenCache<(OrgId, String), bool>,
    /// Opened sessions, by a fast hash of their sealed id (foldhash hashes that `u64` again at
    /// almost no cost).
    opened: DashMap<u64, Arc<Opened>, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
}

impl Default for Ended {
    fn default() -> Self {
        Self {
            verdicts: GenCache::new(CAPACITY),
            opened: DashMap::default(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// A session this replica opened.
struct Opened {
    /// The sealed id it was opened from, and for whom.
    sealed: Box<str>,
    org: OrgId,
    user: UserId,
    session: Arc<AggregatedSession>,
    /// The ended-sessions generation at which it was last found not ended (`u64::MAX`: never).
    live_at: AtomicU64,
}

/// The session `header` names, if it opens for `caller` (sealed for its organization, user and
/// application, not expired) and its client has not ended it.
pub async fn live(
    state: &ProxyState,
    caller: &McpCaller,
    header: &str,
) -> Result<Option<Arc<AggregatedSession>>, ProxyError> {
    let org = caller.app.org_id;
    let Some(opened) = open(state, org, caller.user, header) else {
        return Ok(None);
    };
    let session = &opened.session;
    if session.app != caller.app.id || !session.is_live_at(Timestamp::now()) {
        return Ok(None);
    }
    // Read before the check: a session ended meanwhile moves it.
    let generation = state.auth.store.ended_sessions_generation();
    if opened.live_at.load(Ordering::Acquire) != generation {
        if was_ended(state, org, &session.id).await? {
            return Ok(None);
        }
        opened.live_at.store(generation, Ordering::Release);
    }
    Ok(Some(session.clone()))
}

/// The session sealed in `header` for `org` and `user`: opened before on this replica, or now.
fn open(state: &ProxyState, org: OrgId, user: UserId, header: &str) -> Option<Arc<Opened>> {
    let header = header.trim();
    let cache = &state.cache.ended;
    let key = cache.hasher.hash_one(header);
    if let Some(found) = cache.opened.get(&key)
        && *found.sealed == *header
        && found.org == org
        && found.user == user
    {
        return Some(found.clone());
    }
    let session = AggregatedSession::open(&state.auth.store, org, user, header)?;
    let opened = Arc::new(Opened {
        sealed: header.into(),
        org,
        user,
        session: Arc::new(session),
        live_at: AtomicU64::new(u64::MAX),
    });
    if cache.opened.len() >= CAPACITY {
        cache.opened.clear();
    }
    cache.opened.insert(key, opened.clone());
    Some(opened)
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
