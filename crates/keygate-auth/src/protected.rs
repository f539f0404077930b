//! The resource-server side every protected endpoint shares: RFC 9728 metadata at
//! `/.well-known/oauth-protected-resource{path}`, the `401` challenge that points to it, and
//! reading the bearer token a request presents ([`bearer_token`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::resource::Resource;
use crate::router::AuthState;

/// The bearer token in a request's `Authorization` header (RFC 6750 §2.1): the scheme in any
/// case (RFC 9110 §11.1), then one or more spaces, then the token, with surrounding blanks
/// trimmed. `None` without the header, for another scheme or an empty token. Tokens in a query
/// parameter are not read: keygate takes none there (and never forwards one).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(value: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        bearer_token(&headers).map(str::to_owned)
    }

    #[test]
    fn bearer_scheme_is_read_in_any_case_and_the_token_trimmed() {
        for value in ["Bearer t0k", "bearer t0k", "BEARER t0k", "Bearer   t0k  "] {
            assert_eq!(presented(value).as_deref(), Some("t0k"), "{value:?}");
        }
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_no_bearer_token() {
        for value in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer    ",
            "Bearert0k",
            "t0k",
        ] {
            assert_eq!(presented(value), None, "{value:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
