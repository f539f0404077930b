//! Retention: events older than `traces.retention_days` are deleted, once at start and then
//! every [`EVERY`]. Every replica may run it; the delete is idempotent.
//!
//! A purge walks the events' primary key (ids follow write time) in batches of [`BATCH`],
//! pausing [`PAUSE`] between them so the trace writer, which needs the same write lock on
//! SQLite, never waits long; then it deletes the contexts no event points to any more.
//! Measured with `cargo bench -p keygate-benches --bench trace_sink`, a purge deletes far
//! more events per second than the 1,000 per second a busy gateway writes.

use std::time::Duration;

use keygate_core::Timestamp;
use keygate_store::Store;
use tokio::task::JoinHandle;

pub const EVERY: Duration = Duration::from_secs(600);

/// Events deleted by one statement.
pub const BATCH: u32 = 5_000;

/// The pause between two batches.
const PAUSE: Duration = Duration::from_millis(5);

/// Deletes events older than `days` days now, batch by batch; returns how many went.
pub async fn purge(store: &Store, days: u32) -> Result<u64, keygate_store::StoreError> {
    let cutoff = Timestamp::now().plus_seconds(-i64::from(days) * 86_400);
    let mut deleted = 0;
    let mut after = None;
    loop {
        let batch = store
            .delete_trace_events_before(cutoff, after, BATCH)
            .await?;
        deleted += batch.events;
        if batch.done {
            return Ok(deleted);
        }
        after = batch.next;
        tokio::time::sleep(PAUSE).await;
    }
}

/// Runs [`purge`] every [`EVERY`] until aborted.
pub fn spawn(store: Store, days: u32) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            match purge(&store, days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, days, "trace retention"),
                Err(e) => tracing::warn!(error = %e, "trace retention failed"),
            }
        }
    })
}
