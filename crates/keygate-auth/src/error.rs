//! OAuth errors as RFC 6749 §5.2 defines them.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered by an OAuth endpoint.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// Client authentication failed; `basic` when the client tried HTTP Basic.
    #[error("invalid_client")]
    InvalidClient { basic: bool },
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(String),
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    #[error("invalid_client_metadata: {0}")]
    InvalidClientMetadata(String),
    #[error("invalid_redirect_uri: {0}")]
    InvalidRedirectUri(String),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    #[error("invalid_target: {0}")]
    InvalidTarget(String),
    /// A token-exchange target refused, with the machine-readable `failure_reason`.
    #[error("invalid_target: {reason}")]
    TargetRefused {
        reason: &'static str,
        message: String,
    },
    /// Token exchange: the user must connect (or reconnect) the integration first.
    #[error("integration_required: {reason}")]
    IntegrationRequired {
        reason: &'static str,
        integration_id: String,
        connect_url: Option<String>,
    },
    /// Too many attempts (failed client authentications, registrations) from this client or
    /// address: 429 with `Retry-After`.
    #[error("temporarily_unavailable: retry after {retry_after} s")]
    TooManyAttempts { retry_after: u64 },
    #[error("server_error")]
    Server(String),
}

impl OAuthError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            OAuthError::InvalidRequest(m) => {
                (StatusCode::BAD_REQUEST, "invalid_request", m.clone())
            }
            OAuthError::InvalidClient { .. } => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed".to_owned(),
            ),
            OAuthError::UnauthorizedClient(m) => {
                (StatusCode::BAD_REQUEST, "unauthorized_client", m.clone())
            }
            OAuthError::InvalidGrant(m) => (StatusCode::BAD_REQUEST, "invalid_grant", m.clone()),
            OAuthError::InvalidClientMetadata(m) => (
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                m.clone(),
            ),
            OAuthError::InvalidRedirectUri(m) => {
                (StatusCode::BAD_REQUEST, "invalid_redirect_uri", m.clone())
            }
            OAuthError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "this grant type is not supported".to_owned(),
            ),
            OAuthError::InvalidScope(m) => (StatusCode::BAD_REQUEST, "invalid_scope", m.clone()),
            OAuthError::InvalidTarget(m) => (StatusCode::BAD_REQUEST, "invalid_target", m.clone()),
            OAuthError::TargetRefused { message, .. } => {
                (StatusCode::BAD_REQUEST, "invalid_target", message.clone())
            }
            OAuthError::IntegrationRequired { .. } => (
                StatusCode::BAD_REQUEST,
                "integration_required",
                "the user must connect this integration first".to_owned(),
            ),
            OAuthError::TooManyAttempts { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                format!("too many attempts; retry after {retry_after} s"),
            ),
            OAuthError::Server(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the authorization server failed; see its logs".to_owned(),
            ),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        if let OAuthError::Server(detail) = &self {
            tracing::error!(%detail, "token endpoint failed");
        }
        let (status, code, description) = self.parts();
        let mut body = json!({"error": code, "error_description": description});
        match &self {
            OAuthError::TargetRefused { reason, .. } => body["failure_reason"] = json!(reason),
            OAuthError::IntegrationRequired {
                reason,
                integration_id,
                connect_url,
            } => {
                body["failure_reason"] = json!(reason);
                body["integration_id"] = json!(integration_id);
                if let Some(url) = connect_url {
                    body["connect_url"] = json!(url);
                }
            }
            _ => {}
        }
        let mut resp = (status, Json(body)).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            OAuthError::InvalidClient { basic: true } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"keygate\""),
                );
            }
            OAuthError::TooManyAttempts { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        resp
    }
}

impl From<keygate_store::StoreError> for OAuthError {
    fn from(e: keygate_store::StoreError) -> Self {
        OAuthError::Server(e.to_string())
    }
}
