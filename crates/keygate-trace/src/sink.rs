//! The event pipeline: [`TraceSink::emit`] puts an event on a bounded queue without ever
//! waiting; one writer task drains the queue into batched inserts.
//!
//! The writer takes whatever has queued up since its last write (at most [`MAX_BATCH`]) and
//! writes it in one transaction, then waits [`LINGER`] (20 ms) so the next batch can gather:
//! batches grow by themselves with the load, and the writer wakes at most 50 times a second
//! rather than once per event (a cross-thread wake-up per request was the largest cost of
//! tracing on a busy two-core machine). After a full batch it does not wait: the queue holds
//! more. A full queue drops the event and counts it; nothing on the request path awaits the
//! database.
//!
//! The writer also assigns each event its id (UUID v7) just before the insert. Ids therefore
//! increase in commit order on one gateway, which is what lets a live tail page by id without
//! missing an event that committed late (see [`crate::live`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keygate_core::Timestamp;
use keygate_core::model::TraceEvent;
use keygate_store::Store;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Most events written in one transaction.
pub const MAX_BATCH: usize = 1_000;

/// How long the writer waits after a write before taking the next batch.
const LINGER: Duration = Duration::from_millis(20);

/// Attempts at writing one batch before it is given up (and counted as dropped).
const WRITE_ATTEMPTS: u32 = 3;

/// Counters shared by the sink's clones and its writer.
#[derive(Debug, Default)]
pub struct SinkStats {
    dropped: AtomicU64,
    written: AtomicU64,
}

impl SinkStats {
    /// Events lost: queue full, pipeline closed, or a batch the database refused.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events committed to the store.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// The emitting end; cheap to clone. A disabled sink (tracing off) ignores every event.
#[derive(Clone, Debug)]
pub struct TraceSink {
    tx: Option<mpsc::Sender<TraceEvent>>,
    stats: Arc<SinkStats>,
    written: watch::Receiver<u64>,
}

/// Owns the writer task; [`SinkHandle::close`] drains it.
#[derive(Debug)]
pub struct SinkHandle {
    close: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl TraceSink {
    /// Starts the writer for `store` with a queue of `capacity` events.
    pub fn spawn(store: Store, capacity: usize) -> (Self, SinkHandle) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (close, close_rx) = oneshot::channel();
        let (written_tx, written) = watch::channel(0);
        let stats = Arc::new(SinkStats::default());
        let task = tokio::spawn(writer(store, rx, close_rx, stats.clone(), written_tx));
        (
            Self {
                tx: Some(tx),
                stats,
                written,
            },
            SinkHandle { close, task },
        )
    }

    /// A sink that records nothing (tracing turned off).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            stats: Arc::default(),
            written: watch::channel(0).1,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `event` or, when the queue is full or closed, drops and counts it. Never waits.
    pub fn emit(&self, event: TraceEvent) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(event).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events waiting to be written.
    pub fn depth(&self) -> usize {
        self.tx
            .as_ref()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// Changes after every committed batch (its value counts batches): a live tail on this
    /// gateway wakes on it instead of waiting for its next poll.
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }
}

impl SinkHandle {
    /// Stops taking events and waits until every queued one is written.
    pub async fn close(self) {
        let _ = self.close.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the trace writer failed");
        }
    }
}

async fn writer(
    store: Store,
    mut rx: mpsc::Receiver<TraceEvent>,
    mut close: oneshot::Receiver<()>,
    stats: Arc<SinkStats>,
    written: watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let taken = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break; // every sender is gone
                }
                write(&store, &mut batch, &stats, &written).await;
                n
            }
            _ = &mut close => {
                drain(&store, rx, batch, &stats, &written).await;
                break;
            }
        };
        if taken == MAX_BATCH {
            continue; // more is waiting: lingering now would only let the queue overflow
        }
        // Let events gather before the next write: at most one wake-up and one transaction
        // per LINGER, instead of one per event when each arrives alone.
        tokio::select! {
            _ = tokio::time::sleep(LINGER) => {}
            _ = &mut close => {
                drain(&store, rx, batch, &stats, &written).await;
                break;
            }
        }
    }
}

/// After close: no new events from here on; what is queued still goes in.
async fn drain(
    store: &Store,
    mut rx: mpsc::Receiver<TraceEvent>,
    mut batch: Vec<TraceEvent>,
    stats: &SinkStats,
    written: &watch::Sender<u64>,
) {
    rx.close();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write(store, &mut batch, stats, written).await;
    }
}

async fn write(
    store: &Store,
    batch: &mut Vec<TraceEvent>,
    stats: &SinkStats,
    written: &watch::Sender<u64>,
) {
    for event in batch.iter_mut() {
        event.id = uuid::Uuid::now_v7();
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match store.insert_trace_events(batch).await {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                written.send_modify(|n| *n += 1);
                break;
            }
            Err(e) if attempt < WRITE_ATTEMPTS => {
                tracing::warn!(error = %e, events = batch.len(), attempt, "writing trace events failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "writing trace events failed; dropping them");
                stats
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                break;
            }
        }
    }
    batch.clear();
}

/// An event with every required field set and the rest empty; the writer assigns the id.
pub fn blank_event(org: keygate_core::OrgId, app: keygate_core::ApplicationId) -> TraceEvent {
    TraceEvent {
        id: uuid::Uuid::nil(),
        org_id: org,
        created_at: Timestamp::now(),
        trace_id: String::new(),
        session_id: String::new(),
        agent_session_id: None,
        application_id: app,
        user_id: None,
        event_type: String::new(),
        status: String::new(),
        duration_ms: 0,
        integration_id: None,
        tool_name: None,
        error_message: None,
        bytes_in: 0,
        bytes_out: 0,
        request_json: None,
        response_json: None,
        otel_trace_id: None,
        otel_span_id: None,
    }
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
