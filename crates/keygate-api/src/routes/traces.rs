//! `/traces`, `/traces/stats`, `/traces/:traceId`, `/events`, `/events/stream`, `/mcp-events`.
//! Members see the events of their own agents; admins the organization's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use keygate_core::model::TraceEvent;
use keygate_core::{AgentSessionId, ApplicationId, Timestamp, UserId};
use keygate_store::{EventFilter, TraceSummary};
use keygate_trace::live::Tail;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::page_request;
use crate::ApiState;
use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody, OrNotFound};
use crate::extract::{ApiQuery, parse_id};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_traces))
        .routes(routes!(trace_stats))
        .routes(routes!(get_trace))
        .routes(routes!(list_events))
        .routes(routes!(stream_events))
        .routes(routes!(my_events))
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct TraceQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    /// The application (agent) id.
    agent_id: Option<String>,
    application_id: Option<String>,
    agent_session_id: Option<String>,
    started_after: Option<String>,
    started_before: Option<String>,
    event_type: Option<String>,
    status: Option<String>,
    /// Events of this tool only (`toolName` as recorded).
    tool_name: Option<String>,
    /// Events of this OpenTelemetry trace only (`otelTraceId`, 32 hex digits).
    otel_trace_id: Option<String>,
    /// `1d`, `7d` or `30d` (stats only).
    period: Option<String>,
}

fn time_param(field: &str, v: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    v.filter(|s| !s.is_empty())
        .map(|s| {
            Timestamp::parse_iso(s)
                .ok_or_else(|| ApiError::validation(field, "must be an ISO 8601 timestamp"))
        })
        .transpose()
}

/// A W3C trace id: 32 hex digits, compared in lowercase as stored.
fn otel_trace_id(v: Option<&str>) -> Result<Option<String>, ApiError> {
    v.filter(|s| !s.is_empty())
        .map(|s| {
            if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(s.to_ascii_lowercase())
            } else {
                Err(ApiError::validation("otelTraceId", "must be 32 hex digits"))
            }
        })
        .transpose()
}

fn filter(caller: &Caller, q: &TraceQuery) -> Result<EventFilter, ApiError> {
    let page = page_request(q.limit, q.cursor.as_deref())?;
    let opt_id = |field: &str, v: &Option<String>| -> Result<Option<String>, ApiError> {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| parse_id::<uuid::Uuid>(s, field).map(|u| u.to_string()))
            .transpose()
    };
    let agent = opt_id("agentId", &q.agent_id)?;
    let application = opt_id("applicationId", &q.application_id)?;
    if agent.is_some() && application.is_some() && agent != application {
        return Err(ApiError::validation("applicationId", "contradicts agentId"));
    }
    let mut user_id: Option<UserId> =
        opt_id("userId", &q.user_id)?.map(|s| s.parse().expect("checked UUID"));
    if !caller.is_privileged() {
        // Members see only their own agents' events.
        let me = caller.user_id();
        if user_id.is_some() && user_id != me {
            return Err(ApiError::Forbidden(
                "Members may only read their own traces".into(),
            ));
        }
        user_id = me;
    }
    Ok(EventFilter {
        limit: page.limit,
        after: page.after,
        user_id,
        session_id: q.session_id.clone().filter(|s| !s.is_empty()),
        agent_session_id: opt_id("agentSessionId", &q.agent_session_id)?
            .map(|s| s.parse::<AgentSessionId>().expect("checked UUID")),
        application_id: agent
            .or(application)
            .map(|s| s.parse::<ApplicationId>().expect("checked UUID")),
        trace_id: None,
        otel_trace_id: otel_trace_id(q.otel_trace_id.as_deref())?,
        event_type: q.event_type.clone().filter(|s| !s.is_empty()),
        status: q.status.clone().filter(|s| !s.is_empty()),
        tool_name: q.tool_name.clone().filter(|s| !s.is_empty()),
        started_after: time_param("startedAfter", q.started_after.as_deref())?,
        started_before: time_param("startedBefore", q.started_before.as_deref())?,
    })
}

/// A trace: the events of one downstream MCP session.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TraceView {
    trace_id: String,
    session_id: String,
    started_at: Timestamp,
    ended_at: Timestamp,
    event_count: i64,
    ok_count: i64,
    warn_count: i64,
    error_count: i64,
    agent_id: String,
    agent_name: Option<String>,
    owner_user_id: Option<String>,
    owner_email: Option<String>,
    agent_session_id: Option<String>,
    agent_session_name: Option<String>,
}

/// One recorded JSON-RPC exchange.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct EventView {
    id: String,
    created_at: Timestamp,
    trace_id: String,
    session_id: String,
    agent_session_id: Option<String>,
    agent_id: String,
    user_id: Option<String>,
    event_type: String,
    status: String,
    duration_ms: i64,
    integration_id: Option<String>,
    tool_name: Option<String>,
    error_message: Option<String>,
    bytes_in: i64,
    bytes_out: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_json: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json: Option<serde_json::Value>,
    /// The W3C trace id of the request's OpenTelemetry spans (what a collector received).
    otel_trace_id: Option<String>,
    /// The id of the gateway's server span for the request.
    otel_span_id: Option<String>,
}

impl From<&TraceEvent> for EventView {
    fn from(e: &TraceEvent) -> Self {
        Self {
            id: e.id.to_string(),
            created_at: e.created_at,
            trace_id: e.trace_id.to_string(),
            session_id: e.session_id.clone(),
            agent_session_id: e.agent_session_id.map(|v| v.to_string()),
            agent_id: e.application_id.to_string(),
            user_id: e.user_id.map(|v| v.to_string()),
            event_type: e.event_type.to_string(),
            status: e.status.to_string(),
            duration_ms: e.duration_ms,
            integration_id: e.integration_id.map(|v| v.to_string()),
            tool_name: e.tool_name.clone(),
            error_message: e.error_message.clone(),
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
            request_json: e.request_json.clone(),
            response_json: e.response_json.clone(),
            otel_trace_id: e.otel_trace_id.map(|v| v.to_string()),
            otel_span_id: e.otel_span_id.map(|v| v.to_string()),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TraceList {
    items: Vec<TraceView>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct TraceWithEvents {
    trace: TraceView,
    events: Vec<EventView>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct EventList {
    items: Vec<EventView>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Latency {
    p50: i64,
    p95: i64,
    p99: i64,
}

#[derive(Serialize, ToSchema)]
struct Bytes {
    #[serde(rename = "in")]
    bytes_in: i64,
    #[serde(rename = "out")]
    bytes_out: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TopTool {
    tool_name: String,
    integration_id: Option<String>,
    count: i64,
    error_count: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct StatsView {
    total_traces: i64,
    total_events: i64,
    ok_events: i64,
    warn_events: i64,
    error_events: i64,
    error_rate: f64,
    latency: Latency,
    bytes_transferred: Bytes,
    top_tools: Vec<TopTool>,
}

/// Resolves display names for traces, once per id within a request.
#[derive(Default)]
struct Names {
    apps: HashMap<ApplicationId, Option<String>>,
    users: HashMap<UserId, Option<String>>,
    sessions: HashMap<AgentSessionId, Option<String>>,
}

impl Names {
    async fn view(&mut self, state: &ApiState, caller: &Caller, t: &TraceSummary) -> TraceView {
        use std::collections::hash_map::Entry;
        let store = state.store();
        if let Entry::Vacant(slot) = self.apps.entry(t.application_id) {
            slot.insert(
                store
                    .get_application(caller.org, t.application_id)
                    .await
                    .ok()
                    .map(|a| a.name),
            );
        }
        if let Some(u) = t.user_id
            && let Entry::Vacant(slot) = self.users.entry(u)
        {
            slot.insert(store.get_user(caller.org, u).await.ok().map(|u| u.email));
        }
        if let Some(s) = t.agent_session_id
            && let Entry::Vacant(slot) = self.sessions.entry(s)
        {
            let session = store
                .get_agent_session(caller.org, t.application_id, s)
                .await;
            slot.insert(session.ok().and_then(|s| s.name));
        }
        TraceView {
            trace_id: t.trace_id.clone(),
            session_id: t.session_id.clone(),
            started_at: t.started_at,
            ended_at: t.ended_at,
            event_count: t.event_count,
            ok_count: t.ok_count,
            warn_count: t.warn_count,
            error_count: t.error_count,
            agent_id: t.application_id.to_string(),
            agent_name: self.apps[&t.application_id].clone(),
            owner_user_id: t.user_id.map(|u| u.to_string()),
            owner_email: t.user_id.and_then(|u| self.users[&u].clone()),
            agent_session_id: t.agent_session_id.map(|s| s.to_string()),
            agent_session_name: t.agent_session_id.and_then(|s| self.sessions[&s].clone()),
        }
    }
}

/// List traces, newest first.
#[utoipa::path(get, path = "/traces", tag = "traces", params(TraceQuery), security(("bearer" = [])),
    responses((status = 200, body = TraceList), (status = 400, body = ErrorBody)))]
async fn list_traces(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TraceQuery>,
) -> Result<Json<TraceList>, ApiError> {
    let f = filter(&caller, &q)?;
    let page = state.store().list_traces(caller.org, &f).await?;
    let mut names = Names::default();
    let mut items = Vec::with_capacity(page.items.len());
    for t in &page.items {
        items.push(names.view(&state, &caller, t).await);
    }
    Ok(Json(TraceList {
        items,
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// Aggregates over a period (default `7d`) or an explicit window.
#[utoipa::path(get, path = "/traces/stats", tag = "traces", params(TraceQuery), security(("bearer" = [])),
    responses((status = 200, body = StatsView), (status = 400, body = ErrorBody)))]
async fn trace_stats(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TraceQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let mut f = filter(&caller, &q)?;
    let days = match q.period.as_deref() {
        Some("1d") => Some(1),
        Some("7d") => Some(7),
        Some("30d") => Some(30),
        None | Some("") if f.started_after.is_none() => Some(7),
        None | Some("") => None,
        Some(_) => return Err(ApiError::validation("period", "must be 1d, 7d or 30d")),
    };
    if let Some(days) = days {
        f.started_after = Some(Timestamp::now().plus_seconds(-days * 86_400));
    }
    let s = state.store().trace_stats(caller.org, &f).await?;
    let error_rate = if s.total_events == 0 {
        0.0
    } else {
        s.error_events as f64 / s.total_events as f64
    };
    Ok(Json(StatsView {
        total_traces: s.total_traces,
        total_events: s.total_events,
        ok_events: s.ok_events,
        warn_events: s.warn_events,
        error_events: s.error_events,
        error_rate,
        latency: Latency {
            p50: s.latency_p50,
            p95: s.latency_p95,
            p99: s.latency_p99,
        },
        bytes_transferred: Bytes {
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
        },
        top_tools: s
            .top_tools
            .into_iter()
            .map(|t| TopTool {
                tool_name: t.tool_name,
                integration_id: t.integration_id.map(|i| i.to_string()),
                count: t.count,
                error_count: t.error_count,
            })
            .collect(),
    }))
}

/// One trace with its events, oldest first.
#[utoipa::path(get, path = "/traces/{traceId}", tag = "traces", params(("traceId" = String, Path)),
    security(("bearer" = [])), responses((status = 200, body = TraceWithEvents), (status = 404, body = ErrorBody)))]
async fn get_trace(
    State(state): State<ApiState>,
    caller: Caller,
    Path(trace_id): Path<String>,
) -> Result<Json<TraceWithEvents>, ApiError> {
    parse_id::<uuid::Uuid>(&trace_id, "traceId")?;
    let user = if caller.is_privileged() {
        None
    } else {
        caller.user_id()
    };
    if !caller.is_privileged() && user.is_none() {
        return Err(ApiError::NotFound("Trace not found"));
    }
    let (summary, events) = state
        .store()
        .get_trace(caller.org, &trace_id, user)
        .await
        .or_not_found("Trace not found")?;
    let trace = Names::default().view(&state, &caller, &summary).await;
    Ok(Json(TraceWithEvents {
        trace,
        events: events.iter().map(EventView::from).collect(),
    }))
}

/// List trace events, newest first.
#[utoipa::path(get, path = "/events", tag = "traces", params(TraceQuery), security(("bearer" = [])),
    responses((status = 200, body = EventList), (status = 400, body = ErrorBody)))]
async fn list_events(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TraceQuery>,
) -> Result<Json<EventList>, ApiError> {
    let f = filter(&caller, &q)?;
    let page = state.store().list_trace_events(caller.org, &f).await?;
    Ok(Json(EventList {
        items: page.items.iter().map(EventView::from).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// Follows trace events live as `text/event-stream`: one SSE event per trace event, its `id`
/// the event id. A reconnect with `Last-Event-ID` resumes after that event, losing and
/// repeating none. Same filters as `/events` (cursor and limit aside).
#[utoipa::path(get, path = "/events/stream", tag = "traces",
    params(TraceQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream", body = EventView), (status = 400, body = ErrorBody)))]
async fn stream_events(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<TraceQuery>,
) -> Result<Response, ApiError> {
    let f = filter(&caller, &q)?;
    let after = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| uuid::Uuid::try_parse(s.trim()).ok())
                .ok_or_else(|| ApiError::validation("Last-Event-ID", "must be an event id"))
        })
        .transpose()?;
    let tail = Tail::new(
        state.store().clone(),
        caller.org,
        f,
        after,
        state.traces.written(),
    );
    let events = futures_util::stream::unfold(tail, |mut tail| async move {
        match tail.next().await {
            Ok(batch) => Some((batch, tail)),
            Err(e) => {
                // The client reconnects with Last-Event-ID and loses nothing.
                tracing::warn!(error = %e, "live tail query failed; closing the stream");
                None
            }
        }
    })
    .flat_map(|batch| {
        futures_util::stream::iter(batch.into_iter().map(|e| {
            let event = Event::default().id(e.id.to_string());
            Ok::<_, Infallible>(
                event
                    .json_data(EventView::from(&e))
                    .unwrap_or_else(|_| Event::default().comment("unencodable event")),
            )
        }))
    });
    let sse = Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    );
    Ok((
        [("x-accel-buffering", "no"), ("cache-control", "no-cache")],
        sse,
    )
        .into_response())
}

/// The caller's own recent events.
#[utoipa::path(get, path = "/mcp-events", tag = "traces", params(TraceQuery), security(("bearer" = [])),
    responses((status = 200, body = EventList), (status = 403, body = ErrorBody)))]
async fn my_events(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TraceQuery>,
) -> Result<Json<EventList>, ApiError> {
    let user = caller.require_user()?;
    let mut f = filter(&caller, &q)?;
    f.user_id = Some(user);
    let page = state.store().list_trace_events(caller.org, &f).await?;
    Ok(Json(EventList {
        items: page.items.iter().map(EventView::from).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}
