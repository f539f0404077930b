//! Routed requests of the aggregated endpoint while their upstream answers them, so that a
//! client's cancellation reaches that upstream in the upstream's own era: a 2025 upstream gets
//! `notifications/cancelled` for the request's id, a 2026-07-28 upstream sees its HTTP request
//! dropped (that era's cancellation).
//!
//! [`InFlight`] maps a 2025 client's request — (user, its session, the request's id) — to the
//! integration answering it and that call's stop signal. It is per replica: a cancellation that
//! lands on another replica than its request finds nothing here (see `notify::cancel`).
//! [`Call`] is one routed call; its entry is removed when the answer ends or the client goes
//! away. A 2026 client cancels by dropping its HTTP request: when it goes away before the
//! answer, [`Call`] sends a 2025 upstream `notifications/cancelled` itself.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use keygate_core::wire::jsonrpc::{MessageOutline, RequestId};
use keygate_core::{IntegrationId, UserId};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::session::{AggregatedSession, UpstreamSession};
use super::upstream::{self, Link, Member};
use crate::ProxyState;

/// A 2025 client of the aggregated endpoint: its user and session.
pub struct Client<'a> {
    user: UserId,
    session: &'a Arc<AggregatedSession>,
    /// The sealed `Mcp-Session-Id` it sent.
    header: &'a str,
}

impl<'a> Client<'a> {
    pub fn new(user: UserId, session: &'a Arc<AggregatedSession>, header: &'a str) -> Self {
        Self {
            user,
            session,
            header,
        }
    }

    /// The client's `Mcp-Session-Id`.
    pub fn session(&self) -> &'a str {
        self.header
    }
}

/// A request of a client: its id as JSON text (`7` and `"7"` are different ids). The session is
/// told apart by its own id, 32 characters, rather than by its sealed form, hundreds of
/// characters that every call would copy and hash twice.
#[derive(Clone)]
struct Key {
    user: UserId,
    session: Arc<AggregatedSession>,
    id: String,
}

impl Key {
    fn new(client: &Client<'_>, id: &Value) -> Self {
        Self {
            user: client.user,
            session: client.session.clone(),
            id: id.to_string(),
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.user == other.user && self.session.id == other.session.id && self.id == other.id
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.user.hash(state);
        self.session.id.hash(state);
        self.id.hash(state);
    }
}

struct Entry {
    integration: IntegrationId,
    /// Tells apart a later call that reused the id.
    serial: u64,
    stop: Arc<Notify>,
}

/// The routed calls this replica is relaying, by client and request id.
#[derive(Default)]
pub struct InFlight {
    calls: DashMap<Key, Entry, foldhash::fast::RandomState>,
    serial: AtomicU64,
}

/// Who answers a request that a client cancels.
pub struct Owner {
    pub integration: IntegrationId,
    stop: Arc<Notify>,
}

impl Owner {
    /// Ends the relay of the call: its upstream request is dropped.
    pub fn stop(&self) {
        self.stop.notify_one();
    }
}

impl InFlight {
    /// The call answering `client`'s request `id`, if this replica relays it.
    pub fn owner(&self, client: &Client<'_>, id: &Value) -> Option<Owner> {
        let entry = self.calls.get(&Key::new(client, id))?;
        Some(Owner {
            integration: entry.integration,
            stop: entry.stop.clone(),
        })
    }
}

/// What a 2025 upstream is told when a 2026 client goes away before its answer.
struct Abandon {
    member: Member,
    session: UpstreamSession,
}

/// One routed call while it is relayed; dropping it ends it (see the module doc).
pub struct Call {
    state: ProxyState,
    key: Option<Key>,
    serial: u64,
    id: Value,
    stop: Arc<Notify>,
    abandon: Option<Abandon>,
    answered: bool,
}

impl Call {
    /// A call of request `id` to `integration`, registered when a 2025 `client` made it.
    pub fn begin(
        state: &ProxyState,
        client: Option<&Client<'_>>,
        id: &RequestId,
        integration: IntegrationId,
    ) -> Self {
        let id = id.to_value();
        let calls = &state.cache.calls;
        let serial = calls.serial.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(Notify::new());
        let key = client.map(|c| Key::new(c, &id));
        if let Some(key) = &key {
            let entry = Entry {
                integration,
                serial,
                stop: stop.clone(),
            };
            calls.calls.insert(key.clone(), entry);
        }
        Self {
            state: state.clone(),
            key,
            serial,
            id,
            stop,
            abandon: None,
            answered: false,
        }
    }

    /// From now on, going away before the answer sends `member`'s 2025 `session`
    /// `notifications/cancelled` (for a 2026 client, whose only way to cancel is to go away).
    pub fn cancel_on_drop(&mut self, member: &Member, session: UpstreamSession) {
        self.abandon = Some(Abandon {
            member: member.clone(),
            session,
        });
    }

    /// The answer has gone by: nothing is left to cancel.
    pub fn answered(&mut self) {
        self.answered = true;
    }

    /// Whether `message` is the answer to this call.
    pub fn is_answer(&self, message: &MessageOutline) -> bool {
        !message.method && message.id.as_ref() == Some(&self.id)
    }

    /// Resolves when the client cancels the call.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let stop = self.stop.clone();
        async move { stop.notified().await }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            let calls = &self.state.cache.calls.calls;
            calls.remove_if(key, |_, e| e.serial == self.serial);
        }
        let Some(abandon) = self.abandon.take().filter(|_| !self.answered) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (state, id) = (self.state.clone(), self.id.clone());
        runtime.spawn(async move {
            let message = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": id, "reason": "the client went away"}});
            let link = Link::Legacy(abandon.session);
            let member = &abandon.member;
            let sent = upstream::within(&state, member, "notifications/cancelled", async {
                upstream::send_message(&state, member, &link, &message, None).await
            })
            .await;
            if let Some(Err(error)) = sent {
                let i = &member.integration;
                tracing::warn!(integration = %i.id, slug = %i.slug, error = %error.chain(), "could not cancel an abandoned call");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use keygate_core::ApplicationId;

    use super::*;

    fn session() -> Arc<AggregatedSession> {
        Arc::new(AggregatedSession::new(
            ApplicationId::new(),
            Vec::new(),
            None,
            None,
        ))
    }

    #[test]
    fn a_call_is_found_only_by_its_user_session_and_id() {
        let calls = InFlight::default();
        let (user, mine, other) = (UserId::new(), session(), session());
        let entry = Entry {
            integration: IntegrationId::new(),
            serial: 0,
            stop: Arc::default(),
        };
        let key = Key::new(&Client::new(user, &mine, "sealed"), &json!(7));
        calls.calls.insert(key, entry);

        let owner = |user, session, id| calls.owner(&Client::new(user, session, "sealed"), &id);
        assert!(owner(user, &mine, json!(7)).is_some());
        assert!(owner(user, &other, json!(7)).is_none(), "another session");
        assert!(
            owner(UserId::new(), &mine, json!(7)).is_none(),
            "another user"
        );
        assert!(owner(user, &mine, json!("7")).is_none(), "another id");
    }
}
