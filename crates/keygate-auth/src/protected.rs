//! The resource-server side every protected endpoint shares: RFC 9728 metadata at
//! `/.well-known/oauth-protected-resource{path}` and the `401` challenge that points to it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::resource::Resource;
use crate::router::AuthState;

/// `WWW-Authenticate` for a resource: where its metadata is, and why the token failed.
pub fn challenge(public_url: &str, resource_path: &str, error: Option<&str>) -> HeaderValue {
    let mut value = format!(
        "Bearer resource_metadata=\"{public_url}/.well-known/oauth-protected-resource{resource_path}\""
    );
    if let Some(e) = error {
        value.push_str(&format!(", error=\"{e}\""));
    }
    HeaderValue::from_str(&value).expect("URLs and error codes are valid header text")
}

/// A `401` with the challenge and a JSON body.
pub fn unauthorized(
    public_url: &str,
    resource_path: &str,
    error: Option<&str>,
    message: &str,
) -> Response {
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": error.unwrap_or("authorization_required"), "message": message})),
    )
        .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        challenge(public_url, resource_path, error),
    );
    resp
}

/// `GET /.well-known/oauth-protected-resource/{*path}`.
pub async fn metadata(State(state): State<AuthState>, Path(path): Path<String>) -> Response {
    let url = format!("{}/{}", state.public_url, path.trim_end_matches('/'));
    let Some(resource) = Resource::parse(&state.public_url, &url) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Resource::AppMcp { app, .. } = &resource
        && state.store.application_secret_hash(*app).await.is_err()
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut resp = Json(json!({
        "resource": resource.url(&state.public_url),
        "authorization_servers": [state.public_url.to_string()],
        "bearer_methods_supported": ["header"],
        "resource_name": match resource {
            Resource::Management => "keygate management API",
            _ => "keygate MCP gateway",
        },
    }))
    .into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp
}
