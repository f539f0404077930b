//! Errors of the MCP gateway, each answered as HTTP status + JSON-RPC error in one exhaustive
//! match. Who caused it ([`ProxyError::blame`]) and whether sending the same request again can
//! succeed ([`ProxyError::retryable`]) are decided here too, once per variant; the trace status
//! and the log lines follow from them. Upstream and gateway failures keep what caused them as
//! their [`std::error::Error::source`], under a short description of what the gateway was doing;
//! [`ProxyError::chain`] prints the whole chain for the log and the trace, never for the client.
//! The JSON-RPC error answers the request it is about, with that request's id
//! ([`ProxyError::answer`]).

use std::borrow::Cow;
use std::fmt;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keygate_core::IntegrationId;
use keygate_core::model::Integration;
use keygate_core::wire::jsonrpc::{self, RequestId};
use keygate_store::StoreError;
use serde_json::json;

/// JSON-RPC code for "URL elicitation required" (MCP 2025-11-25): the user must connect.
pub const URL_ELICITATION_REQUIRED: i64 = -32042;

/// JSON-RPC code of a request a tool policy denied (the gateway's own).
pub const POLICY_DENIED: i64 = -32043;

/// What caused a failure, kept whole (with its own sources) below the gateway's description.
/// Its text never holds a credential: upstream requests' headers are not part of any error.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Who caused an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The client (or its user): a request the gateway will not serve as it is.
    Client,
    /// The integration's server: unreachable, too slow, or an answer the gateway cannot use.
    Upstream,
    /// The gateway itself: its store, its setup, an integration's settings, a bug.
    Gateway,
}

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
    /// The client broke off its request body before the gateway had read it. Answered as an
    /// unavailable upstream (`502`), as it always was; the client has usually gone.
    #[error("reading the request")]
    RequestBroken(#[source] Cause),
    /// The user must connect this integration first, and the connect link is not minted yet:
    /// where this is answered, [`crate::stage::credential::with_connect_link`] turns it into
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
    /// The upstream could not be reached, failed mid-way, or answered what the gateway cannot
    /// use. `what` says what the gateway was doing, `cause` why it failed (when more is known);
    /// [`ProxyError::of_integration`] names the integration.
    #[error("upstream unavailable: {}{what}", Named::prefix(.integration))]
    Upstream {
        integration: Option<Box<Named>>,
        what: Cow<'static, str>,
        #[source]
        cause: Option<Cause>,
    },
    /// The upstream forgot the session the client's aggregated session holds for it: the
    /// client must initialize again (the sealed session id cannot change under it).
    #[error("upstream session expired")]
    SessionExpired,
    /// The upstream did not answer in time; [`ProxyError::of_integration`] names which one.
    #[error("upstream timed out{}", Named::suffix(.integration))]
    UpstreamTimeout { integration: Option<Box<Named>> },
    /// The integration cannot be reached as it is set up: its URL does not parse or the SSRF
    /// guard refuses it, its OAuth settings cannot be used. Answered as an unavailable upstream
    /// (the client cannot tell); nothing changes until an administrator changes the settings.
    #[error("integration unusable: {}{what}", Named::prefix(.integration))]
    Misconfigured {
        integration: Option<Box<Named>>,
        what: &'static str,
        #[source]
        cause: Option<Cause>,
    },
    /// The gateway's own state could not be read now (the store, the revocation state): an
    /// outage that passes.
    #[error("gateway unavailable: {what}")]
    Unavailable {
        what: &'static str,
        #[source]
        cause: Cause,
    },
    /// The gateway itself failed otherwise: a stored value it cannot use, an incomplete setup,
    /// a bug.
    #[error("gateway error: {what}")]
    Internal {
        what: Cow<'static, str>,
        #[source]
        cause: Option<Cause>,
    },
}

/// An integration named in an error: slug, name and id, so the log line and the trace say
/// which server failed as well as why.
#[derive(Debug)]
pub struct Named {
    slug: String,
    name: String,
    id: IntegrationId,
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "integration {} ({:?}, id {})",
            self.slug, self.name, self.id
        )
    }
}

impl Named {
    /// `integration …: ` before a description, or nothing.
    fn prefix(named: &Option<Box<Named>>) -> Around<'_> {
        Around(named.as_deref(), true)
    }

    /// `: integration …` after a description, or nothing.
    fn suffix(named: &Option<Box<Named>>) -> Around<'_> {
        Around(named.as_deref(), false)
    }
}

/// An integration's name before (`true`) or after a description, if there is one.
struct Around<'a>(Option<&'a Named>, bool);

impl fmt::Display for Around<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Around(None, _) => Ok(()),
            Around(Some(named), true) => write!(f, "{named}: "),
            Around(Some(named), false) => write!(f, ": {named}"),
        }
    }
}

/// An error and its sources, `: `-separated (see [`ProxyError::chain`]).
pub struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(inner) = source {
            write!(f, ": {inner}")?;
            source = inner.source();
        }
        Ok(())
    }
}

impl ProxyError {
    /// An upstream failure while doing `what`, caused by `cause`.
    pub fn upstream(what: impl Into<Cow<'static, str>>, cause: impl Into<Cause>) -> Self {
        ProxyError::Upstream {
            integration: None,
            what: what.into(),
            cause: Some(cause.into()),
        }
    }

    /// An upstream failure that `what` says all about.
    pub fn upstream_said(what: impl Into<Cow<'static, str>>) -> Self {
        ProxyError::Upstream {
            integration: None,
            what: what.into(),
            cause: None,
        }
    }

    /// The gateway failed while doing `what`, caused by `cause`.
    pub fn internal(what: impl Into<Cow<'static, str>>, cause: impl Into<Cause>) -> Self {
        ProxyError::Internal {
            what: what.into(),
            cause: Some(cause.into()),
        }
    }

    /// Names the integration (slug, name, id) an upstream failure came from, so the log line
    /// and the trace say which server could not be reached as well as why. The cause stays the
    /// error's source; other errors are returned as they are.
    pub fn of_integration(mut self, integration: &Integration) -> Self {
        match &mut self {
            ProxyError::Upstream { integration: n, .. }
            | ProxyError::UpstreamTimeout { integration: n }
            | ProxyError::Misconfigured { integration: n, .. }
                if n.is_none() =>
            {
                *n = Some(Box::new(Named {
                    slug: integration.slug.clone(),
                    name: integration.name.clone(),
                    id: integration.id,
                }));
            }
            _ => {}
        }
        self
    }

    /// The error and all its causes, as the log line and the trace print it (e.g. `upstream
    /// unavailable: integration github ("GitHub", id …): sending: client error (Connect): tcp
    /// connect error: Connection refused (os error 111)`). Never sent to the client.
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }

    /// Who caused the error: the client (a request the gateway will not serve as it is, a
    /// user who must connect, a policy's denial), the upstream (unreachable, too slow, an
    /// unusable answer, a forgotten session), or the gateway (its store, its setup, an
    /// integration's settings, a bug).
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::Unauthorized(_)
            | ProxyError::ForeignOrigin
            | ProxyError::NotFound(_)
            | ProxyError::BadRequest { .. }
            | ProxyError::RequestBroken(_)
            | ProxyError::NotConnected { .. }
            | ProxyError::ConnectionRequired { .. }
            | ProxyError::PolicyDenied { .. } => Blame::Client,
            ProxyError::Upstream { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::SessionExpired => Blame::Upstream,
            ProxyError::Misconfigured { .. }
            | ProxyError::Unavailable { .. }
            | ProxyError::Internal { .. } => Blame::Gateway,
        }
    }

    /// Whether the same request, sent again by the client on its own (later, or after the
    /// `initialize` the answer asks for), can succeed:
    ///
    /// - yes for what passes: an upstream that is down, broke off or was slow, an upstream
    ///   session that expired (after initializing again), an outage of the gateway's store,
    ///   a request body the client broke off;
    /// - no where something else must change first: the token, the `Origin`, the request
    ///   itself, a policy, an integration's settings, a gateway bug — and a user who must
    ///   connect the integration (a person opens the link first).
    pub fn retryable(&self) -> bool {
        match self {
            ProxyError::Upstream { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::SessionExpired
            | ProxyError::Unavailable { .. }
            | ProxyError::RequestBroken(_) => true,
            ProxyError::Unauthorized(_)
            | ProxyError::ForeignOrigin
            | ProxyError::NotFound(_)
            | ProxyError::BadRequest { .. }
            | ProxyError::NotConnected { .. }
            | ProxyError::ConnectionRequired { .. }
            | ProxyError::PolicyDenied { .. }
            | ProxyError::Misconfigured { .. }
            | ProxyError::Internal { .. } => false,
        }
    }

    /// Logs an error the gateway answers: a warning for the upstream's, an error for its own
    /// (with the whole chain); nothing for the client's, which the trace records.
    fn log(&self) {
        match self.blame() {
            Blame::Client => {}
            Blame::Upstream => {
                tracing::warn!(error = %self.chain(), retryable = self.retryable(), "upstream failed");
            }
            Blame::Gateway => {
                tracing::error!(error = %self.chain(), retryable = self.retryable(), "gateway failed");
            }
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
            ProxyError::Upstream { .. }
            | ProxyError::Misconfigured { .. }
            | ProxyError::RequestBroken(_) => (
                StatusCode::BAD_GATEWAY,
                Error::new(UPSTREAM_FAILED, "The integration's server is unavailable"),
            ),
            ProxyError::SessionExpired => (
                StatusCode::NOT_FOUND,
                Error::new(
                    NOT_FOUND,
                    "An integration's session expired; initialize again",
                ),
            ),
            ProxyError::UpstreamTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                Error::new(
                    UPSTREAM_FAILED,
                    "The integration's server did not answer in time",
                ),
            ),
            ProxyError::Unavailable { .. } | ProxyError::Internal { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Error::new(jsonrpc::INTERNAL_ERROR, "Internal gateway error"),
            ),
        })
    }

    /// The answer to the JSON-RPC request with `id` (`None`: it had no readable id, or the
    /// request was no JSON-RPC message).
    pub fn answer(self, id: Option<&RequestId>) -> Response {
        self.log();
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

/// The store could not be reached (a passing outage), or failed otherwise (a vault or a row it
/// cannot read, a conflict the caller did not expect).
impl From<StoreError> for ProxyError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Database(_) | StoreError::Connect { .. } => ProxyError::Unavailable {
                what: "the store",
                cause: Box::new(e),
            },
            e => ProxyError::internal("the store", e),
        }
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

    /// A cause with a cause of its own, like hyper's connect error over the OS error.
    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Connect(#[source] std::io::Error);

    fn refused() -> Connect {
        Connect(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ))
    }

    #[test]
    fn naming_the_integration_keeps_the_cause_as_the_source() {
        let i = integration();
        let e = ProxyError::upstream("sending", refused()).of_integration(&i);
        let source = std::error::Error::source(&e).expect("the cause is the source");
        assert!(source.downcast_ref::<Connect>().is_some(), "{source:?}");
        assert_eq!(
            e.chain().to_string(),
            format!(
                "upstream unavailable: integration github (\"GitHub\", id {}): sending: tcp connect error: Connection refused",
                i.id
            )
        );
    }

    #[test]
    fn a_timed_out_upstream_names_its_integration() {
        let i = integration();
        let text = ProxyError::UpstreamTimeout { integration: None }
            .of_integration(&i)
            .to_string();
        assert_eq!(
            text,
            format!(
                "upstream timed out: integration github (\"GitHub\", id {})",
                i.id
            )
        );
    }

    #[test]
    fn client_errors_are_the_clients_and_not_worth_retrying() {
        let client = [
            ProxyError::Unauthorized(Box::new(StatusCode::UNAUTHORIZED.into_response())),
            ProxyError::ForeignOrigin,
            ProxyError::NotFound("Integration not found"),
            ProxyError::BadRequest {
                status: StatusCode::BAD_REQUEST,
                code: jsonrpc::INVALID_REQUEST,
                message: "no".into(),
            },
            ProxyError::PolicyDenied {
                what: "tools/call x of github".into(),
                policy_ids: Vec::new(),
            },
        ];
        for e in client {
            assert_eq!(e.blame(), Blame::Client, "{e:?}");
            assert!(!e.retryable(), "{e:?}");
        }
    }

    #[test]
    fn a_user_who_must_connect_is_the_clients_and_retried_only_after_connecting() {
        let waiting = [
            ProxyError::NotConnected {
                integration_id: "i".into(),
                integration_name: "GitHub".into(),
            },
            ProxyError::ConnectionRequired {
                integration_id: "i".into(),
                integration_name: "GitHub".into(),
                connect_url: "https://gw/connect".into(),
            },
        ];
        for e in waiting {
            assert_eq!(e.blame(), Blame::Client, "{e:?}");
            assert!(!e.retryable(), "{e:?}");
        }
    }

    #[test]
    fn a_broken_off_request_body_is_the_clients_and_can_be_sent_again() {
        let e = ProxyError::RequestBroken(Box::new(refused()));
        assert_eq!(e.blame(), Blame::Client);
        assert!(e.retryable());
    }

    #[test]
    fn upstream_failures_are_the_upstreams_and_worth_retrying() {
        let upstream = [
            ProxyError::upstream("sending", refused()),
            ProxyError::upstream_said("the stream announced no endpoint first"),
            ProxyError::UpstreamTimeout { integration: None },
            ProxyError::SessionExpired,
        ];
        for e in upstream {
            assert_eq!(e.blame(), Blame::Upstream, "{e:?}");
            assert!(e.retryable(), "{e:?}");
        }
    }

    #[test]
    fn an_integration_set_up_wrong_is_the_gateways_and_not_worth_retrying() {
        let e = ProxyError::Misconfigured {
            integration: None,
            what: "the SSRF guard refuses the URL",
            cause: None,
        };
        assert_eq!(e.blame(), Blame::Gateway);
        assert!(!e.retryable());
    }

    #[test]
    fn an_unreachable_store_is_the_gateways_and_worth_retrying() {
        let e = ProxyError::from(StoreError::Connect {
            target: "db:5432/keygate".into(),
            cause: "refused".into(),
        });
        assert!(matches!(e, ProxyError::Unavailable { .. }), "{e:?}");
        assert_eq!(e.blame(), Blame::Gateway);
        assert!(e.retryable());
        assert!(e.chain().to_string().ends_with("refused"), "{}", e.chain());
    }

    #[test]
    fn a_store_fault_is_the_gateways_and_not_worth_retrying() {
        let e = ProxyError::from(StoreError::Corrupt("bad row".into()));
        assert!(matches!(e, ProxyError::Internal { .. }), "{e:?}");
        assert_eq!(e.blame(), Blame::Gateway);
        assert!(!e.retryable());
        assert_eq!(
            e.chain().to_string(),
            "gateway error: the store: corrupt row: bad row"
        );
    }

    #[test]
    fn errors_the_client_cannot_tell_apart_are_answered_as_before() {
        for e in [
            ProxyError::upstream("sending", refused()),
            ProxyError::RequestBroken(Box::new(refused())),
            ProxyError::Misconfigured {
                integration: None,
                what: "the URL does not parse",
                cause: None,
            },
        ] {
            let resp = e.answer(None);
            assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        }
        for e in [
            ProxyError::from(StoreError::Corrupt("x".into())),
            ProxyError::from(StoreError::Connect {
                target: "t".into(),
                cause: "c".into(),
            }),
        ] {
            let resp = e.answer(None);
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
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
