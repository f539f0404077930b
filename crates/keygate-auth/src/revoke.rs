//! `POST /oauth2/revoke` (RFC 7009). A refresh token revokes its whole grant (the agent
//! session); an access token is revoked by `jti`. Unknown tokens are answered 200, as the RFC
//! requires, so the endpoint reveals nothing.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::Timestamp;
use keygate_store::StoreError;

use crate::clients::Client;
use crate::error::OAuthError;
use crate::limits::ClientIp;
use crate::router::AuthState;
use crate::secret::hash_secret;
use crate::token::{TokenRequest, limited};

pub async fn revoke(
    State(state): State<AuthState>,
    ip: ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = match TokenRequest::parse(&headers, &body) {
        Ok(req) => limited(&state, ip, req.client_id(), revoke_inner(&state, &req)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn revoke_inner(state: &AuthState, req: &TokenRequest) -> Result<(), OAuthError> {
    let (client_id, secret, basic) = req.client_credentials()?;
    let client = Client::authenticate(state, &client_id, secret.as_deref(), basic).await?;
    let token = req
        .get("token")
        .ok_or_else(|| OAuthError::InvalidRequest("token is required".into()))?;
    let hint = req.get("token_type_hint");
    if hint != Some("access_token") {
        match state.store.use_refresh_token(&hash_secret(token)).await {
            Ok(rt) if rt.client_id == client.id => {
                state
                    .store
                    .revoke_agent_session(rt.org_id, rt.session_id)
                    .await?;
                return Ok(());
            }
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(claims) = state.keys.decode_unverified_audience(token).await
        && claims.client_id == client.id
    {
        state
            .store
            .revoke_jti(&claims.jti, Timestamp::from_millis(claims.exp * 1000))
            .await?;
    }
    Ok(())
}
