//! The live tail: stored events newer than a cursor, as they are written.
//!
//! A [`Tail`] polls the store for events whose id is greater than the last one it delivered
//! (every [`POLL_EVERY`], or at once when this gateway's writer commits a batch), so it works
//! the same on every replica of a PostgreSQL deployment and resumes from any id.
//!
//! Paging by id is exact because ids grow in commit order: the writer assigns them just before
//! each insert and writes one batch at a time ([`crate::sink`]). Several replicas on one
//! PostgreSQL database each have their own writer, so an event from one replica may commit a
//! little after a later-numbered event from another. On PostgreSQL a tail therefore delivers
//! only events whose id is at least [`SETTLE_POSTGRES`] old; by then every writer has committed
//! what it numbered earlier (clocks on the replicas are assumed NTP-close). SQLite has one
//! writing process, so it delivers at once.

use std::time::Duration;

use keygate_core::OrgId;
use keygate_core::model::TraceEvent;
use keygate_store::{Backend, EventFilter, Store, StoreError};
use tokio::sync::watch;

pub const POLL_EVERY: Duration = Duration::from_millis(250);
pub const SETTLE_POSTGRES: Duration = Duration::from_millis(1000);
/// Most events fetched per query.
const PAGE: u32 = 500;

/// One follower of the event log.
pub struct Tail {
    store: Store,
    org: OrgId,
    filter: EventFilter,
    after: Option<uuid::Uuid>,
    settle: Duration,
    wake: watch::Receiver<u64>,
}

impl Tail {
    /// Follows events matching `filter`, starting after `after` (or with the events written
    /// from now on).
    pub fn new(
        store: Store,
        org: OrgId,
        filter: EventFilter,
        after: Option<uuid::Uuid>,
        wake: watch::Receiver<u64>,
    ) -> Self {
        let settle = match store.db().backend() {
            Backend::Postgres => SETTLE_POSTGRES,
            Backend::Sqlite => Duration::ZERO,
        };
        // Without a cursor, start at "now": an id made now sorts after every written event.
        let after = after.or_else(|| Some(uuid::Uuid::now_v7()));
        Self {
            store,
            org,
            filter,
            after,
            settle,
            wake,
        }
    }

    /// The next events in id order; waits until there is at least one.
    pub async fn next(&mut self) -> Result<Vec<TraceEvent>, StoreError> {
        loop {
            let events = self
                .store
                .trace_events_after(self.org, &self.filter, self.after, PAGE)
                .await?;
            let horizon = settled_before(self.settle);
            let ready: Vec<TraceEvent> = events
                .into_iter()
                .take_while(|e| horizon.is_none_or(|h| e.id <= h))
                .collect();
            if let Some(last) = ready.last() {
                self.after = Some(last.id);
                return Ok(ready);
            }
            tokio::select! {
                woke = self.wake.changed() => {
                    if woke.is_err() {
                        // No local writer (tracing off here): poll only.
                        tokio::time::sleep(POLL_EVERY).await;
                    }
                }
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }
}

/// The greatest id old enough to deliver, or `None` when everything is.
fn settled_before(settle: Duration) -> Option<uuid::Uuid> {
    if settle.is_zero() {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let millis = now.saturating_sub(settle).as_millis() as u64;
    Some(uuid::Builder::from_unix_timestamp_millis(millis, &[0xff; 10]).into_uuid())
}
