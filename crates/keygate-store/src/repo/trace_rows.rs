//! How a trace event is laid out in its row: method and status codes, 16- and 8-byte ids,
//! the shared context (`trace_contexts`) an event points to, and the multi-row insert.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use keygate_core::model::TraceEvent;
use keygate_core::{AgentSessionId, ApplicationId, OrgId, Timestamp, UserId};
use sqlx::any::AnyArguments;
use sqlx::{AnyConnection, Arguments};

use super::RowExt;
use crate::db::Backend;
use crate::{Result, StoreError};

/// The methods stored as a code (position + 1); any other is code 0 with its text beside it.
/// Only append: the codes are in stored rows (and in migration 0011).
pub(crate) const EVENT_TYPES: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "roots/list",
    "sampling/createMessage",
    "elicitation/create",
];

/// The statuses stored as a code, like [`EVENT_TYPES`]. The `error_*` ones are 3 to 5.
pub(crate) const STATUSES: &[&str] = &[
    "ok",
    "warn",
    "error_remote",
    "error_proxy",
    "error_auth",
    "denied",
];

/// Counts an event as an error: an `error_*` code, or an uncoded status starting `error`.
pub(crate) const IS_ERROR: &str =
    "(e.status BETWEEN 3 AND 5 OR (e.status = 0 AND e.status_text LIKE 'error%'))";

/// `value`'s code in `list`, and its text when it has none.
pub(crate) fn code_of<'a>(list: &[&str], value: &'a str) -> (i64, Option<&'a str>) {
    match list.iter().position(|v| *v == value) {
        Some(i) => (i as i64 + 1, None),
        None => (0, Some(value)),
    }
}

/// The name a stored code (and its text, for code 0) stands for.
pub(crate) fn name_of(
    list: &'static [&'static str],
    code: i64,
    text: Option<String>,
    col: &str,
) -> Result<Cow<'static, str>> {
    if code == 0 {
        return Ok(Cow::Owned(text.unwrap_or_default()));
    }
    usize::try_from(code - 1)
        .ok()
        .and_then(|i| list.get(i))
        .map(|v| Cow::Borrowed(*v))
        .ok_or_else(|| StoreError::Corrupt(format!("{col} has unknown code {code}")))
}

/// The smallest UUID v7 of the millisecond `t`: every id written at or after `t` is at least
/// this, so it bounds a walk of the primary key by time.
pub(crate) fn id_floor(t: Timestamp) -> uuid::Uuid {
    let ms = u64::try_from(t.millis()).unwrap_or(0).min((1 << 48) - 1);
    uuid::Uuid::from_u128(u128::from(ms) << 80)
}

/// Reads a 16-byte id column (on PostgreSQL selected through `uuid_send`).
pub(crate) fn uuid_col(row: &sqlx::any::AnyRow, col: &str) -> Result<uuid::Uuid> {
    opt_uuid_col(row, col)?.ok_or_else(|| StoreError::Corrupt(format!("{col} is missing")))
}

pub(crate) fn opt_uuid_col(row: &sqlx::any::AnyRow, col: &str) -> Result<Option<uuid::Uuid>> {
    row.blob(col)?
        .map(|b| {
            uuid::Uuid::from_slice(&b)
                .map_err(|_| StoreError::Corrupt(format!("{col} is not a 16-byte id")))
        })
        .transpose()
}

/// Reads a context id column where `''` stands for none.
pub(crate) fn opt_ref<T: std::str::FromStr>(
    row: &sqlx::any::AnyRow,
    col: &str,
) -> Result<Option<T>> {
    match row.text(col)? {
        v if v.is_empty() => Ok(None),
        v => v
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("{col} is not an id"))),
    }
}

/// The columns of `trace_events` an insert fills, in the order [`bind_event`] binds them.
const INSERT_COLUMNS: &str = "id, context_id, created_at, duration_ms, bytes_in, bytes_out, \
    event_type, status, integration_id, tool_name, otel_trace_id, otel_span_id, error_message, \
    event_type_text, status_text, request_json, response_json";
pub(crate) const INSERT_WIDTH: usize = 17;

/// Rows per insert statement, largest first: a batch goes in as statements of these sizes,
/// so each connection prepares (and caches) at most four statements. Each statement is a
/// round trip to sqlx's SQLite worker thread (two thread switches); the largest size keeps a
/// saturated gateway's batch (hundreds of events per 20 ms) to a few of them. 512 rows bind
/// 8,704 values, within SQLite's 32,766 and PostgreSQL's 65,535.
pub(crate) const INSERT_ROWS: [usize; 4] = [512, 64, 8, 1];

/// The insert of `rows` events. SQLite gets anonymous `?` placeholders: sqlx looks a named
/// one (`$n`) up by a scan of all names, which makes a multi-row insert cost the square of
/// its size. PostgreSQL casts the id's text to `uuid`.
fn insert_sql(backend: Backend, rows: usize) -> String {
    let mut sql = format!("INSERT INTO trace_events ({INSERT_COLUMNS}) VALUES ");
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..INSERT_WIDTH {
            if col > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    n += 1;
                    if col == 0 {
                        sql.push_str(&format!("CAST(${n} AS uuid)"));
                    } else {
                        sql.push_str(&format!("${n}"));
                    }
                }
            }
        }
        sql.push(')');
    }
    sql
}

static INSERTS: LazyLock<[[String; 4]; 2]> = LazyLock::new(|| {
    [Backend::Sqlite, Backend::Postgres].map(|b| INSERT_ROWS.map(|rows| insert_sql(b, rows)))
});

/// The cached insert text of `rows` (one of [`INSERT_ROWS`]) events.
pub(crate) fn insert_statement(backend: Backend, rows: usize) -> &'static str {
    let b = usize::from(backend == Backend::Postgres);
    let i = INSERT_ROWS
        .iter()
        .position(|r| *r == rows)
        .expect("a row count of INSERT_ROWS");
    &INSERTS[b][i]
}

/// Binds one event's values, in [`INSERT_COLUMNS`] order; ids and texts are borrowed from the
/// event, not copied (the driver copies them once more on its way to the database anyway).
pub(crate) fn bind_event<'q>(
    args: &mut AnyArguments<'q>,
    backend: Backend,
    e: &'q TraceEvent,
    context_id: i64,
) -> std::result::Result<(), sqlx::error::BoxDynError> {
    match backend {
        Backend::Sqlite => args.add(e.id.as_bytes().as_slice())?,
        Backend::Postgres => args.add(e.id.to_string())?,
    }
    args.add(context_id)?;
    args.add(e.created_at.millis())?;
    args.add(e.duration_ms)?;
    args.add(e.bytes_in)?;
    args.add(e.bytes_out)?;
    let (event_type, event_type_text) = code_of(EVENT_TYPES, &e.event_type);
    let (status, status_text) = code_of(STATUSES, &e.status);
    args.add(event_type)?;
    args.add(status)?;
    args.add(e.integration_id.as_ref().map(|v| v.0.as_bytes().as_slice()))?;
    args.add(e.tool_name.as_deref())?;
    args.add(e.otel_trace_id.as_ref().map(|v| v.0.as_slice()))?;
    args.add(e.otel_span_id.as_ref().map(|v| v.0.as_slice()))?;
    args.add(e.error_message.as_deref())?;
    args.add(event_type_text)?;
    args.add(status_text)?;
    args.add(e.request_json.as_ref().map(super::to_json))?;
    args.add(e.response_json.as_ref().map(super::to_json))?;
    Ok(())
}

/// What every event of one session shares: one row of `trace_contexts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ContextKey {
    org: OrgId,
    trace_id: uuid::Uuid,
    session_id: String,
    agent_session_id: Option<AgentSessionId>,
    application_id: ApplicationId,
    user_id: Option<UserId>,
}

impl ContextKey {
    fn of(e: &TraceEvent) -> Self {
        Self {
            org: e.org_id,
            trace_id: e.trace_id,
            session_id: e.session_id.clone(),
            agent_session_id: e.agent_session_id,
            application_id: e.application_id,
            user_id: e.user_id,
        }
    }

    fn matches(&self, e: &TraceEvent) -> bool {
        self.org == e.org_id
            && self.trace_id == e.trace_id
            && self.session_id == e.session_id
            && self.agent_session_id == e.agent_session_id
            && self.application_id == e.application_id
            && self.user_id == e.user_id
    }

    /// Its row's id: inserted unless it exists (then locked against retention on PostgreSQL
    /// until the events that point to it commit).
    async fn resolve(&self, conn: &mut AnyConnection, backend: Backend, at: i64) -> Result<i64> {
        let texts = [
            self.org.to_string(),
            self.trace_id.to_string(),
            self.session_id.clone(),
            self.agent_session_id
                .map(|v| v.to_string())
                .unwrap_or_default(),
            self.application_id.to_string(),
            self.user_id.map(|v| v.to_string()).unwrap_or_default(),
        ];
        let mut insert = crate::sql::Sql::new(
            "INSERT INTO trace_contexts (org_id, trace_id, session_id, agent_session_id, \
             application_id, user_id, created_at) VALUES (",
        );
        insert
            .bind_list(texts.iter().map(String::as_str))
            .push(", ");
        insert.bind(at).push(
            ") ON CONFLICT (org_id, trace_id, session_id, agent_session_id, application_id, \
             user_id) DO NOTHING",
        );
        insert.query().execute(&mut *conn).await?;
        let mut select =
            crate::sql::Sql::new("SELECT CAST(id AS BIGINT) AS id FROM trace_contexts");
        for (i, (col, v)) in ["org_id", "trace_id", "session_id", "agent_session_id"]
            .into_iter()
            .chain(["application_id", "user_id"])
            .zip(&texts)
            .enumerate()
        {
            select.push(if i == 0 { " WHERE " } else { " AND " });
            select.push(col).push(" = ").bind(v.as_str());
        }
        if backend == Backend::Postgres {
            select.push(" FOR SHARE");
        }
        let row = select.query().fetch_one(&mut *conn).await?;
        row.int("id")
    }
}

/// How long a remembered context id is trusted: retention deletes a context only when no
/// event has pointed to it for the whole retention period, so a recently used id is live.
const CONTEXT_TTL: Duration = Duration::from_secs(600);

/// Remembered contexts at most; past it the memory starts over.
const CONTEXT_CAPACITY: usize = 65_536;

/// The context ids this process used lately, so a batch of a known session costs no query.
#[derive(Debug, Default)]
pub(crate) struct ContextCache {
    /// Seeded per process; a collision costs only a lookup (every hit is checked by key).
    hasher: foldhash::fast::RandomState,
    known: Mutex<HashMap<u64, (ContextKey, i64, Instant), foldhash::fast::RandomState>>,
}

/// Contexts a batch resolved from the database, remembered once the batch commits.
pub(crate) type Resolved = Vec<(u64, ContextKey, i64)>;

impl ContextCache {
    fn hash(&self, e: &TraceEvent) -> u64 {
        self.hasher.hash_one((
            e.org_id,
            e.trace_id,
            &e.session_id,
            e.agent_session_id,
            e.application_id,
            e.user_id,
        ))
    }

    /// The context id of every event of `events`, resolving the ones not remembered.
    pub(crate) async fn ids(
        &self,
        conn: &mut AnyConnection,
        backend: Backend,
        events: &[TraceEvent],
    ) -> Result<(Vec<i64>, Resolved)> {
        let hashes: Vec<u64> = events.iter().map(|e| self.hash(e)).collect();
        let mut ids: Vec<Option<i64>> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            events
                .iter()
                .zip(&hashes)
                .map(|(e, h)| {
                    known
                        .get(h)
                        .filter(|(key, _, at)| key.matches(e) && at.elapsed() < CONTEXT_TTL)
                        .map(|(_, id, _)| *id)
                })
                .collect()
        };
        let mut resolved: Resolved = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if ids[i].is_some() {
                continue;
            }
            let found = resolved
                .iter()
                .find(|(h, key, _)| *h == hashes[i] && key.matches(e))
                .map(|(_, _, id)| *id);
            let id = match found {
                Some(id) => id,
                None => {
                    let key = ContextKey::of(e);
                    let id = key.resolve(conn, backend, e.created_at.millis()).await?;
                    resolved.push((hashes[i], key, id));
                    id
                }
            };
            ids[i] = Some(id);
        }
        Ok((
            ids.into_iter().map(|id| id.unwrap_or_default()).collect(),
            resolved,
        ))
    }

    /// Remembers what a committed batch resolved.
    pub(crate) fn remember(&self, resolved: Resolved) {
        if resolved.is_empty() {
            return;
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() + resolved.len() > CONTEXT_CAPACITY {
            known.clear();
        }
        let now = Instant::now();
        for (h, key, id) in resolved {
            known.insert(h, (key, id, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_names_keep_their_text() {
        for list in [EVENT_TYPES, STATUSES] {
            for name in list {
                let (code, text) = code_of(list, name);
                assert!(code > 0 && text.is_none());
                assert_eq!(name_of(list, code, None, "c").unwrap(), *name);
            }
        }
        let (code, text) = code_of(EVENT_TYPES, "vendor/thing");
        assert_eq!((code, text), (0, Some("vendor/thing")));
        assert_eq!(
            name_of(EVENT_TYPES, 0, text.map(str::to_owned), "c").unwrap(),
            "vendor/thing"
        );
        assert!(name_of(STATUSES, 99, None, "c").is_err());
        assert_eq!(code_of(STATUSES, "error_remote").0, 3);
        assert_eq!(code_of(STATUSES, "error_auth").0, 5);
    }

    #[test]
    fn the_id_floor_orders_below_every_id_of_its_millisecond() {
        let t = Timestamp::now();
        let floor = id_floor(t);
        let later = uuid::Uuid::now_v7();
        assert!(floor <= later);
        assert!(id_floor(t.plus_seconds(1)) > later);
    }
}
