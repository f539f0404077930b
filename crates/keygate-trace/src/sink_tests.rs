//! Unit tests of the trace sink: ordered writes on close, dropping when full, off when disabled.

use keygate_core::ApplicationId;
use keygate_store::EventFilter;

use super::*;
use crate::temp_store;

fn event(org: keygate_core::OrgId, app: ApplicationId, n: usize) -> TraceEvent {
    let mut e = blank_event(org, app);
    e.trace_id = uuid::Uuid::now_v7();
    e.session_id = "s".into();
    e.event_type = "tools/call".into();
    e.status = "ok".into();
    e.tool_name = Some(format!("tool-{n}"));
    e
}

async fn stored(store: &Store, org: keygate_core::OrgId) -> Vec<TraceEvent> {
    store
        .trace_events_after(org, &EventFilter::default(), None, 100_000)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_writes_everything_queued_in_id_order() {
    let (store, org, _dir) = temp_store().await;
    let app = ApplicationId::new();
    let (sink, handle) = TraceSink::spawn(store.clone(), 10_000);
    for n in 0..2_500 {
        sink.emit(event(org, app, n));
    }
    handle.close().await;
    assert_eq!(sink.stats().dropped(), 0);
    assert_eq!(sink.stats().written(), 2_500);
    let events = stored(&store, org).await;
    assert_eq!(events.len(), 2_500);
    // Ids follow the order events were queued in: a tail paging by id misses none.
    let tools: Vec<String> = events
        .iter()
        .map(|e| e.tool_name.clone().unwrap())
        .collect();
    let expected: Vec<String> = (0..2_500).map(|n| format!("tool-{n}")).collect();
    assert_eq!(tools, expected);
    // After close, emitting is a counted drop, not a panic or a wait.
    sink.emit(event(org, app, 0));
    assert_eq!(sink.stats().dropped(), 1);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let (store, org, _dir) = temp_store().await;
    let app = ApplicationId::new();
    let (sink, handle) = TraceSink::spawn(store.clone(), 4);
    // On this single-threaded runtime the writer cannot run until we yield.
    for n in 0..10 {
        sink.emit(event(org, app, n));
    }
    assert_eq!(sink.depth(), 4);
    assert_eq!(sink.stats().dropped(), 6);
    handle.close().await;
    assert_eq!(stored(&store, org).await.len(), 4);
    assert_eq!(sink.depth(), 0);
}

#[tokio::test]
async fn a_disabled_sink_records_nothing() {
    let (_store, org, _dir) = temp_store().await;
    let sink = TraceSink::disabled();
    sink.emit(event(org, ApplicationId::new(), 0));
    assert!(!sink.is_enabled());
    assert_eq!(sink.stats().dropped(), 0);
    assert_eq!(sink.depth(), 0);
}
