//! HTTP endpoints of the authorization server.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keygate_store::Store;
use serde_json::json;

use crate::keys::KeyRing;
use crate::token::{TokenRequest, exchange};

/// What the authorization server's handlers share.
#[derive(Clone)]
pub struct AuthState {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    /// The gateway's public URL, without a trailing slash; also the token issuer.
    pub public_url: Arc<str>,
    pub access_token_ttl: u64,
}

impl AuthState {
    /// The audience of management API tokens: `{publicUrl}/api/v1`.
    pub fn management_audience(&self) -> String {
        format!("{}/api/v1", self.public_url)
    }
}

/// `/oauth2/token` and the `/.well-known` documents.
pub fn router(state: AuthState) -> Router {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/openid-configuration", get(metadata))
        .with_state(state)
}

async fn token(State(state): State<AuthState>, headers: HeaderMap, body: Bytes) -> Response {
    let result = match TokenRequest::parse(&headers, &body) {
        Ok(req) => exchange(&state, req).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(token) => {
            let mut resp = Json(token).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn jwks(State(state): State<AuthState>) -> Response {
    let mut resp = Json(state.keys.jwks()).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

/// RFC 8414 metadata, listing only what this server implements.
async fn metadata(State(state): State<AuthState>) -> Json<serde_json::Value> {
    let base = &state.public_url;
    Json(json!({
        "issuer": base.to_string(),
        "token_endpoint": format!("{base}/oauth2/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": [crate::MANAGEMENT_SCOPE],
        "response_types_supported": [],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
    }))
}
