//! `/applications/:id/sessions`: the agent sessions of an application. Owners, admins and
//! service accounts see and revoke everyone's; a member only her own (another user's session
//! is "not found").

use axum::Json;
use axum::extract::State;
use keygate_core::model::DerivedSessionStatus;
use keygate_core::{AgentSessionId, ApplicationId, Timestamp};
use keygate_store::SessionFilter;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::page_request;
use crate::ApiState;
use crate::caller::Caller;
use crate::dto::*;
use crate::error::{ApiError, ErrorBody, OrNotFound};
use crate::extract::{ApiQuery, Id, Ids};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_sessions, revoke_sessions))
        .routes(routes!(get_session))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    limit: Option<u32>,
    /// `active`, `idle`, `expired` or `disconnected`.
    status: Option<String>,
    /// Include expired and disconnected sessions.
    include_inactive: Option<bool>,
}

/// The application, if the caller may see it (same rule as the applications routes).
async fn check_app(state: &ApiState, caller: &Caller, id: ApplicationId) -> Result<(), ApiError> {
    super::applications::visible(state, caller, id)
        .await
        .map(drop)
}

/// List an application's agent sessions.
#[utoipa::path(get, path = "/applications/{id}/sessions", tag = "sessions", params(("id" = String, Path, format = Uuid), ListQuery),
    security(("bearer" = [])), responses((status = 200, body = SessionList), (status = 404, body = ErrorBody)))]
async fn list_sessions(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ApplicationId>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<SessionList>, ApiError> {
    check_app(&state, &caller, id).await?;
    let limit = page_request(q.limit, None)?.limit;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DerivedSessionStatus::parse(s).ok_or_else(|| {
            ApiError::validation("status", "must be active, idle, expired or disconnected")
        })?),
    };
    let filter = SessionFilter {
        limit,
        status,
        include_inactive: q.include_inactive.unwrap_or(false),
        user: caller.restricted_to(),
    };
    let now = Timestamp::now();
    let sessions = state
        .store()
        .list_agent_sessions(caller.org, id, filter, now)
        .await?;
    Ok(Json(SessionList {
        items: sessions.iter().map(|s| SessionView::new(s, now)).collect(),
    }))
}

/// Disconnect every session of an application (a member: her own) and invalidate their
/// tokens.
#[utoipa::path(delete, path = "/applications/{id}/sessions", tag = "sessions", params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])), responses((status = 200, body = RevokeSessionsResult), (status = 404, body = ErrorBody)))]
async fn revoke_sessions(
    State(state): State<ApiState>,
    caller: Caller,
    Id(id): Id<ApplicationId>,
) -> Result<Json<RevokeSessionsResult>, ApiError> {
    check_app(&state, &caller, id).await?;
    let n = state
        .store()
        .revoke_agent_sessions(caller.org, id, caller.restricted_to())
        .await?;
    Ok(Json(RevokeSessionsResult {
        success: true,
        disconnected_count: n,
    }))
}

/// Get one agent session.
#[utoipa::path(get, path = "/applications/{id}/sessions/{sessionId}", tag = "sessions",
    params(("id" = String, Path, format = Uuid), ("sessionId" = String, Path, format = Uuid)),
    security(("bearer" = [])), responses((status = 200, body = SessionEnvelope), (status = 404, body = ErrorBody)))]
async fn get_session(
    State(state): State<ApiState>,
    caller: Caller,
    Ids(id, session): Ids<ApplicationId, AgentSessionId>,
) -> Result<Json<SessionEnvelope>, ApiError> {
    check_app(&state, &caller, id).await?;
    let s = state
        .store()
        .get_agent_session(caller.org, id, session)
        .await
        .or_not_found("Session not found")?;
    if caller
        .restricted_to()
        .is_some_and(|me| s.user_id != Some(me))
    {
        return Err(ApiError::NotFound("Session not found"));
    }
    Ok(Json(SessionEnvelope {
        session: SessionView::new(&s, Timestamp::now()),
    }))
}
