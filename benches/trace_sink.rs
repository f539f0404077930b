//! Throughput of the trace pipeline on SQLite, run with
//! `cargo bench -p keygate-benches --bench trace_sink`.
//!
//! Emits events at a fixed rate (5,000/s for 10 s — budget: written without a drop — then
//! a few higher rates to show the headroom) into the real `TraceSink` over a SQLite file in
//! WAL mode, then closes the sink and reports drops, the deepest the queue got and how many
//! rows the table holds.

#![allow(clippy::print_stdout)] // a benchmark's report is its output

/// The allocator the `keygate` binary uses.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::{Duration, Instant};

use keygate_core::model::TraceEvent;
use keygate_core::{AgentSessionId, ApplicationId, IntegrationId, OrgId, UserId};
use keygate_store::{EventFilter, Kek, Store, Vault};
use keygate_trace::TraceSink;
use keygate_trace::sink::blank_event;

const QUEUE: usize = 20_000; // the default `traces.queue_capacity`

fn event(org: OrgId, app: ApplicationId, n: u64) -> TraceEvent {
    let mut e = blank_event(org, app);
    e.trace_id = uuid::Uuid::now_v7().to_string();
    e.session_id = format!("session-{}", n % 50);
    e.agent_session_id = Some(AgentSessionId::new());
    e.user_id = Some(UserId::new());
    e.event_type = "tools/call".into();
    e.status = if n.is_multiple_of(20) {
        "error_remote"
    } else {
        "ok"
    }
    .into();
    e.duration_ms = (n % 300) as i64;
    e.integration_id = Some(IntegrationId::new());
    e.tool_name = Some(format!("tool_{}", n % 12));
    e.bytes_in = 180;
    e.bytes_out = 420;
    e
}

/// A store over a new SQLite file in `dir`, and its default organization.
async fn sqlite_store(dir: &tempfile::TempDir) -> (Store, OrgId) {
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let db = keygate_store::Db::connect(&url, 10).await.unwrap();
    db.migrate().await.unwrap();
    let kek = Kek::from_base64(&Kek::generate_base64()).unwrap();
    let store = Store::new(db.clone(), Vault::unlock(&db, &kek).await.unwrap());
    let org = store.default_organization().await.unwrap().id;
    (store, org)
}

async fn run(rate: u64, secs: u64) -> (u64, u64, usize, Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (store, org) = sqlite_store(&dir).await;
    let app = ApplicationId::new();
    let (sink, handle) = TraceSink::spawn(store.clone(), QUEUE);
    let per_tick = rate / 100; // every 10 ms
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut deepest = 0;
    let mut n = 0;
    for _ in 0..secs * 100 {
        tick.tick().await;
        for _ in 0..per_tick {
            sink.emit(event(org, app, n));
            n += 1;
        }
        deepest = deepest.max(sink.depth());
    }
    let closing = Instant::now();
    handle.close().await;
    let drain = closing.elapsed();
    let rows = store
        .trace_events_after(org, &EventFilter::default(), None, u32::MAX)
        .await
        .unwrap()
        .len();
    (
        sink.stats().written(),
        sink.stats().dropped(),
        deepest,
        drain,
        rows,
    )
}

/// Raw capacity: `n` events written back to back in batches of `batch`.
async fn raw_inserts(n: u64, batch: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (store, org) = sqlite_store(&dir).await;
    let app = ApplicationId::new();
    let mut events: Vec<TraceEvent> = (0..n).map(|i| event(org, app, i)).collect();
    for e in &mut events {
        e.id = uuid::Uuid::now_v7();
    }
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        store.insert_trace_events(chunk).await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    for batch in [1, 100, 1_000] {
        println!(
            "raw insert capacity, batches of {batch:>5}: {:>8.0} events/s",
            raw_inserts(if batch == 1 { 2_000 } else { 30_000 }, batch).await
        );
    }
    println!("trace sink on SQLite (WAL), queue {QUEUE}");
    println!(
        "{:>10} {:>6} {:>10} {:>8} {:>14} {:>12}",
        "events/s", "secs", "written", "dropped", "deepest queue", "final drain"
    );
    for (rate, secs) in [(5_000, 10), (10_000, 5), (20_000, 5)] {
        let (written, dropped, deepest, drain, rows) = run(rate, secs).await;
        assert_eq!(rows as u64, written, "every written event is a row");
        println!(
            "{rate:>10} {secs:>6} {written:>10} {dropped:>8} {deepest:>14} {:>10.1}ms",
            drain.as_secs_f64() * 1000.0
        );
        if rate == 5_000 {
            assert_eq!(dropped, 0, "budget: 5,000 events/s without a drop");
        }
    }
}
