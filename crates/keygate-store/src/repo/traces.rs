//! Trace events and the traces (per downstream session) they group into.
//!
//! Storage (migration 0011): an event row holds what differs per exchange — its 16-byte id
//! (UUID v7, the primary key), creation time, duration, bytes, the method and status as small
//! codes, integration id and OpenTelemetry ids as 16/8-byte blobs, tool name, error — and
//! `context_id`, a small integer naming one row of `trace_contexts`: the organization, trace,
//! session, agent session, application and user that every event of a session shares. Ids
//! follow write time (the writer assigns them just before the insert), so the primary key is
//! also the time index: paging, the live tail, time windows and retention walk it, and the
//! only other per-event index is `context_id`.

use keygate_core::model::TraceEvent;
use keygate_core::{
    AgentSessionId, ApplicationId, IntegrationId, OrgId, OtelId, OtelTraceId, Timestamp, UserId,
};
use sqlx::Arguments;
use sqlx::any::AnyArguments;

use super::RowExt;
use super::trace_rows::{
    EVENT_TYPES, INSERT_ROWS, INSERT_WIDTH, IS_ERROR, STATUSES, bind_event, code_of, id_floor,
    insert_statement, name_of, opt_ref, opt_uuid_col, uuid_col,
};
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

/// The columns of an event and its context, after `SELECT`: ids as 16-byte blobs, small
/// integers widened so both backends read them as `BIGINT`.
fn event_columns(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "e.id AS id, e.created_at, e.duration_ms, e.bytes_in, e.bytes_out, e.event_type, \
             e.status, e.integration_id, e.tool_name, e.otel_trace_id, e.otel_span_id, \
             e.error_message, e.event_type_text, e.status_text, e.request_json, e.response_json, \
             c.org_id, c.trace_id, c.session_id, c.agent_session_id, c.application_id, c.user_id"
        }
        Backend::Postgres => {
            "uuid_send(e.id) AS id, e.created_at, CAST(e.duration_ms AS BIGINT) AS duration_ms, \
             e.bytes_in, e.bytes_out, CAST(e.event_type AS BIGINT) AS event_type, \
             CAST(e.status AS BIGINT) AS status, e.integration_id, e.tool_name, e.otel_trace_id, \
             e.otel_span_id, e.error_message, e.event_type_text, e.status_text, e.request_json, \
             e.response_json, c.org_id, c.trace_id, c.session_id, c.agent_session_id, \
             c.application_id, c.user_id"
        }
    }
}

/// Events joined to their contexts. Without a filter on the context (other than the
/// organization) SQLite is kept off the `context_id` index (`+`), so it walks the primary key
/// in the order asked for instead of reading every event of the organization and sorting.
fn push_from(sql: &mut Sql, backend: Backend, f: &EventFilter) {
    let by_context = f.user_id.is_some()
        || f.session_id.is_some()
        || f.agent_session_id.is_some()
        || f.application_id.is_some()
        || f.trace_id.is_some();
    sql.push(" FROM trace_events e JOIN trace_contexts c ON c.id = ");
    sql.push(if backend == Backend::Sqlite && !by_context {
        "+e.context_id"
    } else {
        "e.context_id"
    });
}

/// Binds an event id as the column stores it: a blob on SQLite, a `uuid` on PostgreSQL.
fn bind_id(sql: &mut Sql, backend: Backend, id: uuid::Uuid) {
    match backend {
        Backend::Sqlite => {
            sql.bind(id.as_bytes().to_vec());
        }
        Backend::Postgres => {
            sql.push("CAST(").bind(id.to_string()).push(" AS uuid)");
        }
    }
}

fn event(row: &sqlx::any::AnyRow) -> Result<TraceEvent> {
    Ok(TraceEvent {
        id: uuid_col(row, "id")?,
        org_id: row.id("org_id")?,
        created_at: row.ts("created_at")?,
        trace_id: row
            .text("trace_id")?
            .parse()
            .map_err(|_| StoreError::Corrupt("trace_id is not a UUID".into()))?,
        session_id: row.text("session_id")?,
        agent_session_id: opt_ref(row, "agent_session_id")?,
        application_id: row.id("application_id")?,
        user_id: opt_ref(row, "user_id")?,
        event_type: name_of(
            EVENT_TYPES,
            row.int("event_type")?,
            row.opt_text("event_type_text")?,
            "event_type",
        )?,
        status: name_of(
            STATUSES,
            row.int("status")?,
            row.opt_text("status_text")?,
            "status",
        )?,
        duration_ms: row.int("duration_ms")?,
        integration_id: opt_uuid_col(row, "integration_id")?.map(IntegrationId),
        tool_name: row.opt_text("tool_name")?,
        error_message: row.opt_text("error_message")?,
        bytes_in: row.int("bytes_in")?,
        bytes_out: row.int("bytes_out")?,
        request_json: row.opt_json("request_json")?,
        response_json: row.opt_json("response_json")?,
        otel_trace_id: row
            .blob("otel_trace_id")?
            .and_then(|b| OtelId::from_slice(&b)),
        otel_span_id: row
            .blob("otel_span_id")?
            .and_then(|b| OtelId::from_slice(&b)),
    })
}

/// Appends ` WHERE … AND …` for the organization and every filter that is set (not the
/// cursor or limit).
fn push_filters(sql: &mut Sql, backend: Backend, org: OrgId, f: &EventFilter) {
    sql.push(" WHERE c.org_id = ").bind(org.to_string());
    if let Some(v) = f.user_id {
        sql.push(" AND c.user_id = ").bind(v.to_string());
    }
    if let Some(v) = &f.session_id {
        sql.push(" AND c.session_id = ").bind(v.clone());
    }
    if let Some(v) = f.agent_session_id {
        sql.push(" AND c.agent_session_id = ").bind(v.to_string());
    }
    if let Some(v) = f.application_id {
        sql.push(" AND c.application_id = ").bind(v.to_string());
    }
    if let Some(v) = &f.trace_id {
        sql.push(" AND c.trace_id = ").bind(v.clone());
    }
    if let Some(v) = &f.otel_trace_id {
        match v.parse::<OtelTraceId>() {
            Ok(id) => sql.push(" AND e.otel_trace_id = ").bind(id.0.to_vec()),
            Err(_) => sql.push(" AND 1 = 0"), // no stored id is malformed
        };
    }
    if let Some(v) = &f.event_type {
        push_code(sql, "event_type", code_of(EVENT_TYPES, v));
    }
    if let Some(v) = &f.status {
        push_code(sql, "status", code_of(STATUSES, v));
    }
    if let Some(v) = &f.tool_name {
        sql.push(" AND e.tool_name = ").bind(v.clone());
    }
    if let Some(v) = f.started_after {
        sql.push(" AND e.created_at >= ").bind(v.millis());
        // An event's id is taken when it is written, after it was created, so the primary
        // key bounds the walk (a minute's slack for a clock that stepped back).
        sql.push(" AND e.id >= ");
        bind_id(sql, backend, id_floor(v.plus_seconds(-CLOCK_SLACK_SECS)));
    }
    if let Some(v) = f.started_before {
        sql.push(" AND e.created_at < ").bind(v.millis());
    }
}

/// How far the clock may step back between an event's creation and its write.
const CLOCK_SLACK_SECS: i64 = 60;

/// ` AND e.{col} = code` (and, for a name without a code, its text).
fn push_code(sql: &mut Sql, col: &str, (code, text): (i64, Option<&str>)) {
    sql.push(" AND e.").push(col).push(" = ").bind(code);
    if let Some(text) = text {
        sql.push(" AND e.").push(col).push("_text = ").bind(text);
    }
}

/// What [`Store::delete_trace_events_before`] did in one batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct PurgeBatch {
    /// Events deleted.
    pub events: u64,
    /// Contexts deleted (no event points to them any more).
    pub contexts: u64,
    /// Where the next batch starts (the last id this one covered).
    pub next: Option<uuid::Uuid>,
    /// Nothing older than the cutoff is left.
    pub done: bool,
}

fn counts() -> String {
    format!(
        "COUNT(*) AS event_count, \
         SUM(CASE WHEN e.status = 1 THEN 1 ELSE 0 END) AS ok_count, \
         SUM(CASE WHEN e.status = 2 THEN 1 ELSE 0 END) AS warn_count, \
         SUM(CASE WHEN {IS_ERROR} THEN 1 ELSE 0 END) AS error_count"
    )
}

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
    /// Writes a batch of events in one transaction: first the contexts not yet known (see
    /// `trace_rows::ContextCache`), then multi-row inserts of [`INSERT_ROWS`] sizes.
    pub async fn insert_trace_events(&self, events: &[TraceEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let backend = self.db.backend();
        let mut tx = self.db.pool().begin().await?;
        let (contexts, resolved) = self.trace_contexts.ids(&mut tx, backend, events).await?;
        let mut at = 0;
        for rows in INSERT_ROWS {
            while events.len() - at >= rows {
                let mut args = AnyArguments::default();
                args.reserve(rows * INSERT_WIDTH, 0);
                for (e, context) in events[at..at + rows].iter().zip(&contexts[at..]) {
                    bind_event(&mut args, backend, e, *context)
                        .map_err(|e| StoreError::Database(sqlx::Error::Encode(e)))?;
                }
                sqlx::query_with(insert_statement(backend, rows), args)
                    .execute(&mut *tx)
                    .await?;
                at += rows;
            }
        }
        tx.commit().await?;
        self.trace_contexts.remember(resolved);
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
        let backend = self.db.backend();
        let mut sql = Sql::new("SELECT ");
        sql.push(event_columns(backend));
        push_from(&mut sql, backend, filter);
        push_filters(&mut sql, backend, org, filter);
        if let Some(after) = after {
            sql.push(" AND e.id > ");
            bind_id(&mut sql, backend, after);
        }
        sql.push(" ORDER BY e.id LIMIT ").bind(i64::from(limit));
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        rows.iter().map(event).collect()
    }

    /// Retention, one bounded batch: deletes at most `limit` events (walking the primary key
    /// from `after`) whose id and creation time are both before `cutoff`, and, once no such
    /// event is left, up to `limit` contexts no event points to any more. Call again from
    /// `next` until `done`.
    pub async fn delete_trace_events_before(
        &self,
        cutoff: Timestamp,
        after: Option<uuid::Uuid>,
        limit: u32,
    ) -> Result<PurgeBatch> {
        let backend = self.db.backend();
        let limit = limit.max(1);
        let floor = id_floor(cutoff);
        let range = |sql: &mut Sql| {
            sql.push(" WHERE e.id < ");
            bind_id(sql, backend, floor);
            if let Some(after) = after {
                sql.push(" AND e.id > ");
                bind_id(sql, backend, after);
            }
        };
        // The last id of this batch's stretch of the key; none: the rest is shorter.
        let mut sql = Sql::new(match backend {
            Backend::Sqlite => "SELECT e.id AS id FROM trace_events e",
            Backend::Postgres => "SELECT uuid_send(e.id) AS id FROM trace_events e",
        });
        range(&mut sql);
        sql.push(" ORDER BY e.id LIMIT 1 OFFSET ")
            .bind(i64::from(limit - 1));
        let last = match sql.query().fetch_optional(self.db.pool()).await? {
            Some(row) => Some(uuid_col(&row, "id")?),
            None => None,
        };
        let mut sql = Sql::new("DELETE FROM trace_events AS e");
        range(&mut sql);
        if let Some(last) = last {
            sql.push(" AND e.id <= ");
            bind_id(&mut sql, backend, last);
        }
        sql.push(" AND e.created_at < ").bind(cutoff.millis());
        let events = sql.query().execute(self.db.pool()).await?.rows_affected();
        if last.is_some() {
            return Ok(PurgeBatch {
                events,
                contexts: 0,
                next: last,
                done: false,
            });
        }
        let mut sql = Sql::new(
            "DELETE FROM trace_contexts WHERE id IN (SELECT c.id FROM trace_contexts c \
             WHERE c.created_at < ",
        );
        sql.bind(cutoff.millis()).push(
            " AND NOT EXISTS (SELECT 1 FROM trace_events e WHERE e.context_id = c.id) LIMIT ",
        );
        sql.bind(i64::from(limit)).push(")");
        let contexts = sql.query().execute(self.db.pool()).await?.rows_affected();
        Ok(PurgeBatch {
            events,
            contexts,
            next: after,
            done: contexts < u64::from(limit),
        })
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
        let backend = self.db.backend();
        let mut sql = Sql::new("SELECT ");
        sql.push(event_columns(backend));
        push_from(&mut sql, backend, filter);
        push_filters(&mut sql, backend, org, filter);
        if let Some(after) = filter.after {
            sql.push(" AND e.id < ");
            bind_id(&mut sql, backend, after.0);
        }
        sql.push(" ORDER BY e.id DESC LIMIT ")
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
        let backend = self.db.backend();
        let mut sql = Sql::new(
            "SELECT c.trace_id AS trace_id, MIN(c.session_id) AS session_id, \
             MIN(e.created_at) AS started_at, MAX(e.created_at) AS ended_at, \
             MIN(c.application_id) AS application_id, MIN(NULLIF(c.user_id, '')) AS user_id, \
             MIN(NULLIF(c.agent_session_id, '')) AS agent_session_id, ",
        );
        sql.push(&counts());
        push_from(&mut sql, backend, filter);
        push_filters(&mut sql, backend, org, filter);
        if let Some(after) = filter.after {
            sql.push(" AND c.trace_id < ").bind(after.0.to_string());
        }
        sql.push(" GROUP BY c.trace_id ORDER BY c.trace_id DESC LIMIT ");
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
        let backend = self.db.backend();
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
        sql.push(event_columns(backend));
        push_from(&mut sql, backend, &filter);
        push_filters(&mut sql, backend, org, &filter);
        sql.push(" ORDER BY e.created_at, e.id");
        let events = sql.query().fetch_all(self.db.pool()).await?;
        Ok((summary, events.iter().map(event).collect::<Result<_>>()?))
    }

    /// Aggregates over the events matching `filter`.
    pub async fn trace_stats(&self, org: OrgId, filter: &EventFilter) -> Result<TraceStats> {
        let backend = self.db.backend();
        let mut sql = Sql::new("SELECT COUNT(DISTINCT c.trace_id) AS total_traces, ");
        sql.push(&counts());
        sql.push(", CAST(COALESCE(SUM(e.bytes_in), 0) AS BIGINT) AS bytes_in");
        sql.push(", CAST(COALESCE(SUM(e.bytes_out), 0) AS BIGINT) AS bytes_out");
        push_from(&mut sql, backend, filter);
        push_filters(&mut sql, backend, org, filter);
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
            let mut sql = Sql::new("SELECT CAST(e.duration_ms AS BIGINT) AS duration_ms");
            push_from(&mut sql, backend, filter);
            push_filters(&mut sql, backend, org, filter);
            sql.push(" ORDER BY e.duration_ms");
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
        let mut sql = Sql::new(&format!(
            "SELECT e.tool_name AS tool_name, e.integration_id AS integration_id, \
             COUNT(*) AS event_count, SUM(CASE WHEN {IS_ERROR} THEN 1 ELSE 0 END) AS error_count"
        ));
        push_from(&mut sql, backend, filter);
        push_filters(&mut sql, backend, org, filter);
        sql.push(" AND e.tool_name IS NOT NULL GROUP BY e.tool_name, e.integration_id");
        sql.push(" ORDER BY event_count DESC, tool_name LIMIT 10");
        for row in sql.query().fetch_all(self.db.pool()).await? {
            stats.top_tools.push(ToolStat {
                tool_name: row.text("tool_name")?,
                integration_id: opt_uuid_col(&row, "integration_id")?.map(IntegrationId),
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

#[cfg(test)]
#[path = "traces_tests.rs"]
mod store_tests;
