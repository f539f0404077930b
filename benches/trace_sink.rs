//! Throughput, writer CPU, disk footprint and retention of the trace pipeline, run with
//! `cargo bench -p keygate-benches --bench trace_sink`.
//!
//! - raw insert capacity and CPU per event (process CPU over the inserts; on PostgreSQL also
//!   the server backend's CPU, read from `/proc`);
//! - bytes per event on disk: the trace tables and their indexes after N events minus before,
//!   on SQLite from the `dbstat` virtual table (whole pages, as the file holds them), on
//!   PostgreSQL from `pg_total_relation_size` in a database of its own, dropped afterwards;
//! - retention: how fast `retention::purge` deletes expired events;
//! - the sink: events emitted at a fixed rate (5,000/s for 10 s — budget: written without a
//!   drop — then higher rates to show the headroom) into the real `TraceSink` over a SQLite
//!   file in WAL mode: drops, the deepest the queue got, CPU per event (emit and writer).
//!
//! `cargo bench -p keygate-benches --bench trace_sink -- SECTION…` runs only the named
//! sections: `raw`, `footprint`, `retention`, `sink` (a single one can then run under
//! `valgrind --tool=callgrind` to count what an insert costs).
//!
//! The events look like production's: 50 sessions (each with its trace, agent session and
//! user), 5 integrations, 12 tools, 1 in 20 an error, OpenTelemetry ids on every event, no
//! captured payloads. PostgreSQL is `KEYGATE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); without one reachable its rows are skipped.

#![allow(clippy::print_stdout)] // a benchmark's report is its output

/// The allocator the `keygate` binary uses.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::{Duration, Instant};

use keygate_core::model::TraceEvent;
use keygate_core::{AgentSessionId, ApplicationId, IntegrationId, OrgId, Timestamp, UserId};
use keygate_store::{EventFilter, Kek, Store, Vault};
use keygate_test_support::TempPostgres;
use keygate_trace::TraceSink;
use keygate_trace::sink::blank_event;
use sqlx::{Connection, Row};

const QUEUE: usize = 20_000; // the default `traces.queue_capacity`

/// Events written before measuring the disk footprint.
const FOOTPRINT_EVENTS: u64 = 100_000;

/// Events the retention measurement deletes.
const RETENTION_EVENTS: u64 = 200_000;

/// What stays the same across the events of one session.
#[derive(Clone)]
struct Session {
    trace_id: uuid::Uuid,
    session_id: String,
    agent_session_id: AgentSessionId,
    user_id: UserId,
}

/// The fixed cast the generated events are drawn from.
struct World {
    org: OrgId,
    app: ApplicationId,
    sessions: Vec<Session>,
    integrations: Vec<IntegrationId>,
}

impl World {
    fn new(org: OrgId) -> Self {
        Self {
            org,
            app: ApplicationId::new(),
            sessions: (0..50)
                .map(|_| Session {
                    trace_id: uuid::Uuid::now_v7(),
                    session_id: uuid::Uuid::new_v4().to_string(),
                    agent_session_id: AgentSessionId::new(),
                    user_id: UserId::new(),
                })
                .collect(),
            integrations: (0..5).map(|_| IntegrationId::new()).collect(),
        }
    }

    fn event(&self, n: u64) -> TraceEvent {
        let s = &self.sessions[(n % 50) as usize];
        let mut e = blank_event(self.org, self.app);
        e.trace_id = s.trace_id;
        e.session_id = s.session_id.clone();
        e.agent_session_id = Some(s.agent_session_id);
        e.user_id = Some(s.user_id);
        e.event_type = "tools/call".into();
        e.status = if n.is_multiple_of(20) {
            "error_remote"
        } else {
            "ok"
        }
        .into();
        if n.is_multiple_of(20) {
            e.error_message = Some("upstream answered 502".into());
        }
        e.duration_ms = (n % 300) as i64;
        e.integration_id = Some(self.integrations[(n % 5) as usize]);
        e.tool_name = Some(format!("tool_{}", n % 12));
        e.bytes_in = 180;
        e.bytes_out = 420;
        e.otel_trace_id = Some(keygate_core::OtelId(rand_u128().to_be_bytes()));
        e.otel_span_id = Some(keygate_core::OtelId((rand_u128() as u64).to_be_bytes()));
        e
    }

    /// `n` events with ids assigned as the writer would: UUID v7 of the time they are written,
    /// `created_at` when given (the writer's id and the event's time are never days apart, and
    /// retention walks the ids).
    fn events(&self, n: u64, created_at: Option<Timestamp>) -> Vec<TraceEvent> {
        (0..n)
            .map(|i| {
                let mut e = self.event(i);
                e.id = uuid::Uuid::now_v7();
                if let Some(t) = created_at {
                    e.created_at = t;
                    let random = &uuid::Uuid::new_v4().into_bytes()[..10];
                    let millis = u64::try_from(t.millis()).unwrap_or(0);
                    e.id = uuid::Builder::from_unix_timestamp_millis(
                        millis,
                        random.try_into().unwrap(),
                    )
                    .into_uuid();
                }
                e
            })
            .collect()
    }
}

fn rand_u128() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn process_cpu() -> Duration {
    cpu_of("self")
}

/// CPU time of process `pid` (user + system) in clock ticks of 10 ms, from `/proc`.
fn cpu_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are the 14th and 15th fields; here the 12th and 13th after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(TempPostgres),
}

impl Backend {
    fn url(&self) -> String {
        match self {
            Backend::Sqlite(dir) => format!("sqlite://{}/bench.db", dir.path().display()),
            Backend::Postgres(db) => db.url.clone(),
        }
    }

    /// A fresh database of this kind; `None` when PostgreSQL is not reachable.
    async fn fresh(postgres: bool) -> Option<Self> {
        if !postgres {
            return Some(Backend::Sqlite(tempfile::tempdir().unwrap()));
        }
        match TempPostgres::create().await {
            Ok(db) => Some(Backend::Postgres(db)),
            Err(e) => {
                println!("PostgreSQL skipped: {e:#}");
                None
            }
        }
    }

    /// A store over this database (`connections` in its pool), and its default organization.
    async fn store(&self, connections: u32) -> (Store, OrgId) {
        let db = keygate_store::Db::connect(&self.url(), connections)
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let kek = Kek::from_base64(&Kek::generate_base64()).unwrap();
        let store = Store::new(db.clone(), Vault::unlock(&db, &kek).await.unwrap());
        let org = store.default_organization().await.unwrap().id;
        (store, org)
    }

    /// Bytes the trace tables (`trace_…`) and their indexes take on disk.
    async fn trace_bytes(&self) -> i64 {
        match self {
            Backend::Sqlite(_) => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url()).await.unwrap();
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let row = sqlx::query(
                    "SELECT CAST(COALESCE(SUM(pgsize), 0) AS INTEGER) FROM dbstat \
                     WHERE name IN (SELECT name FROM sqlite_schema \
                     WHERE tbl_name LIKE 'trace\\_%' ESCAPE '\\')",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap();
                conn.close().await.ok();
                row.get(0)
            }
            Backend::Postgres(_) => {
                let mut conn = sqlx::PgConnection::connect(&self.url()).await.unwrap();
                sqlx::query("VACUUM").execute(&mut conn).await.unwrap();
                let row = sqlx::query(
                    "SELECT CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT) \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = 'public' AND c.relkind = 'r' \
                     AND c.relname LIKE 'trace\\_%'",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap();
                conn.close().await.ok();
                row.get(0)
            }
        }
    }

    /// The pid of the (only) server process serving `store`'s pool, on PostgreSQL.
    async fn backend_pid(&self) -> Option<String> {
        let Backend::Postgres(db) = self else {
            return None;
        };
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let row = sqlx::query(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() LIMIT 1",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        conn.close().await.ok();
        row.map(|r| r.get::<i32, _>(0).to_string())
    }
}

/// Raw capacity: `n` events written back to back in batches of `batch`; events/s, process
/// CPU per event and, on PostgreSQL, the server's CPU per event.
async fn raw_inserts(postgres: bool, n: u64, batch: usize) -> Option<(f64, f64, Option<f64>)> {
    let backend = Backend::fresh(postgres).await?;
    let (store, org) = backend.store(1).await;
    let world = World::new(org);
    let events = world.events(n, None);
    let server = backend.backend_pid().await;
    let server_before = server.as_deref().map(cpu_of);
    let cpu = process_cpu();
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        store.insert_trace_events(chunk).await.unwrap();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let client = per_event(process_cpu() - cpu);
    let server = server
        .as_deref()
        .zip(server_before)
        .map(|(pid, before)| per_event(cpu_of(pid).saturating_sub(before)));
    store.db().close().await;
    Some((rate, client, server))
}

/// Bytes on disk per event: the trace tables after `n` events minus before.
async fn footprint(postgres: bool, n: u64) -> Option<(f64, i64)> {
    let backend = Backend::fresh(postgres).await?;
    let (store, org) = backend.store(4).await;
    let world = World::new(org);
    let before = backend.trace_bytes().await;
    for chunk in world.events(n, None).chunks(1_000) {
        store.insert_trace_events(chunk).await.unwrap();
    }
    store.db().close().await;
    let after = backend.trace_bytes().await;
    Some(((after - before) as f64 / n as f64, after))
}

/// Retention: `n` expired events (and as many kept) deleted by `retention::purge`; deleted
/// events per second.
async fn retention(postgres: bool, n: u64) -> Option<(f64, u64)> {
    let backend = Backend::fresh(postgres).await?;
    let (store, org) = backend.store(4).await;
    let world = World::new(org);
    let expired = Timestamp::now().plus_seconds(-40 * 86_400);
    for chunk in world.events(n, Some(expired)).chunks(1_000) {
        store.insert_trace_events(chunk).await.unwrap();
    }
    for chunk in world.events(n, None).chunks(1_000) {
        store.insert_trace_events(chunk).await.unwrap();
    }
    let started = Instant::now();
    let deleted = keygate_trace::retention::purge(&store, 30).await.unwrap();
    let rate = deleted as f64 / started.elapsed().as_secs_f64();
    let kept = store
        .trace_stats(org, &EventFilter::default())
        .await
        .unwrap()
        .total_events;
    assert_eq!(kept as u64, n, "retention keeps the recent events");
    store.db().close().await;
    Some((rate, deleted))
}

/// The sink at `rate` events/s for `secs`: written, dropped, deepest queue, final drain,
/// process CPU per event (µs: emitting and writing; the events are built beforehand).
async fn run(rate: u64, secs: u64) -> (u64, u64, usize, Duration, f64) {
    let backend = Backend::fresh(false).await.unwrap();
    let (store, org) = backend.store(10).await;
    let world = World::new(org);
    let mut events = (0..rate * secs).map(|n| world.event(n)).collect::<Vec<_>>();
    events.reverse();
    let (sink, handle) = TraceSink::spawn(store.clone(), QUEUE);
    let per_tick = rate / 100; // every 10 ms
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut deepest = 0;
    let cpu = process_cpu();
    for _ in 0..secs * 100 {
        tick.tick().await;
        for _ in 0..per_tick {
            sink.emit(events.pop().unwrap());
        }
        deepest = deepest.max(sink.depth());
    }
    let closing = Instant::now();
    handle.close().await;
    let drain = closing.elapsed();
    let cpu = (process_cpu() - cpu).as_secs_f64() * 1e6 / (rate * secs) as f64;
    let rows = store
        .trace_events_after(org, &EventFilter::default(), None, u32::MAX)
        .await
        .unwrap()
        .len();
    let written = sink.stats().written();
    assert_eq!(rows as u64, written, "every written event is a row");
    (written, sink.stats().dropped(), deepest, drain, cpu)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |section: &str| named.is_empty() || named.iter().any(|n| n == section);
    if wants("raw") {
        raw_section().await;
    }
    if wants("footprint") {
        footprint_section().await;
    }
    if wants("retention") {
        retention_section().await;
    }
    if wants("sink") {
        sink_section().await;
    }
}

async fn raw_section() {
    println!("raw insert capacity and CPU per event (µs: this process; PostgreSQL's backend)");
    for postgres in [false, true] {
        for batch in [1, 100, 1_000] {
            let n = if batch == 1 { 2_000 } else { 50_000 };
            let Some((rate, client, server)) = raw_inserts(postgres, n, batch).await else {
                break;
            };
            let server = server.map_or(String::new(), |s| format!(" + server {s:>5.1} µs"));
            println!(
                "  {:<10} batches of {batch:>5}: {rate:>8.0} events/s, CPU {client:>5.1} µs{server}",
                if postgres { "PostgreSQL" } else { "SQLite" }
            );
        }
    }
}

async fn footprint_section() {
    println!("bytes on disk per event (tables + indexes, {FOOTPRINT_EVENTS} events, no payloads)");
    for postgres in [false, true] {
        let name = if postgres { "PostgreSQL" } else { "SQLite" };
        if let Some((per_event, total)) = footprint(postgres, FOOTPRINT_EVENTS).await {
            println!(
                "  {name:<10} {per_event:>6.1} bytes/event ({:.1} MB in all); \
                 {:.0} MB per million events",
                total as f64 / 1e6,
                per_event
            );
        }
    }
}

async fn retention_section() {
    println!("retention ({RETENTION_EVENTS} expired events among as many kept)");
    for postgres in [false, true] {
        let name = if postgres { "PostgreSQL" } else { "SQLite" };
        if let Some((rate, deleted)) = retention(postgres, RETENTION_EVENTS).await {
            println!("  {name:<10} deleted {deleted} at {rate:>9.0} events/s");
        }
    }
}

async fn sink_section() {
    println!("trace sink on SQLite (WAL), queue {QUEUE}");
    println!(
        "{:>10} {:>6} {:>10} {:>8} {:>14} {:>12} {:>12}",
        "events/s", "secs", "written", "dropped", "deepest queue", "final drain", "CPU/event"
    );
    for (rate, secs) in [(1_000, 10), (5_000, 10), (10_000, 5), (20_000, 5)] {
        let (written, dropped, deepest, drain, cpu) = run(rate, secs).await;
        println!(
            "{rate:>10} {secs:>6} {written:>10} {dropped:>8} {deepest:>14} {:>10.1}ms {cpu:>9.1} µs",
            drain.as_secs_f64() * 1000.0
        );
        if rate == 5_000 {
            assert_eq!(dropped, 0, "budget: 5,000 events/s without a drop");
        }
    }
}
