//! The Kontext runtime endpoints beside `/mcp`, for agents that manage connections themselves:
//! `GET /mcp/integrations`, `POST /mcp/connect-session`,
//! `POST /mcp/integrations/{id}/oauth/init` and `GET /mcp/integrations/{id}/oauth/connection`.
//! They take the same token as `/mcp`; any other path under `/mcp/` is authenticated, then
//! `404` ([`unknown`]).

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use keygate_auth::broker::BrokerError;
use keygate_core::model::AuthMode;
use keygate_store::StoreError;
use serde_json::{Value, json};

use crate::ProxyState;
use crate::error::ProxyError;
use crate::stage::McpCaller;
use crate::stage::authenticate;
use crate::stage::route::{attached, attached_by_ref};

fn respond(r: Result<Value, ProxyError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Whether the caller can use an integration now, and until when.
async fn connection(
    state: &ProxyState,
    caller: &McpCaller,
    i: &keygate_core::model::Integration,
) -> Result<Value, ProxyError> {
    if !i.auth_mode.is_per_user() {
        return Ok(json!({"connected": true}));
    }
    match state
        .auth
        .store
        .get_connection(caller.app.org_id, i.id, caller.user)
        .await
    {
        Ok(c) if c.connected => {
            let mut v = json!({"connected": true});
            if let Some(t) = c.expires_at {
                v["expiresAt"] = json!(t);
            }
            Ok(v)
        }
        Ok(_) | Err(StoreError::NotFound) => Ok(json!({"connected": false})),
        Err(e) => Err(e.into()),
    }
}

/// `GET /mcp/integrations`: the application's integrations and the caller's connections.
pub async fn integrations(State(state): State<ProxyState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    respond(async {
        let caller = authenticate::caller(&state, &parts.headers, &parts.uri).await?;
        let mut items = Vec::new();
        for i in attached(&state, &caller.app).await?.iter() {
            let mut item = json!({"id": i.id, "name": i.name, "slug": i.slug, "category": i.category, "authMode": i.auth_mode});
            let status = connection(&state, &caller, i).await?;
            item["connected"] = status["connected"].clone();
            items.push(item);
        }
        Ok(json!({"integrations": items}))
    }
    .await)
}

/// `POST /mcp/connect-session`: a link where the user connects their accounts.
pub async fn connect_session(State(state): State<ProxyState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    respond(
        async {
            let caller = authenticate::caller(&state, &parts.headers, &parts.uri).await?;
            let (id, expires, url) = keygate_auth::connect::create_connect_session(
                &state.auth,
                caller.app.org_id,
                caller.app.id,
                caller.user,
            )
            .await?;
            Ok(json!({"sessionId": id, "expiresAt": expires, "connectUrl": url}))
        }
        .await,
    )
}

/// `POST /mcp/integrations/{id}/oauth/init`: where to send the user to connect an OAuth
/// integration → `{authorizationUrl, state}`.
pub async fn oauth_init(
    State(state): State<ProxyState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (parts, _) = req.into_parts();
    respond(
        async {
            let caller = authenticate::caller(&state, &parts.headers, &parts.uri).await?;
            let i = attached_by_ref(&state, &caller.app, &id).await?;
            if i.auth_mode != AuthMode::Oauth {
                return Err(ProxyError::BadRequest {
                    status: http::StatusCode::BAD_REQUEST,
                    code: keygate_core::wire::jsonrpc::INVALID_PARAMS,
                    message: "This integration does not connect with OAuth".into(),
                });
            }
            let (url, flow_state) = state
                .auth
                .broker
                .begin(caller.app.org_id, &i, caller.user, None)
                .await
                .map_err(|e| match e {
                    BrokerError::Store(e) => e.into(),
                    e @ BrokerError::Config(_) => ProxyError::Misconfigured {
                        integration: None,
                        what: "the integration's OAuth settings",
                        cause: Some(Box::new(e)),
                    },
                    other => ProxyError::upstream("starting the OAuth flow", other),
                })?;
            Ok(json!({"authorizationUrl": url, "state": flow_state}))
        }
        .await,
    )
}

/// `GET /mcp/integrations/{id}/oauth/connection`: the caller's connection to one integration.
pub async fn oauth_connection(
    State(state): State<ProxyState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (parts, _) = req.into_parts();
    respond(
        async {
            let caller = authenticate::caller(&state, &parts.headers, &parts.uri).await?;
            let i = attached_by_ref(&state, &caller.app, &id).await?;
            connection(&state, &caller, &i).await
        }
        .await,
    )
}

/// Any other path under `/mcp/…`: authenticated first (an agent without a token learns where
/// to get one), then `404`.
pub async fn unknown(State(state): State<ProxyState>, req: Request) -> Response {
    match authenticate::caller(&state, req.headers(), req.uri()).await {
        Ok(_) => ProxyError::NotFound("No such runtime endpoint").into_response(),
        Err(e) => e.into_response(),
    }
}
