//! The event pipeline: [`TraceSink::emit`] puts an event on a bounded queue without ever
//! waiting; one writer task drains the queue into batched inserts.
//!
//! The queue is a vector behind a mutex that emitters push onto and the writer swaps for its
//! own emptied batch vector, so in a steady state no event costs an allocation for its place
//! in the queue, and the two vectors are reused batch after batch. An emit wakes the writer
//! only when it makes the queue non-empty or fills a batch ([`MAX_BATCH`]); once awake, the
//! writer waits [`LINGER`] (20 ms) so the batch can gather, takes everything queued and writes
//! it in one transaction. So the writer wakes at most about 50 times a second whatever the
//! rate, and not at all while nothing is emitted (a cross-thread wake-up per request was the
//! largest cost of tracing on a busy two-core machine). A full queue drops the event and
//! counts it; nothing on the request path awaits the database.
//!
//! The writer also assigns each event its id (UUID v7) just before the insert. Ids therefore
//! increase in commit order on one gateway, which is what lets a live tail page by id without
//! missing an event that committed late (see [`crate::live`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keygate_core::Timestamp;
use keygate_core::model::TraceEvent;
use keygate_store::Store;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

/// Most events written in one transaction; also the queue length that wakes the writer early.
pub const MAX_BATCH: usize = 1_000;

/// How long the writer lets a batch gather after it woke.
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

/// The queue emitters and the writer share.
#[derive(Debug)]
struct Queue {
    events: Mutex<Vec<TraceEvent>>,
    capacity: usize,
    /// Set by [`SinkHandle::close`]: from then on every emit is a counted drop.
    closed: AtomicBool,
    /// Wakes the writer: the queue became non-empty or holds a full batch.
    wake: Notify,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Vec<TraceEvent>> {
        // A panic while holding the lock leaves a valid vector; keep using it.
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event`; `false` (and the event dropped) when full or closed.
    fn push(&self, event: TraceEvent) -> bool {
        let mut events = self.lock();
        if events.len() >= self.capacity || self.closed.load(Ordering::Relaxed) {
            return false;
        }
        events.push(event);
        let len = events.len();
        drop(events);
        if len == 1 || len == MAX_BATCH {
            self.wake.notify_one();
        }
        true
    }

    /// Swaps everything queued into `batch` (which must be empty), keeping both allocations.
    fn take(&self, batch: &mut Vec<TraceEvent>) {
        std::mem::swap(&mut *self.lock(), batch);
    }
}

/// The emitting end; cheap to clone. A disabled sink (tracing off) ignores every event.
#[derive(Clone, Debug)]
pub struct TraceSink {
    queue: Option<Arc<Queue>>,
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
        let queue = Arc::new(Queue {
            events: Mutex::new(Vec::with_capacity(capacity.clamp(1, MAX_BATCH))),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let (close, close_rx) = oneshot::channel();
        let (written_tx, written) = watch::channel(0);
        let stats = Arc::new(SinkStats::default());
        let task = tokio::spawn(writer(
            store,
            queue.clone(),
            close_rx,
            stats.clone(),
            written_tx,
        ));
        (
            Self {
                queue: Some(queue),
                stats,
                written,
            },
            SinkHandle { close, task },
        )
    }

    /// A sink that records nothing (tracing turned off).
    pub fn disabled() -> Self {
        Self {
            queue: None,
            stats: Arc::default(),
            written: watch::channel(0).1,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `event` or, when the queue is full or closed, drops and counts it. Never waits.
    pub fn emit(&self, event: TraceEvent) {
        let Some(queue) = &self.queue else { return };
        if !queue.push(event) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events waiting to be written.
    pub fn depth(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.lock().len())
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
    queue: Arc<Queue>,
    mut close: oneshot::Receiver<()>,
    stats: Arc<SinkStats>,
    written: watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    while !closing {
        tokio::select! {
            _ = queue.wake.notified() => {}
            _ = &mut close => closing = true,
        }
        if !closing && queue.lock().len() < MAX_BATCH {
            // Let events gather: one wake-up and one transaction per LINGER at most,
            // instead of one per event when each arrives alone.
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = queue.wake.notified() => {}
                _ = &mut close => closing = true,
            }
        }
        if closing {
            // No new events from here on; what is queued still goes in.
            queue.closed.store(true, Ordering::Relaxed);
        }
        queue.take(&mut batch);
        for chunk in batch.chunks_mut(MAX_BATCH) {
            write(&store, chunk, &stats, &written).await;
        }
        batch.clear();
        if batch.capacity() > 4 * MAX_BATCH {
            batch.shrink_to(MAX_BATCH); // a burst's worth of memory is not kept
        }
    }
}

async fn write(
    store: &Store,
    batch: &mut [TraceEvent],
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
}

/// An event made now, with every required field set and the rest empty; the writer assigns
/// the id.
pub fn blank_event(org: keygate_core::OrgId, app: keygate_core::ApplicationId) -> TraceEvent {
    TraceEvent {
        id: uuid::Uuid::nil(),
        org_id: org,
        created_at: Timestamp::now(),
        trace_id: uuid::Uuid::nil(),
        session_id: String::new(),
        agent_session_id: None,
        application_id: app,
        user_id: None,
        event_type: "".into(),
        status: "".into(),
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
