//! Errors of the MCP gateway, each answered as HTTP status + JSON-RPC error in one exhaustive
//! match. Who caused it is part of the variant: the client, the upstream, or the gateway.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keygate_core::model::Integration;
use serde_json::{Value, json};

/// JSON-RPC code for "URL elicitation required" (MCP 2025-11-25): the user must connect.
pub const URL_ELICITATION_REQUIRED: i64 = -32042;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client: no or a bad token. Carries the 401 to send.
    #[error("unauthorized")]
    Unauthorized(Box<Response>),
    /// The client: a browser on an origin the gateway does not serve (DNS rebinding).
    #[error("the request's Origin is not allowed")]
    ForeignOrigin,
    /// The client: an application or integration it may not see.
    #[error("{0}")]
    NotFound(&'static str),
    /// The client: a request the gateway cannot take (wrong method, body too large, …).
    #[error("{message}")]
    BadRequest {
        status: StatusCode,
        code: i64,
        message: String,
    },
    /// The user must connect this integration first, and the connect link is not minted yet:
    /// where this is answered, [`crate::credentials::with_connect_link`] turns it into
    /// [`ProxyError::ConnectionRequired`], so only an answer actually sent costs a link.
    #[error("connection required for {integration_name} (no link minted)")]
    NotConnected {
        integration_id: String,
        integration_name: String,
    },
    /// The user has not connected this integration yet: `-32042` with a connect link.
    #[error("connection required for {integration_name}")]
    ConnectionRequired {
        request_id: Value,
        integration_id: String,
        integration_name: String,
        connect_url: String,
    },
    /// The upstream could not be reached or failed mid-way.
    #[error("upstream unavailable: {0}")]
    Upstream(String),
    /// The upstream forgot the session the client's aggregated session holds for it: the
    /// client must initialize again (the sealed session id cannot change under it).
    #[error("upstream session expired")]
    SessionExpired,
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The gateway itself failed (store, vault).
    #[error("gateway error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Names the integration (slug, name, id) an upstream failure came from, so the log line
    /// and the trace say which server could not be reached as well as why.
    pub fn of_integration(self, integration: &Integration) -> Self {
        match self {
            ProxyError::Upstream(cause) => ProxyError::Upstream(format!(
                "integration {} ({:?}, id {}): {cause}",
                integration.slug, integration.name, integration.id
            )),
            other => other,
        }
    }
}

fn rpc_error(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(d) = data {
        error["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// The JSON-RPC error that ends a streamed answer its upstream broke off (`silent`: it sent
/// nothing for `proxy.stream_idle_timeout_secs`).
pub(crate) fn stream_broken(id: Value, silent: bool) -> Value {
    let message = if silent {
        "The integration's server stopped answering"
    } else {
        "The integration's server broke off its answer"
    };
    rpc_error(id, -32002, message, None)
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ProxyError::Unauthorized(resp) => return *resp,
            ProxyError::ForeignOrigin => (
                StatusCode::FORBIDDEN,
                rpc_error(Value::Null, -32600, "Origin not allowed", None),
            ),
            ProxyError::NotFound(m) => (
                StatusCode::NOT_FOUND,
                rpc_error(Value::Null, -32001, m, None),
            ),
            ProxyError::BadRequest {
                status,
                code,
                message,
            } => (status, rpc_error(Value::Null, code, &message, None)),
            ProxyError::ConnectionRequired {
                request_id,
                integration_id,
                integration_name,
                connect_url,
            } => {
                let message = format!("Connect your {integration_name} account to continue");
                let data = json!({
                    "elicitations": [{
                        "mode": "url",
                        "elicitationId": uuid::Uuid::new_v4().to_string(),
                        "url": connect_url,
                        "message": message,
                    }],
                    "integrationId": integration_id,
                    "integrationName": integration_name,
                    "connectUrl": connect_url,
                });
                (
                    StatusCode::OK,
                    rpc_error(request_id, URL_ELICITATION_REQUIRED, &message, Some(data)),
                )
            }
            ProxyError::NotConnected { integration_id, .. } => {
                // A handler answered it without minting its link: a gateway bug.
                tracing::error!(%integration_id, "a connection-required answer lost its link");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    rpc_error(Value::Null, -32603, "Internal gateway error", None),
                )
            }
            ProxyError::Upstream(detail) => {
                tracing::warn!(%detail, "upstream failed");
                (
                    StatusCode::BAD_GATEWAY,
                    rpc_error(
                        Value::Null,
                        -32002,
                        "The integration's server is unavailable",
                        None,
                    ),
                )
            }
            ProxyError::SessionExpired => (
                StatusCode::NOT_FOUND,
                rpc_error(
                    Value::Null,
                    -32001,
                    "An integration's session expired; initialize again",
                    None,
                ),
            ),
            ProxyError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                rpc_error(
                    Value::Null,
                    -32002,
                    "The integration's server did not answer in time",
                    None,
                ),
            ),
            ProxyError::Internal(detail) => {
                tracing::error!(%detail, "gateway failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    rpc_error(Value::Null, -32603, "Internal gateway error", None),
                )
            }
        };
        let mut resp = (status, Json(body)).into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

impl From<keygate_store::StoreError> for ProxyError {
    fn from(e: keygate_store::StoreError) -> Self {
        ProxyError::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use keygate_core::model::{AuthMode, Category, ValidationStatus};
    use keygate_core::{IntegrationId, OrgId, Timestamp};

    use super::*;

    fn integration() -> Integration {
        Integration {
            id: IntegrationId::new(),
            org_id: OrgId::new(),
            name: "GitHub".into(),
            slug: "github".into(),
            url: "http://127.0.0.1:9/mcp".into(),
            category: Category::GatewayRemoteMcp,
            auth_mode: AuthMode::None,
            oauth: None,
            oauth_client_secret_configured: false,
            capabilities: None,
            credential_schema: None,
            forward_headers: Vec::new(),
            server_token_configured: false,
            validation_status: ValidationStatus::Pending,
            validation_message: None,
            last_validated_at: None,
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
            archived_at: None,
        }
    }

    #[test]
    fn an_unreachable_upstream_names_its_integration_and_cause() {
        let i = integration();
        let e =
            ProxyError::Upstream("tcp connect error: Connection refused".into()).of_integration(&i);
        let text = e.to_string();
        assert!(text.contains("integration github (\"GitHub\""), "{text}");
        assert!(text.contains(&i.id.to_string()), "{text}");
        assert!(
            text.ends_with(": tcp connect error: Connection refused"),
            "{text}"
        );
    }
}
