//! The authentication gate in front of the MCP endpoints (`/apps/{id}/mcp…` and `/mcp…`).
//!
//! It is the resource-server half that MCP clients discover the authorization server through:
//! no or a bad token gets `401` with an RFC 9728 `WWW-Authenticate` challenge. A token
//! accepted here reaches the MCP proxy, which this build does not contain yet: such requests
//! are answered `501` with a JSON-RPC error saying so, rather than pretending to be an MCP
//! server.

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use keygate_auth::keys::VerifyError;
use keygate_auth::{AuthState, Resource, protected};
use serde_json::json;

pub fn router(auth: AuthState) -> Router {
    Router::new()
        .route("/apps/{id}/mcp", any(gate))
        .route("/apps/{id}/mcp/{*rest}", any(gate))
        .route("/mcp", any(gate))
        .route("/mcp/{*rest}", any(gate))
        .with_state(auth)
}

/// The protected resource a request path belongs to, as a path (`/apps/{id}/mcp[/slug]` or
/// `/mcp`). Legacy SSE sub-paths (`…/sse`, `…/message`) belong to their endpoint.
fn resource_path(uri: &Uri) -> String {
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

async fn gate(State(auth): State<AuthState>, req: Request) -> Response {
    let path = resource_path(req.uri());
    let resource_url = format!("{}{path}", auth.public_url);
    let Some(resource) = Resource::parse(&auth.public_url, &resource_url) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return protected::unauthorized(
            &auth.public_url,
            &path,
            None,
            "A bearer token is required",
        );
    };
    // A token for the application's aggregated endpoint also opens its pass-through ones.
    let mut audiences = vec![resource_url.clone()];
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
    let mut last = VerifyError::Invalid;
    for aud in &audiences {
        match auth.verify_access_token(token, aud).await {
            Ok(_) => {
                return (
                    StatusCode::NOT_IMPLEMENTED,
                    Json(json!({"jsonrpc": "2.0", "id": null, "error": {
                        "code": -32601,
                        "message": "authenticated, but this keygate build does not include the MCP proxy yet",
                    }})),
                )
                    .into_response();
            }
            Err(e) => last = e,
        }
    }
    let message = last.to_string();
    protected::unauthorized(&auth.public_url, &path, Some("invalid_token"), &message)
}
