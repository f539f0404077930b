//! Authentication of MCP requests, and the agent-session bookkeeping that goes with it.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use keygate_auth::keys::VerifyError;
use keygate_auth::{Claims, Resource, protected};
use std::sync::Arc;

use keygate_core::model::{Application, Integration};
use keygate_core::{AgentSessionId, Timestamp, UserId};
use keygate_store::StoreError;

use crate::ProxyState;
use crate::error::ProxyError;

/// The application's attached, active integrations, in attachment order (cached).
pub async fn attached(
    state: &ProxyState,
    app: &Application,
) -> Result<Arc<Vec<Arc<Integration>>>, ProxyError> {
    let store = &state.auth.store;
    let generation = store.generation();
    if let Some(list) = state.cache.attached.get(&app.id, generation) {
        return Ok(list);
    }
    let found = store.attached_integrations(app.org_id, app.id).await?;
    let list = Arc::new(found.into_iter().map(Arc::new).collect::<Vec<_>>());
    state.cache.attached.put(app.id, generation, list.clone());
    Ok(list)
}

/// One of the application's attached integrations, by slug or id.
pub async fn attached_by_ref(
    state: &ProxyState,
    app: &Application,
    r: &str,
) -> Result<Arc<Integration>, ProxyError> {
    let list = attached(state, app).await?;
    list.iter()
        .find(|i| i.slug == r || names_id(r, i))
        .cloned()
        .ok_or(ProxyError::NotFound("Integration not found"))
}

/// Whether `r` is the integration's id as it prints (hyphenated, lowercase).
fn names_id(r: &str, integration: &Integration) -> bool {
    let mut buf = uuid::Uuid::encode_buffer();
    r.len() == uuid::fmt::Hyphenated::LENGTH
        && integration.id.0.hyphenated().encode_lower(&mut buf) == r
}

/// Who is calling, through which application.
#[derive(Debug)]
pub struct McpCaller {
    pub claims: Arc<Claims>,
    pub user: UserId,
    pub app: Arc<Application>,
}

/// The resource path a request belongs to: `/apps/{id}/mcp[/integration]` or `/mcp`.
/// Legacy SSE sub-paths (`…/sse`, `…/message`) belong to their endpoint.
pub fn resource_path(uri: &Uri) -> String {
    let path = uri.path().trim_end_matches('/');
    let path = path
        .strip_suffix("/sse")
        .or_else(|| path.strip_suffix("/message"))
        .unwrap_or(path);
    if path.starts_with("/mcp") {
        "/mcp".to_owned()
    } else {
        path.to_owned()
    }
}

/// Checks the request's `Origin` (DNS-rebinding protection, [`crate::origin`]), then verifies
/// the bearer token for the resource this request addresses. A token for an application's
/// aggregated endpoint also opens its pass-through endpoints.
pub async fn authenticate(
    state: &ProxyState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<McpCaller, ProxyError> {
    if !state.origins.permits(headers) {
        return Err(ProxyError::ForeignOrigin);
    }
    let auth = &state.auth;
    let path = resource_path(uri);
    let url = format!("{}{path}", auth.public_url);
    let resource = Resource::parse(&auth.public_url, &url)
        .ok_or(ProxyError::NotFound("No such MCP endpoint"))?;
    let unauthorized = |error: Option<&str>, message: &str| {
        ProxyError::Unauthorized(Box::new(protected::unauthorized(
            &auth.public_url,
            &path,
            error,
            message,
        )))
    };
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(|| unauthorized(None, "A bearer token is required"))?;
    let mut audiences = vec![url];
    if let Resource::AppMcp {
        app,
        integration: Some(_),
    } = &resource
    {
        audiences.push(
            Resource::AppMcp {
                app: *app,
                integration: None,
            }
            .url(&auth.public_url),
        );
    }
    let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
    let claims = match auth.verify_access_token_for(token, &audiences).await {
        Ok(c) => c,
        Err(e @ VerifyError::Unavailable) => {
            return Err(ProxyError::Unavailable {
                what: "the token's revocation state",
                cause: Box::new(e),
            });
        }
        Err(e) => return Err(unauthorized(Some("invalid_token"), &e.to_string())),
    };
    let Ok(user) = claims.sub.parse::<UserId>() else {
        return Err(unauthorized(
            Some("invalid_token"),
            "MCP access needs a user's token",
        ));
    };
    let app_id = match resource {
        Resource::AppMcp { app, .. } => app,
        // `/mcp` serves the application whose client the token was issued to.
        _ => claims
            .client_id
            .strip_prefix(keygate_core::ids::APP_CLIENT_PREFIX)
            .and_then(|id| id.parse().ok())
            .ok_or(ProxyError::NotFound(
                "/mcp needs a token issued to an application's own client",
            ))?,
    };
    let generation = auth.store.generation();
    let app = match state.cache.apps.get(&(claims.org, app_id), generation) {
        Some(app) => app,
        None => match auth.store.get_application(claims.org, app_id).await {
            Ok(app) => {
                let app = Arc::new(app);
                state
                    .cache
                    .apps
                    .put((claims.org, app_id), generation, app.clone());
                app
            }
            Err(StoreError::NotFound) => return Err(ProxyError::NotFound("Application not found")),
            Err(e) => return Err(e.into()),
        },
    };
    if app.archived_at.is_some() {
        return Err(ProxyError::NotFound("Application not found"));
    }
    if let Some(sid) = claims.sid {
        state.activity.touch(state, sid);
    }
    Ok(McpCaller { claims, user, app })
}

/// Marks agent sessions live and records their last activity, at most every few seconds per
/// session and off the request path.
#[derive(Default)]
pub struct Activity {
    last: DashMap<AgentSessionId, Instant>,
}

const TOUCH_EVERY: Duration = Duration::from_secs(10);

impl Activity {
    pub fn touch(&self, state: &ProxyState, sid: AgentSessionId) {
        let now = Instant::now();
        let due = self
            .last
            .get(&sid)
            .is_none_or(|t| now.duration_since(*t) >= TOUCH_EVERY);
        if !due {
            return;
        }
        self.last.insert(sid, now);
        let store = state.auth.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.mark_agent_session_active(sid, Timestamp::now()).await {
                tracing::warn!(error = %e, "recording agent session activity failed");
            }
        });
    }
}

/// Any other path under `/mcp/…`: authenticated first (an agent without a token learns where
/// to get one), then `404`.
pub async fn unknown(State(state): State<ProxyState>, req: Request) -> Response {
    match authenticate(&state, req.headers(), req.uri()).await {
        Ok(_) => ProxyError::NotFound("No such runtime endpoint").into_response(),
        Err(e) => e.into_response(),
    }
}
