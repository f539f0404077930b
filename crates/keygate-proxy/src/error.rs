//! Errors of the MCP gateway, each answered as HTTP status + JSON-RPC error in one exhaustive
//! match. Who caused it is part of the variant: the client, the upstream, or the gateway. The
//! JSON-RPC error answers the request it is about, with that request's id
//! ([`ProxyError::answer`]).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keygate_core::model::Integration;
use keygate_core::wire::jsonrpc::{self, RequestId};
use serde_json::json;

/// JSON-RPC code for "URL elicitation required" (MCP 2025-11-25): the user must connect.
pub const URL_ELICITATION_REQUIRED: i64 = -32042;

/// JSON-RPC code of a request a tool policy denied (the gateway's own).
pub const POLICY_DENIED: i64 = -32043;

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
        integration_id: String,
        integration_name: String,
        connect_url: String,
    },
    /// A tool policy denied the request (`policy_ids`: the stored policies behind the denial).
    #[error("denied by policy: {what}{}", policies_named(.policy_ids))]
    PolicyDenied {
        what: String,
        policy_ids: Vec<String>,
    },
    /// The upstream could not be reached or failed mid-way.
    #[error("upstream unavailable: {0}")]
    Upstream(String),
    /// The upstream forgot the session the client's aggregated session holds for it: the
    /// client must initialize again (the sealed session id cannot change under it).
    #[error("upstream session expired")]
    SessionExpired,
    /// The upstream did not answer in time; [`ProxyError::of_integration`] names which one.
    #[error("upstream timed out{}", .0.as_deref().map(|i| format!(": {i}")).unwrap_or_default())]
    UpstreamTimeout(Option<String>),
    /// The gateway itself failed (store, vault).
    #[error("gateway error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Names the integration (slug, name, id) an upstream failure came from, so the log line
    /// and the trace say which server could not be reached as well as why.
    pub fn of_integration(self, integration: &Integration) -> Self {
        let named = format!(
            "integration {} ({:?}, id {})",
            integration.slug, integration.name, integration.id
        );
        match self {
            ProxyError::Upstream(cause) => ProxyError::Upstream(format!("{named}: {cause}")),
            ProxyError::UpstreamTimeout(None) => ProxyError::UpstreamTimeout(Some(named)),
            other => other,
        }
    }
}

/// ` (policies a, b)` after a denial's message; nothing when no policy matched (no permit).
fn policies_named(ids: &[String]) -> String {
    if ids.is_empty() {
        " (no policy permits it)".to_owned()
    } else {
        format!(" (policies {})", ids.join(", "))
    }
}

/// The JSON-RPC error that ends a streamed answer its upstream broke off (`silent`: it sent
/// nothing for `proxy.stream_idle_timeout_secs`).
pub(crate) fn stream_broken(silent: bool) -> jsonrpc::Error {
    let message = if silent {
        "The integration's server stopped answering"
    } else {
        "The integration's server broke off its answer"
    };
    jsonrpc::Error::new(UPSTREAM_FAILED, message)
}

/// JSON-RPC code for an integration's server that is down, slow or broke off (the gateway's
/// own, in the implementation-defined server error range).
pub const UPSTREAM_FAILED: i64 = -32002;

/// JSON-RPC code for what the client named and the gateway does not know: an application, an
/// integration, a session.
pub const NOT_FOUND: i64 = -32001;

/// A JSON-RPC response of the gateway's own (a result or an error built by `jsonrpc`), sent
/// with `status` and marked as the gateway's answer for the trace.
pub(crate) fn local_answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.extensions_mut().insert(keygate_trace::LocalAnswer);
    resp
}

impl ProxyError {
    /// The HTTP status and the JSON-RPC error this error is answered with, or for a `401` the
    /// challenge it is answered with.
    fn status_and_error(self) -> Result<(StatusCode, jsonrpc::Error), Box<Response>> {
        use jsonrpc::Error;
        Ok(match self {
            ProxyError::Unauthorized(resp) => return Err(resp),
            ProxyError::ForeignOrigin => (
                StatusCode::FORBIDDEN,
                Error::new(jsonrpc::INVALID_REQUEST, "Origin not allowed"),
            ),
            ProxyError::NotFound(m) => (StatusCode::NOT_FOUND, Error::new(NOT_FOUND, m)),
            ProxyError::BadRequest {
                status,
                code,
                message,
            } => (status, Error::new(code, message)),
            ProxyError::ConnectionRequired {
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
                    Error::new(URL_ELICITATION_REQUIRED, message).with_data(data),
                )
            }
            ProxyError::PolicyDenied { what, policy_ids } => (
                StatusCode::OK,
                Error::new(POLICY_DENIED, format!("Denied by policy: {what}"))
                    .with_data(json!({ "policyIds": policy_ids })),
            ),
            ProxyError::NotConnected { integration_id, .. } => {
                // A handler answered it without minting its link: a gateway bug.
                tracing::error!(%integration_id, "a connection-required answer lost its link");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Error::new(jsonrpc::INTERNAL_ERROR, "Internal gateway error"),
                )
            }
            ProxyError::Upstream(detail) => {
                tracing::warn!(%detail, "upstream failed");
                (
                    StatusCode::BAD_GATEWAY,
                    Error::new(UPSTREAM_FAILED, "The integration's server is unavailable"),
                )
            }
            ProxyError::SessionExpired => (
                StatusCode::NOT_FOUND,
                Error::new(
                    NOT_FOUND,
                    "An integration's session expired; initialize again",
                ),
            ),
            ProxyError::UpstreamTimeout(integration) => {
                tracing::warn!(
                    integration = integration.as_deref().unwrap_or("unknown"),
                    "upstream timed out"
                );
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    Error::new(
                        UPSTREAM_FAILED,
                        "The integration's server did not answer in time",
                    ),
                )
            }
            ProxyError::Internal(detail) => {
                tracing::error!(%detail, "gateway failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Error::new(jsonrpc::INTERNAL_ERROR, "Internal gateway error"),
                )
            }
        })
    }

    /// The answer to the JSON-RPC request with `id` (`None`: it had no readable id, or the
    /// request was no JSON-RPC message).
    pub fn answer(self, id: Option<&RequestId>) -> Response {
        let (status, error) = match self.status_and_error() {
            Ok(answer) => answer,
            Err(challenge) => return *challenge,
        };
        let mut resp = (status, Json(error.response(id))).into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// Whether the gateway reads the request's message to answer this error with its id: not
    /// for a `401` (answered with a challenge), a request refused before authentication for
    /// its `Origin`, or a body refused for its size (none of them is read).
    pub fn wants_request_id(&self) -> bool {
        match self {
            ProxyError::Unauthorized(_) | ProxyError::ForeignOrigin => false,
            ProxyError::BadRequest { status, .. } => *status != StatusCode::PAYLOAD_TOO_LARGE,
            _ => true,
        }
    }
}

/// For requests that are not JSON-RPC messages (a `GET` stream, the runtime endpoints): the
/// error with a `null` id.
impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        self.answer(None)
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

    #[test]
    fn a_timed_out_upstream_names_its_integration() {
        let i = integration();
        let text = ProxyError::UpstreamTimeout(None)
            .of_integration(&i)
            .to_string();
        assert!(
            text.starts_with("upstream timed out: integration github (\"GitHub\""),
            "{text}"
        );
        assert!(text.contains(&i.id.to_string()), "{text}");
    }

    #[tokio::test]
    async fn an_unminted_connection_answer_still_names_the_request_id() {
        let e = ProxyError::NotConnected {
            integration_id: "i".into(),
            integration_name: "GitHub".into(),
        };
        let resp = e.answer(Some(&RequestId::from(7)));
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["id"], 7);
        assert_eq!(body["error"]["code"], jsonrpc::INTERNAL_ERROR);
    }
}
