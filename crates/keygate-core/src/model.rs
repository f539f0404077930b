//! The domain: what the store persists and the API shows. Wire names follow the Kontext API.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::*;
use crate::time::Timestamp;

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($wire => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// A user's role in their organization.
    Role {
        Owner = "owner",
        Admin = "admin",
        Member = "member",
    }
);

impl Role {
    /// Admins and owners see and change the whole organization.
    pub fn is_privileged(&self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

wire_enum!(
    /// Whether an application's OAuth client can keep a secret.
    ClientType {
        Public = "public",
        Confidential = "confidential",
    }
);

wire_enum!(
    /// How the gateway treats an integration.
    Category {
        /// Proxied: agents reach it through the gateway.
        GatewayRemoteMcp = "gateway_remote_mcp",
        /// Credential-only: the gateway brokers credentials, the server is reached directly.
        InternalMcpCredentials = "internal_mcp_credentials",
    }
);

wire_enum!(
    /// Which upstream credential the gateway injects.
    AuthMode {
        Oauth = "oauth",
        UserToken = "user_token",
        ServerToken = "server_token",
        None = "none",
    }
);

impl AuthMode {
    /// The credential is each user's own (a pasted token or an OAuth grant), so a user must
    /// connect before calls carry it; a server token is the organization's.
    pub fn is_per_user(&self) -> bool {
        matches!(self, AuthMode::UserToken | AuthMode::Oauth)
    }
}

wire_enum!(
    /// Outcome of the last connectivity check of an integration.
    ValidationStatus {
        Pending = "pending",
        Valid = "valid",
        Invalid = "invalid",
    }
);

wire_enum!(
    /// What kind of credential a connection holds.
    ConnectionKind {
        UserToken = "user_token",
        Oauth = "oauth",
    }
);

wire_enum!(
    /// Stored state of an agent session.
    SessionStatus {
        Active = "active",
        Disconnected = "disconnected",
    }
);

wire_enum!(
    /// Status derived from activity and expiry.
    DerivedSessionStatus {
        Active = "active",
        Idle = "idle",
        Expired = "expired",
        Disconnected = "disconnected",
    }
);

/// An organization: the tenant.
#[derive(Clone, Debug)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub created_at: Timestamp,
}

/// A human user.
#[derive(Clone, Debug)]
pub struct User {
    pub id: UserId,
    pub org_id: OrgId,
    pub email: String,
    pub role: Role,
    pub created_at: Timestamp,
}

/// A service account. Its secret lives only as a hash in the store.
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    pub id: ServiceAccountId,
    pub org_id: OrgId,
    pub name: String,
    pub description: Option<String>,
    pub acting_user_id: Option<UserId>,
    pub created_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}

/// An application's OAuth client settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthClient {
    pub client_type: ClientType,
    pub redirect_uris: Vec<String>,
    pub pkce_required: bool,
    pub scopes: Vec<String>,
    pub allowed_resources: Vec<String>,
}

/// An application: a gateway URL and an OAuth client.
#[derive(Clone, Debug)]
pub struct Application {
    pub id: ApplicationId,
    pub org_id: OrgId,
    pub name: String,
    pub owner_user_id: Option<UserId>,
    pub oauth: OAuthClient,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}

/// A Cedar tool policy of an organization, as stored. Only enabled policies take part in the
/// gateway's decision.
#[derive(Clone, Debug)]
pub struct Policy {
    pub id: PolicyId,
    pub org_id: OrgId,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub text: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Non-secret OAuth settings of an integration. The client secret is sealed separately.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationOAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo_url: Option<String>,
}

/// An integration. Secrets (server token, OAuth client secret) are not in this struct: the
/// store keeps them sealed and reports only whether they are set.
#[derive(Clone, Debug)]
pub struct Integration {
    pub id: IntegrationId,
    pub org_id: OrgId,
    pub name: String,
    pub slug: String,
    pub url: String,
    pub category: Category,
    pub auth_mode: AuthMode,
    pub oauth: Option<IntegrationOAuth>,
    pub oauth_client_secret_configured: bool,
    pub capabilities: Option<serde_json::Value>,
    pub credential_schema: Option<serde_json::Value>,
    /// Request headers forwarded to this integration besides the proxy's allow-list
    /// (lower-case names, each accepted by [`forwardable_header`]).
    pub forward_headers: Vec<String>,
    pub server_token_configured: bool,
    pub validation_status: ValidationStatus,
    pub validation_message: Option<String>,
    pub last_validated_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}

/// A user's connection to an integration, without its secret.
#[derive(Clone, Debug)]
pub struct Connection {
    pub id: ConnectionId,
    pub org_id: OrgId,
    pub integration_id: IntegrationId,
    pub user_id: UserId,
    pub kind: ConnectionKind,
    pub connected: bool,
    pub expires_at: Option<Timestamp>,
    pub display_name: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One authorization grant an agent holds.
#[derive(Clone, Debug)]
pub struct AgentSession {
    pub id: AgentSessionId,
    pub org_id: OrgId,
    pub application_id: ApplicationId,
    pub user_id: Option<UserId>,
    pub agent_id: Option<String>,
    pub name: Option<String>,
    pub status: SessionStatus,
    pub hostname: Option<String>,
    pub user_agent: Option<String>,
    pub client_info: Option<serde_json::Value>,
    pub token_expires_at: Option<Timestamp>,
    pub last_active_at: Option<Timestamp>,
    pub connected_at: Option<Timestamp>,
    pub disconnected_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// A session with no activity for this long is `idle` rather than `active`.
pub const SESSION_IDLE_AFTER_SECS: i64 = 15 * 60;

impl AgentSession {
    /// `active` within the idle window, `idle` after it, `expired` once its token lapsed,
    /// `disconnected` when revoked or closed.
    pub fn derived_status(&self, now: Timestamp) -> DerivedSessionStatus {
        if self.status == SessionStatus::Disconnected {
            return DerivedSessionStatus::Disconnected;
        }
        if self.token_expires_at.is_some_and(|t| t <= now) {
            return DerivedSessionStatus::Expired;
        }
        let last = self.last_active_at.unwrap_or(self.created_at);
        if now.millis() - last.millis() > SESSION_IDLE_AFTER_SECS * 1000 {
            DerivedSessionStatus::Idle
        } else {
            DerivedSessionStatus::Active
        }
    }
}

/// Session counts shown on an application.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounts {
    pub active: i64,
    pub idle: i64,
    pub live: i64,
    pub total: i64,
}

/// One recorded JSON-RPC exchange.
#[derive(Clone, Debug)]
pub struct TraceEvent {
    pub id: uuid::Uuid,
    pub org_id: OrgId,
    pub created_at: Timestamp,
    /// Groups a session's events: a UUID v7 of the session's start, so traces sort by it.
    pub trace_id: uuid::Uuid,
    pub session_id: String,
    pub agent_session_id: Option<AgentSessionId>,
    pub application_id: ApplicationId,
    pub user_id: Option<UserId>,
    /// The JSON-RPC method (`batch` for a batch, `unknown` when unreadable). Like `status`, a
    /// name that is static text (every status; the usual methods read back from the store)
    /// is not copied.
    pub event_type: Cow<'static, str>,
    /// `ok`, `warn`, `error_remote`, `error_proxy`, `error_auth` or `denied`.
    pub status: Cow<'static, str>,
    pub duration_ms: i64,
    pub integration_id: Option<IntegrationId>,
    pub tool_name: Option<String>,
    pub error_message: Option<String>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub request_json: Option<serde_json::Value>,
    pub response_json: Option<serde_json::Value>,
    /// The W3C trace id of the exchange's OpenTelemetry span, which joins the event with the
    /// spans exported for it; `trace_id` is keygate's per-session grouping.
    pub otel_trace_id: Option<crate::OtelTraceId>,
    /// The id of that span: the gateway's server span for the request.
    pub otel_span_id: Option<crate::OtelSpanId>,
}

/// At most this many extra forwarded headers per integration.
pub const MAX_FORWARD_HEADERS: usize = 16;

/// Name fragments of headers that carry credentials; such a header is never forwarded on an
/// integration's behalf, since it would carry the agent's secret, not the integration's.
const CREDENTIAL_HINTS: &[&str] = &[
    "auth",
    "token",
    "key",
    "secret",
    "cookie",
    "password",
    "passwd",
    "credential",
    "session",
    "signature",
];

/// Headers an integration may not add to the forwarded ones: the gateway sets them, they are
/// hop-by-hop, or they describe the client's network.
const NEVER_FORWARDED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "forwarded",
    "via",
    "x-real-ip",
    "origin",
    "referer",
];

/// An extra request header an integration may have forwarded: a valid field name (RFC 9110
/// token), lower-cased, that cannot carry a credential (no `auth`, `token`, `key`, `secret`,
/// `cookie`, `session`, … in it), is not hop-by-hop, not set by the gateway, not an
/// `X-Forwarded-*`, and not an `Mcp-*` (those pass anyway).
pub fn forwardable_header(name: &str) -> Result<String, &'static str> {
    let name = name.trim().to_ascii_lowercase();
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(tchar) {
        return Err("must be a header name (letters, digits, `-`), at most 64 characters");
    }
    if CREDENTIAL_HINTS.iter().any(|h| name.contains(h)) {
        return Err("must not be a header that carries credentials");
    }
    if NEVER_FORWARDED.contains(&name.as_str()) || name.starts_with("x-forwarded-") {
        return Err("must not be a hop-by-hop or gateway-set header");
    }
    if name.starts_with("mcp-") {
        return Err("is forwarded already (every Mcp-* header is)");
    }
    Ok(name)
}

/// Turns a display name into a URL- and tool-name-safe slug: lowercase ASCII letters, digits
/// and `-`, at most 48 characters. Empty input yields `integration`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug: String = slug.chars().take(48).collect();
    if slug.is_empty() {
        "integration".to_owned()
    } else {
        slug.trim_end_matches('-').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_tool_name_safe() {
        assert_eq!(slugify("GitHub Enterprise!"), "github-enterprise");
        assert_eq!(slugify("  --  "), "integration");
        assert_eq!(slugify("Ünïcode Server 2"), "n-code-server-2");
    }

    #[test]
    fn wire_enums_round_trip() {
        for mode in AuthMode::ALL {
            assert_eq!(AuthMode::parse(mode.as_str()), Some(*mode));
        }
        assert_eq!(AuthMode::parse("bogus"), None);
    }

    #[test]
    fn derived_status_follows_activity_and_expiry() {
        let now = Timestamp::now();
        let mut s = AgentSession {
            id: AgentSessionId::new(),
            org_id: OrgId::new(),
            application_id: ApplicationId::new(),
            user_id: None,
            agent_id: None,
            name: None,
            status: SessionStatus::Active,
            hostname: None,
            user_agent: None,
            client_info: None,
            token_expires_at: Some(now.plus_seconds(60)),
            last_active_at: Some(now),
            connected_at: None,
            disconnected_at: None,
            created_at: now,
        };
        assert_eq!(s.derived_status(now), DerivedSessionStatus::Active);
        s.last_active_at = Some(now.plus_seconds(-SESSION_IDLE_AFTER_SECS - 1));
        assert_eq!(s.derived_status(now), DerivedSessionStatus::Idle);
        s.token_expires_at = Some(now.plus_seconds(-1));
        assert_eq!(s.derived_status(now), DerivedSessionStatus::Expired);
        s.status = SessionStatus::Disconnected;
        assert_eq!(s.derived_status(now), DerivedSessionStatus::Disconnected);
    }
}
