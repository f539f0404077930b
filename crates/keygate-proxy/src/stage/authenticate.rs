//! The authentication stage, first on every MCP route: the request's `Origin` (DNS-rebinding
//! protection, [`crate::origin`]), then a bearer token for exactly this resource (RFC 8707
//! `aud`; a token for an application's aggregated endpoint also opens its pass-through
//! endpoints), live (`jti`, session; signatures cached per token), then the application,
//! active in the token's organization (cached per store generation). The agent session is
//! marked live on the way ([`Activity`], off the request path). A request refused for its token
//! is attributed by the trace as far as its URL and body allow ([`crate::traced::refused`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Uri};
use dashmap::DashMap;
use keygate_auth::keys::VerifyError;
use keygate_auth::{Claims, Resource, protected};
use keygate_core::model::Application;
use keygate_core::{AgentSessionId, Timestamp, UserId};
use keygate_store::StoreError;
use keygate_trace::Exchange;

use crate::ProxyState;
use crate::error::ProxyError;
use crate::traced;

/// Authenticates an MCP request and names its caller in the trace (`ex`). A request refused
/// for its token is attributed as far as its URL and body allow (reading the body); otherwise
/// the body comes back untouched, with the bearer token the request was let in with.
pub async fn run<'r>(
    state: &ProxyState,
    parts: &'r http::request::Parts,
    body: Body,
    ex: &mut Exchange,
) -> Result<Authenticated<'r>, ProxyError> {
    match verify(state, &parts.headers, &parts.uri).await {
        Ok((caller, token)) => {
            traced::identify(ex, &caller);
            Ok(Authenticated {
                caller,
                body,
                token,
            })
        }
        Err(e) => {
            if matches!(e, ProxyError::Unauthorized(_)) {
                traced::refused(state, ex, &parts.uri, body).await;
            }
            Err(e)
        }
    }
}

/// A request [`run`] let in.
pub struct Authenticated<'r> {
    pub caller: McpCaller,
    /// The request's body, unread.
    pub body: Body,
    /// The agent's bearer token, as the request carried it: the forwarding stages keep it
    /// from going upstream ([`crate::forwarded`]).
    pub token: &'r str,
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
pub fn resource_path(uri: &Uri) -> &str {
    let path = uri.path().trim_end_matches('/');
    let path = path
        .strip_suffix("/sse")
        .or_else(|| path.strip_suffix("/message"))
        .unwrap_or(path);
    if path.starts_with("/mcp") {
        "/mcp"
    } else {
        path
    }
}

/// Checks the request's `Origin` (DNS-rebinding protection, [`crate::origin`]), then verifies
/// the bearer token for the resource this request addresses. A token for an application's
/// aggregated endpoint also opens its pass-through endpoints. Untraced: the runtime endpoints
/// use it as it is.
pub async fn caller(
    state: &ProxyState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<McpCaller, ProxyError> {
    Ok(verify(state, headers, uri).await?.0)
}

/// [`caller`], and the bearer token it was verified by.
async fn verify<'h>(
    state: &ProxyState,
    headers: &'h HeaderMap,
    uri: &Uri,
) -> Result<(McpCaller, &'h str), ProxyError> {
    if !state.origins.permits(headers) {
        return Err(ProxyError::ForeignOrigin);
    }
    let auth = &state.auth;
    let path = resource_path(uri);
    let resource =
        Resource::parse_path(path).ok_or(ProxyError::NotFound("No such MCP endpoint"))?;
    let unauthorized = |error: Option<&str>, message: &str| {
        ProxyError::Unauthorized(Box::new(protected::unauthorized(
            &auth.public_url,
            path,
            error,
            message,
        )))
    };
    let token = keygate_auth::bearer_token(headers)
        .ok_or_else(|| unauthorized(None, "A bearer token is required"))?;
    // The token's audience: this URL, or, for a pass-through endpoint, its application's
    // aggregated endpoint.
    let aggregated = match &resource {
        Resource::AppMcp {
            app,
            integration: Some(_),
        } => Some(Resource::AppMcp {
            app: *app,
            integration: None,
        }),
        _ => None,
    };
    let accepts = |aud: &str| {
        aud.strip_prefix(&*auth.public_url) == Some(path)
            || aggregated
                .as_ref()
                .is_some_and(|r| r.is_url(&auth.public_url, aud))
    };
    let claims = match auth.verify_access_token_where(token, accepts).await {
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
    Ok((McpCaller { claims, user, app }, token))
}

/// Marks agent sessions live and records their last activity, at most every few seconds per
/// session and off the request path.
#[derive(Default)]
pub struct Activity {
    last: DashMap<AgentSessionId, Instant, foldhash::fast::RandomState>,
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
