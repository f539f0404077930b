//! Trace events and the traces (per downstream session) they group into.

use keygate_core::model::TraceEvent;
use keygate_core::{AgentSessionId, ApplicationId, IntegrationId, OrgId, Timestamp, UserId};

use std::sync::LazyLock;

use serde_json::{Value, json};

use super::{RowExt, to_json};
use crate::db::Backend;
use crate::page::{Cursor, Page};
use crate::sql::Sql;
use crate::{Result, Store, StoreError};

/// Filters shared by the trace, event and stats queries.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub limit: u32,
    pub after: Option<Cursor>,
    pub user_id: Option<UserId>,
    pub session_id: Option<String>,
    pub agent_session_id: Option<AgentSessionId>,
    pub application_id: Option<ApplicationId>,
    pub trace_id: Option<String>,
    /// The W3C trace id of the events' spans (32 lowercase hex digits).
    pub otel_trace_id: Option<String>,
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub tool_name: Option<String>,
    pub started_after: Option<Timestamp>,
    pub started_before: Option<Timestamp>,
}

/// One trace: the events of one downstream MCP session.
#[derive(Clone, Debug)]
pub struct TraceSummary {
    pub trace_id: String,
    pub session_id: String,
    pub started_at: Timestamp,
    pub ended_at: Timestamp,
    pub event_count: i64,
    pub ok_count: i64,
    pub warn_count: i64,
    pub error_count: i64,
    pub application_id: ApplicationId,
    pub user_id: Option<UserId>,
    pub agent_session_id: Option<AgentSessionId>,
}

/// A tool's share of the traffic.
#[derive(Clone, Debug)]
pub struct ToolStat {
    pub tool_name: String,
    pub integration_id: Option<IntegrationId>,
    pub count: i64,
    pub error_count: i64,
}

/// Aggregates over a window of events.
#[derive(Clone, Debug, Default)]
pub struct TraceStats {
    pub total_traces: i64,
    pub total_events: i64,
    pub ok_events: i64,
    pub warn_events: i64,
    pub error_events: i64,
    pub latency_p50: i64,
    pub latency_p95: i64,
    pub latency_p99: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub top_tools: Vec<ToolStat>,
}

const COLUMNS: &str = "id, org_id, created_at, trace_id, session_id, agent_session_id, \
    application_id, user_id, event_type, status, duration_ms, integration_id, tool_name, \
    error_message, bytes_in, bytes_out, request_json, response_json, otel_trace_id, otel_span_id";

/// Rows per multi-row `INSERT` on PostgreSQL. sqlx binds each placeholder after looking its
/// name up, which costs more the more placeholders a statement has, so statements stay small.
pub const INSERT_CHUNK: usize = 20;

/// SQLite takes a whole batch in one statement with one parameter, a JSON array of rows (one
/// array of [`COLUMNS`] values each), which `json_each` unpacks. Measured with `--bench
/// trace_sink`, batches of 100): 44,500 events/s as 20-row multi-row `INSERT`s, where
/// `sqlite3_bind_parameter_name` took a fifth of the CPU, and 66,000 this way.
static SQLITE_INSERT: LazyLock<String> = LazyLock::new(|| {
    let values: Vec<String> = (0..COLUMNS.split(", ").count())
        .map(|n| format!("value ->> {n}"))
        .collect();
    format!(
        "INSERT INTO trace_events ({COLUMNS}) SELECT {} FROM json_each(",
        values.join(", ")
    )
});

/// One event as the JSON array [`SQLITE_INSERT`] reads, in [`COLUMNS`] order.
fn json_row(e: &TraceEvent) -> Value {
    json!([
        e.id.to_string(),
        e.org_id.to_string(),
        e.created_at.millis(),
        &e.trace_id,
        &e.session_id,
        e.agent_session_id.map(|v| v.to_string()),
        e.application_id.to_string(),
        e.user_id.map(|v| v.to_string()),
        &e.event_type,
        &e.status,
        e.duration_ms,
        e.integration_id.map(|v| v.to_string()),
        &e.tool_name,
        &e.error_message,
        e.bytes_in,
        e.bytes_out,
        e.request_json.as_ref().map(to_json),
        e.response_json.as_ref().map(to_json),
        &e.otel_trace_id,
        &e.otel_span_id,
    ])
}

fn push_values(sql: &mut Sql, e: &TraceEvent) {
    sql.bind(e.id.to_string()).push(", ");
    sql.bind(e.org_id.to_string()).push(", ");
    sql.bind(e.created_at.millis()).push(", ");
    sql.bind(e.trace_id.clone()).push(", ");
    sql.bind(e.session_id.clone()).push(", ");
    sql.bind(e.agent_session_id.map(|v| v.to_string()))
        .push(", ");
    sql.bind(e.application_id.to_string()).push(", ");
    sql.bind(e.user_id.map(|v| v.to_string())).push(", ");
    sql.bind(e.event_type.clone()).push(", ");
    sql.bind(e.status.clone()).push(", ");
    sql.bind(e.duration_ms).push(", ");
    sql.bind(e.integration_id.map(|v| v.to_string())).push(", ");
    sql.bind(e.tool_name.clone()).push(", ");
    sql.bind(e.error_message.clone()).push(", ");
    sql.bind(e.bytes_in).push(", ").bind(e.bytes_out).push(", ");
    sql.bind(e.request_json.as_ref().map(to_json)).push(", ");
    sql.bind(e.response_json.as_ref().map(to_json)).push(", ");
    sql.bind(e.otel_trace_id.clone()).push(", ");
    sql.bind(e.otel_span_id.clone());
}

fn event(row: &sqlx::any::AnyRow) -> Result<TraceEvent> {
    Ok(TraceEvent {
        id: row.id("id")?,
        org_id: row.id("org_id")?,
        created_at: row.ts("created_at")?,
        trace_id: row.text("trace_id")?,
        session_id: row.text("session_id")?,
        agent_session_id: row.opt_id("agent_session_id")?,
        application_id: row.id("application_id")?,
        user_id: row.opt_id("user_id")?,
        event_type: row.text("event_type")?,
        status: row.text("status")?,
        duration_ms: row.int("duration_ms")?,
        integration_id: row.opt_id("integration_id")?,
        tool_name: row.opt_text("tool_name")?,
        error_message: row.opt_text("error_message")?,
        bytes_in: row.int("bytes_in")?,
        bytes_out: row.int("bytes_out")?,
        request_json: row.opt_json("request_json")?,
        response_json: row.opt_json("response_json")?,
        otel_trace_id: row.opt_text("otel_trace_id")?,
        otel_span_id: row.opt_text("otel_span_id")?,
    })
}

/// Appends ` AND …` conditions for every filter that is set (not the cursor or limit).
fn push_filters(sql: &mut Sql, org: OrgId, f: &EventFilter) {
    sql.push(" WHERE org_id = ").bind(org.to_string());
    if let Some(v) = f.user_id {
        sql.push(" AND user_id = ").bind(v.to_string());
    }
    if let Some(v) = &f.session_id {
        sql.push(" AND session_id = ").bind(v.clone());
    }
    if let Some(v) = f.agent_session_id {
        sql.push(" AND agent_session_id = ").bind(v.to_string());
    }
    if let Some(v) = f.application_id {
        sql.push(" AND application_id = ").bind(v.to_string());
    }
    if let Some(v) = &f.trace_id {
        sql.push(" AND trace_id = ").bind(v.clone());
    }
    if let Some(v) = &f.otel_trace_id {
        sql.push(" AND otel_trace_id = ").bind(v.clone());
    }
    if let Some(v) = &f.event_type {
        sql.push(" AND event_type = ").bind(v.clone());
    }
    if let Some(v) = &f.status {
        sql.push(" AND status = ").bind(v.clone());
    }
    if let Some(v) = &f.tool_name {
        sql.push(" AND tool_name = ").bind(v.clone());
    }
    if let Some(v) = f.started_after {
        sql.push(" AND created_at >= ").bind(v.millis());
    }
    if let Some(v) = f.started_before {
        sql.push(" AND created_at < ").bind(v.millis());
    }
}

const COUNTS: &str = "COUNT(*) AS event_count, \
    SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS ok_count, \
    SUM(CASE WHEN status = 'warn' THEN 1 ELSE 0 END) AS warn_count, \
    SUM(CASE WHEN status LIKE 'error%' THEN 1 ELSE 0 END) AS error_count";

fn trace(row: &sqlx::any::AnyRow) -> Result<TraceSummary> {
    Ok(TraceSummary {
        trace_id: row.text("trace_id")?,
        session_id: row.text("session_id")?,
        started_at: row.ts("started_at")?,
        ended_at: row.ts("ended_at")?,
        event_count: row.int("event_count")?,
        ok_count: row.int("ok_count")?,
        warn_count: row.int("warn_count")?,
        error_count: row.int("error_count")?,
        application_id: row.id("application_id")?,
        user_id: row.opt_id("user_id")?,
        agent_session_id: row.opt_id("agent_session_id")?,
    })
}

impl Store {
    /// Writes a batch of events in one transaction: on SQLite one statement (see
    /// [`SQLITE_INSERT`]), on PostgreSQL multi-row `INSERT`s of at most [`INSERT_CHUNK`] rows.
    pub async fn insert_trace_events(&self, events: &[TraceEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        if self.db.backend() == Backend::Sqlite {
            let rows = Value::Array(events.iter().map(json_row).collect());
            let mut sql = Sql::new(&SQLITE_INSERT);
            sql.bind(rows.to_string()).push(")");
            sql.query().execute(self.db.pool()).await?;
            return Ok(());
        }
        let mut tx = self.db.pool().begin().await?;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new("INSERT INTO trace_events (");
            sql.push(COLUMNS).push(") VALUES ");
            for (n, e) in chunk.iter().enumerate() {
                sql.push(if n == 0 { "(" } else { ", (" });
                push_values(&mut sql, e);
                sql.push(")");
            }
            sql.query().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Events matching `filter` with an id greater than `after`, oldest first: what a live
    /// tail has not shown yet. The cursor and limit of `filter` are ignored.
    pub async fn trace_events_after(
        &self,
        org: OrgId,
        filter: &EventFilter,
        after: Option<uuid::Uuid>,
        limit: u32,
    ) -> Result<Vec<TraceEvent>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS).push(" FROM trace_events");
        push_filters(&mut sql, org, filter);
        if let Some(after) = after {
            sql.push(" AND id > ").bind(after.to_string());
        }
        sql.push(" ORDER BY id LIMIT ").bind(i64::from(limit));
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        rows.iter().map(event).collect()
    }

    /// Deletes every event created before `cutoff` (retention); returns how many went.
    pub async fn delete_trace_events_before(&self, cutoff: Timestamp) -> Result<u64> {
        let mut sql = Sql::new("DELETE FROM trace_events WHERE created_at < ");
        sql.bind(cutoff.millis());
        Ok(sql.query().execute(self.db.pool()).await?.rows_affected())
    }

    /// The organization an application belongs to, for attributing requests that failed
    /// authentication (and so carry no trustworthy organization) to the application they
    /// addressed. `None` when there is no such application.
    pub async fn application_org(&self, app: ApplicationId) -> Result<Option<OrgId>> {
        let mut sql = Sql::new("SELECT org_id FROM applications WHERE id = ");
        sql.bind(app.to_string());
        match sql.query().fetch_optional(self.db.pool()).await? {
            Some(row) => Ok(Some(row.id("org_id")?)),
            None => Ok(None),
        }
    }

    /// Events matching `filter`, newest first.
    pub async fn list_trace_events(
        &self,
        org: OrgId,
        filter: &EventFilter,
    ) -> Result<Page<TraceEvent>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS).push(" FROM trace_events");
        push_filters(&mut sql, org, filter);
        if let Some(after) = filter.after {
            sql.push(" AND id < ").bind(after.0.to_string());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .bind(i64::from(filter.limit) + 1);
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        let events = rows.iter().map(event).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(events, filter.limit, |e| e.id))
    }

    /// Traces with at least one event matching `filter`, newest first. Trace ids are UUID v7,
    /// so they order by start time and serve as the cursor.
    pub async fn list_traces(
        &self,
        org: OrgId,
        filter: &EventFilter,
    ) -> Result<Page<TraceSummary>> {
        let mut sql = Sql::new(
            "SELECT trace_id, MIN(session_id) AS session_id, MIN(created_at) AS started_at, \
             MAX(created_at) AS ended_at, MIN(application_id) AS application_id, \
             MIN(user_id) AS user_id, MIN(agent_session_id) AS agent_session_id, ",
        );
        sql.push(COUNTS).push(" FROM trace_events");
        push_filters(&mut sql, org, filter);
        if let Some(after) = filter.after {
            sql.push(" AND trace_id < ").bind(after.0.to_string());
        }
        sql.push(" GROUP BY trace_id ORDER BY trace_id DESC LIMIT ");
        sql.bind(i64::from(filter.limit) + 1);
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        let traces = rows.iter().map(trace).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(traces, filter.limit, |t| {
            t.trace_id.parse().unwrap_or_default()
        }))
    }

    /// One trace and all its events, oldest first.
    pub async fn get_trace(
        &self,
        org: OrgId,
        trace_id: &str,
        user: Option<UserId>,
    ) -> Result<(TraceSummary, Vec<TraceEvent>)> {
        let filter = EventFilter {
            limit: 1,
            trace_id: Some(trace_id.to_owned()),
            user_id: user,
            ..Default::default()
        };
        let summary = self
            .list_traces(org, &filter)
            .await?
            .items
            .pop()
            .ok_or(StoreError::NotFound)?;
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS).push(" FROM trace_events");
        push_filters(&mut sql, org, &filter);
        sql.push(" ORDER BY created_at, id");
        let events = sql.query().fetch_all(self.db.pool()).await?;
        Ok((summary, events.iter().map(event).collect::<Result<_>>()?))
    }

    /// Aggregates over the events matching `filter`.
    pub async fn trace_stats(&self, org: OrgId, filter: &EventFilter) -> Result<TraceStats> {
        let mut sql = Sql::new("SELECT COUNT(DISTINCT trace_id) AS total_traces, ");
        sql.push(COUNTS);
        sql.push(", CAST(COALESCE(SUM(bytes_in), 0) AS BIGINT) AS bytes_in");
        sql.push(", CAST(COALESCE(SUM(bytes_out), 0) AS BIGINT) AS bytes_out FROM trace_events");
        push_filters(&mut sql, org, filter);
        let row = sql.query().fetch_one(self.db.pool()).await?;
        let total_events = row.int("event_count")?;
        let mut stats = TraceStats {
            total_traces: row.int("total_traces")?,
            total_events,
            ok_events: row.opt_int("ok_count")?.unwrap_or(0),
            warn_events: row.opt_int("warn_count")?.unwrap_or(0),
            error_events: row.opt_int("error_count")?.unwrap_or(0),
            bytes_in: row.int("bytes_in")?,
            bytes_out: row.int("bytes_out")?,
            ..Default::default()
        };
        if total_events > 0 {
            let mut sql = Sql::new("SELECT duration_ms FROM trace_events");
            push_filters(&mut sql, org, filter);
            sql.push(" ORDER BY duration_ms");
            let durations = sql
                .query()
                .fetch_all(self.db.pool())
                .await?
                .iter()
                .map(|r| r.int("duration_ms"))
                .collect::<Result<Vec<_>>>()?;
            stats.latency_p50 = percentile(&durations, 50);
            stats.latency_p95 = percentile(&durations, 95);
            stats.latency_p99 = percentile(&durations, 99);
        }
        let mut sql = Sql::new(
            "SELECT tool_name, integration_id, COUNT(*) AS event_count, \
             SUM(CASE WHEN status LIKE 'error%' THEN 1 ELSE 0 END) AS error_count FROM trace_events",
        );
        push_filters(&mut sql, org, filter);
        sql.push(" AND tool_name IS NOT NULL GROUP BY tool_name, integration_id");
        sql.push(" ORDER BY event_count DESC, tool_name LIMIT 10");
        for row in sql.query().fetch_all(self.db.pool()).await? {
            stats.top_tools.push(ToolStat {
                tool_name: row.text("tool_name")?,
                integration_id: row.opt_id("integration_id")?,
                count: row.int("event_count")?,
                error_count: row.int("error_count")?,
            });
        }
        Ok(stats)
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(super::percentile(&v, 50), 50);
        assert_eq!(super::percentile(&v, 99), 99);
        assert_eq!(super::percentile(&[7], 95), 7);
        assert_eq!(super::percentile(&[], 50), 0);
    }
}
