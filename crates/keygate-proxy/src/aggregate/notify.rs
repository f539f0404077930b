//! Notifications across the aggregated endpoint, both ways.
//!
//! - From a 2025 client ([`from_client`]): `notifications/cancelled` goes to the upstream that
//!   answers the request it names ([`cancel`], through `inflight::InFlight`), in that upstream's
//!   era; every other notification goes to each 2025 upstream of the client's session.
//! - To a 2025 client, on the merged `GET` stream ([`merged`]): every upstream event passes in
//!   order, except that `notifications/{tools,prompts,resources}/list_changed` are gathered for
//!   [`COALESCE_WINDOW`] from the first one and leave as one notification per list
//!   ([`ListChanges`]): several upstreams changing at once cost the client one re-list.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::future::join_all;
use futures_util::{Stream, StreamExt};
use keygate_core::IntegrationId;
use keygate_core::wire::sse::Event;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::cursor::Cursor;
use super::events::{map_event, map_id, message_of};
use super::inflight::Client;
use super::upstream::{Downstream, Member, exchange, within};
use super::{handshake_era, namespace_request, reaches_client_unchanged, route};
use crate::ProxyState;
use crate::error::ProxyError;

/// How long list changes are gathered into one notification to the client.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(200);

/// The notifications that say a list changed (the client lists again).
const LIST_CHANGED: [&str; 3] = [
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
];

/// A notification from a 2025 client (`client`: its session, to find its calls in flight).
pub async fn from_client(
    state: &ProxyState,
    members: &[Member],
    downstream: &Downstream,
    client: Option<&Client<'_>>,
    message: &Value,
) -> Result<Response, ProxyError> {
    if message["method"] == "notifications/cancelled" {
        cancel(state, members, downstream, client, message).await
    } else {
        broadcast(state, members, downstream, message).await
    }
}

/// `notifications/cancelled`: to the upstream answering the request, if this replica relays
/// it — a 2025 upstream gets the notification, a 2026 one has its request dropped. A request
/// this replica does not know (relayed by another replica, or already answered) is cancelled
/// on each 2025 upstream of the session: the ids there are the client's own, and a receiver
/// ignores an id it does not know.
pub async fn cancel(
    state: &ProxyState,
    members: &[Member],
    downstream: &Downstream,
    client: Option<&Client<'_>>,
    message: &Value,
) -> Result<Response, ProxyError> {
    let id = &message["params"]["requestId"];
    let owner = client.and_then(|c| state.cache.calls.owner(c, id));
    let Some(owner) = owner else {
        tracing::debug!(request = %id, "cancelling a call this replica does not relay: to every upstream of the session");
        return broadcast(state, members, downstream, message).await;
    };
    tracing::debug!(request = %id, integration = %owner.integration, "cancelling a call on its upstream");
    let Some(member) = members
        .iter()
        .find(|m| m.integration.id == owner.integration)
    else {
        return Ok(StatusCode::ACCEPTED.into_response());
    };
    if route::speaks_modern(state, member, downstream).await {
        owner.stop();
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let method = "notifications/cancelled";
    match within(
        state,
        member,
        method,
        exchange(state, member, downstream, message),
    )
    .await
    {
        Some(Err(ProxyError::SessionExpired)) => Err(ProxyError::SessionExpired),
        _ => Ok(StatusCode::ACCEPTED.into_response()),
    }
}

/// A notification to every 2025 upstream of the session.
async fn broadcast(
    state: &ProxyState,
    members: &[Member],
    downstream: &Downstream,
    message: &Value,
) -> Result<Response, ProxyError> {
    let method = message["method"].as_str().unwrap_or("notification");
    let sent = join_all(
        handshake_era(members, downstream)
            .map(|m| within(state, m, method, exchange(state, m, downstream, message))),
    )
    .await;
    if sent
        .iter()
        .any(|r| matches!(r, Some(Err(ProxyError::SessionExpired))))
    {
        return Err(ProxyError::SessionExpired);
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// An event of one upstream's stream: its integration, slug and the event.
pub type Upstream = (IntegrationId, Arc<str>, Event);

/// The `list_changed` notifications held back during a window.
#[derive(Default)]
pub struct ListChanges {
    /// When the held notifications leave (the window started with the first).
    due: Option<Instant>,
    /// The lists that changed, in the order first heard of.
    methods: Vec<String>,
    /// The upstream event ids of the held notifications, which the cursor passes when they
    /// leave.
    positions: Vec<(IntegrationId, Option<String>)>,
}

impl ListChanges {
    /// Holds `event` if it says a list changed (returns whether it did).
    pub fn hold(&mut self, integration: IntegrationId, event: &Event) -> bool {
        let Some(method) = event
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|m| m.get("id").is_none())
            .and_then(|m| m["method"].as_str().map(str::to_owned))
            .filter(|m| LIST_CHANGED.contains(&m.as_str()))
        else {
            return false;
        };
        self.due
            .get_or_insert_with(|| Instant::now() + COALESCE_WINDOW);
        if !self.methods.contains(&method) {
            self.methods.push(method);
        }
        self.positions.push((integration, event.id.clone()));
        true
    }

    /// Whether a notification of `integration` is held: its later events must wait for it.
    pub fn holds(&self, integration: IntegrationId) -> bool {
        self.positions.iter().any(|(i, _)| *i == integration)
    }

    /// The held notifications, one per list, the last carrying the cursor moved past all of
    /// them (a client that resumes before it gets them again, never loses one).
    pub fn release(&mut self, cursor: &mut Cursor) -> Vec<Event> {
        let mut moved = false;
        for (integration, id) in self.positions.drain(..) {
            if let Some(id) = id {
                cursor.advance(integration, &id);
                moved = true;
            }
        }
        self.due = None;
        let mut events: Vec<Event> = self
            .methods
            .drain(..)
            .map(|m| Event::message(json!({"jsonrpc": "2.0", "method": m}).to_string()))
            .collect();
        if let Some(last) = events.last_mut().filter(|_| moved) {
            last.id = Some(cursor.encode());
        }
        events
    }
}

/// The merged `GET` stream: upstream events from `rx` in the order they come, each stamped
/// with the cursor of everything sent so far, list changes coalesced ([`ListChanges`]).
pub fn merged<S>(
    upstreams: S,
    cursor: Cursor,
) -> impl Stream<Item = Result<String, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Upstream> + Send + Unpin + 'static,
{
    let merge = Merge {
        upstreams,
        cursor,
        held: ListChanges::default(),
        ready: VecDeque::new(),
        open: true,
    };
    futures_util::stream::unfold(merge, |mut merge| async move {
        loop {
            if let Some(event) = merge.ready.pop_front() {
                return Some((Ok(event), merge));
            }
            if !merge.open {
                return None;
            }
            merge.step().await;
        }
    })
}

/// The state of a merged stream.
struct Merge<S> {
    /// The upstreams' events, as they come.
    upstreams: S,
    cursor: Cursor,
    held: ListChanges,
    /// Encoded events to send.
    ready: VecDeque<String>,
    /// Whether an upstream stream is still open.
    open: bool,
}

impl<S: Stream<Item = Upstream> + Unpin> Merge<S> {
    /// Waits for the next upstream event or the end of the window.
    async fn step(&mut self) {
        let next = match self.held.due {
            Some(due) => tokio::select! {
                next = self.upstreams.next() => next,
                () = tokio::time::sleep_until(due) => return self.release(),
            },
            None => self.upstreams.next().await,
        };
        match next {
            Some((integration, slug, event)) => self.take(integration, slug, event),
            None => {
                self.release();
                self.open = false;
            }
        }
    }

    fn take(&mut self, integration: IntegrationId, slug: Arc<str>, event: Event) {
        if self.held.hold(integration, &event) {
            return;
        }
        if self.held.holds(integration) {
            self.release(); // an upstream's events keep their order
        }
        let cursor = &mut self.cursor;
        let cursor = |id: &str| {
            cursor.advance(integration, id);
            cursor.encode()
        };
        let event = if message_of(&event).is_some_and(|m| reaches_client_unchanged(&m, true)) {
            map_id(event, cursor)
        } else {
            map_event(event, namespace_request(slug), cursor)
        };
        self.ready.push_back(event.encode());
    }

    fn release(&mut self) {
        let events = self.held.release(&mut self.cursor);
        self.ready.extend(events.iter().map(Event::encode));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn list_changed(list: &str, id: &str) -> Event {
        let mut e = Event::message(format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/{list}/list_changed"}}"#
        ));
        e.id = Some(id.to_owned());
        e
    }

    #[tokio::test]
    async fn list_changes_of_several_upstreams_leave_as_one() {
        let (a, b) = (IntegrationId::new(), IntegrationId::new());
        let (tx, mut rx) = mpsc::channel(8);
        let upstreams = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut out = Box::pin(merged(upstreams, Cursor::default()));
        for (i, slug, id) in [(a, "a", "4"), (b, "b", "9"), (a, "a", "5")] {
            tx.send((i, slug.into(), list_changed("tools", id)))
                .await
                .unwrap();
        }
        tx.send((b, "b".into(), list_changed("prompts", "10")))
            .await
            .unwrap();
        let started = Instant::now();
        let tools = out.next().await.unwrap().unwrap();
        let prompts = out.next().await.unwrap().unwrap();
        assert!(
            started.elapsed() >= COALESCE_WINDOW / 2,
            "held for the window"
        );
        assert!(tools.contains("tools/list_changed") && !tools.contains("id:"));
        let id = prompts
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .unwrap();
        let cursor = Cursor::parse(Some(id));
        assert_eq!((cursor.get(a), cursor.get(b)), (Some("5"), Some("10")));
        // Another event of a held upstream sends the held ones first.
        tx.send((a, "a".into(), list_changed("tools", "6")))
            .await
            .unwrap();
        let mut other = Event::message(r#"{"jsonrpc":"2.0","method":"notifications/message"}"#);
        other.id = Some("7".into());
        tx.send((a, "a".into(), other)).await.unwrap();
        drop(tx);
        let first = out.next().await.unwrap().unwrap();
        let second = out.next().await.unwrap().unwrap();
        assert!(first.contains("tools/list_changed"), "{first}");
        assert!(second.contains("notifications/message"), "{second}");
        assert!(out.next().await.is_none());
    }
}
