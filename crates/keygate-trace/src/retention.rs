//! Retention: events older than `traces.retention_days` are deleted, once at start and then
//! every hour. Every replica may run it; the delete is idempotent.

use std::time::Duration;

use keygate_core::Timestamp;
use keygate_store::Store;
use tokio::task::JoinHandle;

pub const EVERY: Duration = Duration::from_secs(3600);

/// Deletes events older than `days` days now; returns how many went.
pub async fn purge(store: &Store, days: u32) -> Result<u64, keygate_store::StoreError> {
    let cutoff = Timestamp::now().plus_seconds(-i64::from(days) * 86_400);
    store.delete_trace_events_before(cutoff).await
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
