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

use crate::grants::AgentInfo;
use crate::keys::KeyRing;
use crate::limits::ClientIp;
use crate::token::{TokenRequest, exchange, limited};
use crate::web::CookiePolicy;
use crate::{authorize, connect, protected, register, revoke};

/// What the authorization server's handlers share.
#[derive(Clone)]
pub struct AuthState {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    /// The gateway's public URL, without a trailing slash; also the token issuer.
    pub public_url: Arc<str>,
    pub access_token_ttl: u64,
    /// Client ID metadata documents, fetched through the SSRF guard.
    pub client_documents: Arc<crate::clients::ClientDocuments>,
    /// Verified tokens and their liveness (see [`crate::verify`]).
    pub tokens: Arc<crate::verify::TokenCache>,
    /// Users' upstream OAuth connections (see [`crate::broker`]).
    pub broker: Arc<crate::broker::Broker>,
    /// Seconds a new connect link stays usable.
    pub connect_link_ttl_secs: u64,
    /// Throttles for sign-in, client authentication and registration.
    pub limits: Arc<crate::limits::Limits>,
}

impl AuthState {
    /// The audience of management API tokens: `{publicUrl}/api/v1`.
    pub fn management_audience(&self) -> String {
        format!("{}/api/v1", self.public_url)
    }

    /// `__Host-` + Secure cookies on https; plain cookies on an http (loopback) URL.
    pub fn cookies(&self) -> CookiePolicy {
        CookiePolicy {
            secure: self.public_url.starts_with("https://"),
        }
    }
}

/// The authorization server's routes.
pub fn router(state: AuthState) -> Router {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/authorize", get(authorize::authorize))
        .route("/oauth2/auth", get(authorize::authorize))
        .route(
            "/oauth2/login",
            get(authorize::login_page).post(authorize::login_submit),
        )
        .route(
            "/oauth2/consent",
            get(authorize::consent_page).post(authorize::consent_submit),
        )
        .route("/oauth2/revoke", post(revoke::revoke))
        .route("/oauth2/register", post(register::register))
        .route(
            "/oauth/connect",
            get(connect::connect_page).post(connect::connect_submit),
        )
        .route("/oauth/connect/callback", get(connect::callback))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route(
            "/.well-known/oauth-authorization-server/{*path}",
            get(metadata),
        )
        .route("/.well-known/openid-configuration", get(metadata))
        .route(
            "/.well-known/oauth-protected-resource/{*path}",
            get(protected::metadata),
        )
        .with_state(state)
}

async fn token(
    State(state): State<AuthState>,
    ip: ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let agent = AgentInfo {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
    };
    let result = match TokenRequest::parse(&headers, &body) {
        Ok(req) => {
            let client_id = req.client_id().map(str::to_owned);
            limited(
                &state,
                ip,
                client_id.as_deref(),
                exchange(&state, req, agent),
            )
            .await
        }
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

/// RFC 8414 / OpenID discovery metadata, listing what this server implements.
async fn metadata(State(state): State<AuthState>) -> Json<serde_json::Value> {
    let base = &state.public_url;
    Json(json!({
        "issuer": base.to_string(),
        "authorization_endpoint": format!("{base}/oauth2/authorize"),
        "token_endpoint": format!("{base}/oauth2/token"),
        "registration_endpoint": format!("{base}/oauth2/register"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", crate::exchange::GRANT_TYPE],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": true,
    }))
}
