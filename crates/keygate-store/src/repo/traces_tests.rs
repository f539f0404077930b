//! Store tests of trace storage on SQLite and (when reachable) PostgreSQL: migration 0011
//! carries existing events over, every field survives the compact row, retention goes in
//! batches and takes unused contexts with it.

use std::path::Path;

use keygate_core::model::TraceEvent;
use keygate_core::{AgentSessionId, ApplicationId, IntegrationId, OrgId, Timestamp, UserId};
use sqlx::{Connection, Executor};

use crate::{Db, EventFilter, Kek, Store, Vault};

/// A database of each kind: SQLite in `dir`, and PostgreSQL when the test server answers.
async fn databases(dir: &tempfile::TempDir) -> Vec<(String, Option<String>)> {
    let mut urls = vec![(format!("sqlite://{}/t.db", dir.path().display()), None)];
    let admin = std::env::var("KEYGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
        let name = format!("keygate_store_traces_{}", uuid::Uuid::new_v4().simple());
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        conn.close().await.ok();
        let (base, _) = admin.rsplit_once('/').unwrap();
        urls.push((format!("{base}/{name}"), Some(name)));
    }
    urls
}

async fn drop_database(name: Option<String>) {
    let Some(name) = name else { return };
    let admin = std::env::var("KEYGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    conn.close().await.ok();
}

async fn store_over(db: &Db) -> (Store, OrgId) {
    let kek = Kek::from_base64(&Kek::generate_base64()).unwrap();
    let store = Store::new(db.clone(), Vault::unlock(db, &kek).await.unwrap());
    let org = store.default_organization().await.unwrap().id;
    (store, org)
}

/// The database at `url`, migrated, and a store over it.
async fn migrated(url: &str) -> (Db, Store, OrgId) {
    let db = Db::connect(url, 2).await.unwrap();
    db.migrate().await.unwrap();
    let (store, org) = store_over(&db).await;
    (db, store, org)
}

/// The migrations of `db`'s backend before `version`.
async fn migrate_before(db: &Db, version: i64) {
    let dir = match db.backend() {
        crate::Backend::Sqlite => "sqlite",
        crate::Backend::Postgres => "postgres",
    };
    let path = format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut migrator = sqlx::migrate::Migrator::new(Path::new(&path))
        .await
        .unwrap();
    let older: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version < version)
        .cloned()
        .collect();
    migrator.migrations = older.into();
    migrator.run(db.pool()).await.unwrap();
}

#[tokio::test]
async fn migration_0011_carries_existing_events_into_compact_rows() {
    let dir = tempfile::tempdir().unwrap();
    for (url, name) in databases(&dir).await {
        let db = Db::connect(&url, 2).await.unwrap();
        migrate_before(&db, 11).await;
        let (store, org) = store_over(&db).await;
        let (app, user, agent, integration) = (
            ApplicationId::new(),
            UserId::new(),
            AgentSessionId::new(),
            IntegrationId::new(),
        );
        let (first, second) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let trace = uuid::Uuid::now_v7();
        let insert = "INSERT INTO trace_events (id, org_id, created_at, trace_id, session_id, \
            agent_session_id, application_id, user_id, event_type, status, duration_ms, \
            integration_id, tool_name, error_message, bytes_in, bytes_out, request_json, \
            response_json, otel_trace_id, otel_span_id) VALUES ";
        let rows = format!(
            "{insert} ('{first}', '{org}', 1000, '{trace}', 's-1', '{agent}', '{app}', '{user}', \
             'tools/call', 'error_remote', 42, '{integration}', 'echo', 'no', 10, 20, \
             '{{\"a\":1}}', NULL, '0af7651916cd43dd8448eb211c80319c', 'b7ad6b7169203331'), \
             ('{second}', '{org}', 2000, '{trace}', 's-1', NULL, '{app}', NULL, 'vendor/x', \
             'ok', 7, NULL, NULL, NULL, 1, 2, NULL, NULL, NULL, NULL)"
        );
        sqlx::query(&rows).execute(db.pool()).await.unwrap();
        db.migrate().await.unwrap();

        let events = store
            .trace_events_after(org, &EventFilter::default(), None, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 2, "{url}");
        let (a, b) = (&events[0], &events[1]);
        assert_eq!((a.id, b.id), (first, second));
        assert_eq!(a.org_id, org);
        assert_eq!((a.created_at.millis(), b.created_at.millis()), (1000, 2000));
        assert_eq!((a.trace_id, a.session_id.as_str()), (trace, "s-1"));
        assert_eq!((a.agent_session_id, a.user_id), (Some(agent), Some(user)));
        assert_eq!((b.agent_session_id, b.user_id), (None, None));
        assert_eq!(a.application_id, app);
        assert_eq!((&*a.event_type, &*a.status), ("tools/call", "error_remote"));
        assert_eq!((&*b.event_type, &*b.status), ("vendor/x", "ok"));
        assert_eq!((a.duration_ms, a.bytes_in, a.bytes_out), (42, 10, 20));
        assert_eq!(a.integration_id, Some(integration));
        assert_eq!(a.tool_name.as_deref(), Some("echo"));
        assert_eq!(a.error_message.as_deref(), Some("no"));
        assert_eq!(a.request_json, Some(serde_json::json!({"a": 1})));
        assert_eq!(
            a.otel_trace_id.map(|v| v.to_string()).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(
            a.otel_span_id.map(|v| v.to_string()).as_deref(),
            Some("b7ad6b7169203331")
        );
        assert_eq!(b.otel_trace_id, None);
        let (summary, _) = store
            .get_trace(org, &trace.to_string(), None)
            .await
            .unwrap();
        assert_eq!((summary.event_count, summary.error_count), (2, 1));
        // Both events belong to one trace but two contexts (one has no user).
        assert_eq!(summary.user_id, Some(user));
        db.close().await;
        drop_database(name).await;
    }
}

fn event(org: OrgId, app: ApplicationId, session: &str, at: Timestamp) -> TraceEvent {
    TraceEvent {
        id: uuid::Uuid::now_v7(),
        org_id: org,
        created_at: at,
        trace_id: uuid::Uuid::now_v7(),
        session_id: session.to_owned(),
        agent_session_id: None,
        application_id: app,
        user_id: None,
        event_type: "tools/call".into(),
        status: "ok".into(),
        duration_ms: 1,
        integration_id: None,
        tool_name: Some("echo".into()),
        error_message: None,
        bytes_in: 1,
        bytes_out: 1,
        request_json: None,
        response_json: None,
        otel_trace_id: None,
        otel_span_id: None,
    }
}

/// An id of `at`'s millisecond, as the writer gives an event written then.
fn id_at(at: Timestamp) -> uuid::Uuid {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (at.millis() / 1000) as u64,
        ((at.millis() % 1000) * 1_000_000) as u32,
    );
    uuid::Uuid::new_v7(ts)
}

#[tokio::test]
async fn retention_deletes_in_batches_and_drops_unused_contexts() {
    let dir = tempfile::tempdir().unwrap();
    for (url, name) in databases(&dir).await {
        let (db, store, org) = migrated(&url).await;
        let app = ApplicationId::new();
        let old = Timestamp::now().plus_seconds(-40 * 86_400);
        let mut events: Vec<TraceEvent> = (0..7)
            .map(|i| {
                let mut e = event(org, app, &format!("old-{}", i % 3), old);
                e.id = id_at(old);
                e
            })
            .collect();
        // Written late: created before the cutoff, id after it; kept until its id ages too.
        let mut late = event(org, app, "old-0", old);
        late.id = uuid::Uuid::now_v7();
        events.push(late);
        events.extend((0..3).map(|_| event(org, app, "new", Timestamp::now())));
        store.insert_trace_events(&events).await.unwrap();

        let cutoff = Timestamp::now().plus_seconds(-30 * 86_400);
        let mut after = None;
        let mut batches = 0;
        let mut deleted = 0;
        loop {
            let batch = store
                .delete_trace_events_before(cutoff, after, 2)
                .await
                .unwrap();
            assert!(batch.events <= 2, "{url}: a batch is bounded");
            deleted += batch.events;
            batches += 1;
            if batch.done {
                break;
            }
            after = batch.next;
        }
        assert_eq!(deleted, 7, "{url}");
        assert!(batches >= 4, "{url}: {batches} batches");
        let left = store
            .trace_events_after(org, &EventFilter::default(), None, 100)
            .await
            .unwrap();
        assert_eq!(left.len(), 4, "{url}");
        // Sessions old-1 and old-2 have no event left; old-0 keeps the late one.
        let sessions = |s: &str| EventFilter {
            session_id: Some(s.to_owned()),
            ..Default::default()
        };
        for (session, events) in [("old-0", 1), ("old-1", 0), ("new", 3)] {
            let stats = store.trace_stats(org, &sessions(session)).await.unwrap();
            assert_eq!(stats.total_events, events, "{url}: {session}");
        }
        let contexts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trace_contexts")
            .fetch_one(db.pool())
            .await
            .unwrap();
        // Every event here has its own trace, so its own context: the late one and the new ones stay.
        assert_eq!(contexts, 4, "{url}");
        db.close().await;
        drop_database(name).await;
    }
}

#[tokio::test]
async fn a_batch_spanning_every_insert_size_stores_each_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    for (url, name) in databases(&dir).await {
        let (db, store, org) = migrated(&url).await;
        let app = ApplicationId::new();
        // 512 + 64 + 8 + 1 + 1: one statement of every size, one size twice.
        let events: Vec<TraceEvent> = (0..586)
            .map(|i| {
                let mut e = event(org, app, &format!("s-{}", i % 5), Timestamp::now());
                e.tool_name = Some(format!("tool-{i}"));
                e
            })
            .collect();
        store.insert_trace_events(&events).await.unwrap();
        let stored = store
            .trace_events_after(org, &EventFilter::default(), None, 1_000)
            .await
            .unwrap();
        let tools: Vec<_> = stored
            .iter()
            .map(|e| e.tool_name.clone().unwrap())
            .collect();
        let expected: Vec<_> = (0..586).map(|i| format!("tool-{i}")).collect();
        assert_eq!(tools, expected, "{url}");
        db.close().await;
        drop_database(name).await;
    }
}
