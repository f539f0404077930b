//! Routed requests of the aggregated endpoint while their upstream answers them, so that a
//! client's cancellation reaches that upstream in the upstream's own era: a 2025 upstream gets
//! `notifications/cancelled` for the request's id, a 2026-07-28 upstream sees its HTTP request
//! dropped (that era's cancellation).
//!
//! [`InFlight`] maps a 2025 client's request — (user, its `Mcp-Session-Id`, the request's id)
//! — to the integration answering it and that call's stop signal. It is per replica: a
//! cancellation that lands on another replica than its request finds nothing here (see
//! `notify::cancel`). [`Call`] is one routed call; its entry is removed when the answer ends
//! or the client goes away. A 2026 client cancels by dropping its HTTP request: when it goes
//! away before the answer, [`Call`] sends a 2025 upstream `notifications/cancelled` itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use keygate_core::wire::jsonrpc::RequestId;
use keygate_core::{IntegrationId, UserId};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::session::UpstreamSession;
use super::upstream::{self, Link, Member};
use crate::ProxyState;

/// A 2025 client of the aggregated endpoint: its user and sealed session id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    user: UserId,
    session: Arc<str>,
}

impl Client {
    pub fn new(user: UserId, session: &str) -> Self {
        Self {
            user,
            session: session.into(),
        }
    }

    /// The client's `Mcp-Session-Id`.
    pub fn session(&self) -> &str {
        &self.session
    }
}

/// A request of a client: its id as JSON text (`7` and `"7"` are different ids).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    client: Client,
    id: String,
}

impl Key {
    fn new(client: &Client, id: &Value) -> Self {
        Self {
            client: client.clone(),
            id: id.to_string(),
        }
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
    /// foldhash: the key holds the client's session id, hundreds of characters hashed per call.
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
    pub fn owner(&self, client: &Client, id: &Value) -> Option<Owner> {
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
        client: Option<&Client>,
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
    pub fn is_answer(&self, message: &Value) -> bool {
        message.get("method").is_none() && message.get("id") == Some(&self.id)
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
