//! Wire shapes of the management API (camelCase, as in the Kontext API reference).

use keygate_core::Timestamp;
use keygate_core::model::{
    AgentSession, Application, AuthMode, Category, ClientType, Connection, DerivedSessionStatus,
    Integration, IntegrationOAuth, ServiceAccount, SessionCounts, ValidationStatus,
};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// `Some(None)` for an explicit `null`, `None` for an absent field.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// === Applications ===

/// An application's OAuth client as shown by the API.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationOAuthView {
    #[serde(rename = "type")]
    pub client_type: ClientType,
    pub client_id: String,
    pub redirect_uris: Vec<String>,
    pub pkce_required: bool,
    pub scopes: Vec<String>,
    pub allowed_resources: Vec<String>,
    pub authorization_url: String,
    pub token_url: String,
    pub gateway_url: String,
    /// Only in create and rotate-secret responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

impl ApplicationOAuthView {
    pub fn new(app: &Application, public_url: &str, secret: Option<String>) -> Self {
        Self {
            client_type: app.oauth.client_type,
            client_id: app.id.client_id(),
            redirect_uris: app.oauth.redirect_uris.clone(),
            pkce_required: app.oauth.pkce_required,
            scopes: app.oauth.scopes.clone(),
            allowed_resources: app.oauth.allowed_resources.clone(),
            authorization_url: format!("{public_url}/oauth2/authorize"),
            token_url: format!("{public_url}/oauth2/token"),
            gateway_url: format!("{public_url}/apps/{}/mcp", app.id),
            client_secret: secret,
        }
    }
}

/// An application.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationView {
    pub id: String,
    pub name: String,
    pub owner_user_id: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub archived_at: Option<Timestamp>,
    pub can_modify: bool,
    pub active_session_count: i64,
    pub idle_session_count: i64,
    pub live_session_count: i64,
    pub total_session_count: i64,
    pub mcp_url_template: Option<String>,
    pub integrations: Vec<IntegrationView>,
    pub oauth: Option<ApplicationOAuthView>,
}

impl ApplicationView {
    pub fn new(
        app: &Application,
        public_url: &str,
        can_modify: bool,
        counts: SessionCounts,
        integrations: Vec<IntegrationView>,
        secret: Option<String>,
    ) -> Self {
        Self {
            id: app.id.to_string(),
            name: app.name.clone(),
            owner_user_id: app.owner_user_id.map(|u| u.to_string()),
            created_at: app.created_at,
            updated_at: app.updated_at,
            archived_at: app.archived_at,
            can_modify,
            active_session_count: counts.active,
            idle_session_count: counts.idle,
            live_session_count: counts.live,
            total_session_count: counts.total,
            mcp_url_template: Some(format!("{public_url}/apps/{}/mcp{{/integration}}", app.id)),
            integrations,
            oauth: Some(ApplicationOAuthView::new(app, public_url, secret)),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ApplicationEnvelope {
    pub application: ApplicationView,
}

/// Create and rotate-secret responses: the application and, once, its secret.
#[derive(Serialize, ToSchema)]
pub struct ApplicationWithSecret {
    pub application: ApplicationView,
    pub oauth: ApplicationOAuthView,
}

#[derive(Serialize, ToSchema)]
pub struct ApplicationOAuthEnvelope {
    pub oauth: ApplicationOAuthView,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationList {
    pub items: Vec<ApplicationView>,
    pub next_cursor: Option<String>,
}

/// OAuth settings of a new application.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApplicationOAuth {
    #[serde(rename = "type")]
    pub client_type: ClientType,
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub pkce_required: Option<bool>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub allowed_resources: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApplication {
    pub name: String,
    pub oauth: CreateApplicationOAuth,
}

/// A partial update of an application's OAuth client.
#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateApplicationOAuth {
    pub redirect_uris: Option<Vec<String>>,
    pub pkce_required: Option<bool>,
    pub scopes: Option<Vec<String>>,
    pub allowed_resources: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateApplication {
    pub name: Option<String>,
    pub oauth: Option<UpdateApplicationOAuth>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntegrationIds {
    pub integration_ids: Vec<String>,
}

// === Integrations ===

/// An integration's OAuth settings as shown: never the client secret.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationOAuthView {
    #[serde(flatten)]
    #[schema(inline)]
    pub config: IntegrationOAuthSchema,
    pub client_secret_configured: bool,
}

/// Non-secret OAuth fields (schema mirror of the domain type).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationOAuthSchema {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userinfo_url: Option<String>,
}

impl IntegrationOAuthView {
    pub fn new(o: &IntegrationOAuth, client_secret_configured: bool) -> Self {
        Self {
            config: IntegrationOAuthSchema {
                provider: o.provider.clone(),
                issuer: o.issuer.clone(),
                scopes: o.scopes.clone(),
                client_id: o.client_id.clone(),
                authorization_url: o.authorization_url.clone(),
                token_url: o.token_url.clone(),
                revocation_url: o.revocation_url.clone(),
                userinfo_url: o.userinfo_url.clone(),
            },
            client_secret_configured,
        }
    }
}

/// A user's connection to an integration.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub connected: bool,
    /// `connected` or `disconnected`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

impl ConnectionView {
    pub fn of(conn: Option<&Connection>) -> Self {
        match conn {
            Some(c) if c.connected => Self {
                connected: true,
                status: "connected",
                expires_at: c.expires_at,
                display_name: c.display_name.clone(),
            },
            _ => Self {
                connected: false,
                status: "disconnected",
                expires_at: None,
                display_name: None,
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionEnvelope {
    pub connection: ConnectionView,
}

/// An integration.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationView {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub url: String,
    pub category: Category,
    pub auth_mode: AuthMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth: Option<IntegrationOAuthView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_schema: Option<serde_json::Value>,
    /// Request headers forwarded to this integration besides the gateway's allow-list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<String>,
    pub server_token_configured: bool,
    pub validation_status: ValidationStatus,
    pub validation_message: Option<String>,
    pub last_validated_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_connection: Option<ConnectionView>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<Timestamp>,
}

impl IntegrationView {
    pub fn new(i: &Integration, user_connection: Option<ConnectionView>) -> Self {
        Self {
            id: i.id.to_string(),
            name: i.name.clone(),
            slug: i.slug.clone(),
            url: i.url.clone(),
            category: i.category,
            auth_mode: i.auth_mode,
            oauth: i
                .oauth
                .as_ref()
                .map(|o| IntegrationOAuthView::new(o, i.oauth_client_secret_configured)),
            capabilities: i.capabilities.clone(),
            credential_schema: i.credential_schema.clone(),
            forward_headers: i.forward_headers.clone(),
            server_token_configured: i.server_token_configured,
            validation_status: i.validation_status,
            validation_message: i.validation_message.clone(),
            last_validated_at: i.last_validated_at,
            user_connection,
            created_at: i.created_at,
            updated_at: i.updated_at,
            archived_at: i.archived_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct IntegrationEnvelope {
    pub integration: IntegrationView,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationList {
    pub items: Vec<IntegrationView>,
    pub next_cursor: Option<String>,
}

/// OAuth settings of an integration, as written (`PUT /integrations/:id/oauth`, or `oauth` on
/// create).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntegrationOAuthInput {
    pub provider: Option<String>,
    pub issuer: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    /// Sealed on receipt; never returned.
    pub client_secret: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub revocation_url: Option<String>,
    pub userinfo_url: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateIntegration {
    pub name: String,
    pub url: String,
    pub category: Option<Category>,
    pub auth_mode: Option<AuthMode>,
    pub oauth: Option<IntegrationOAuthInput>,
    pub capabilities: Option<serde_json::Value>,
    pub credential_schema: Option<serde_json::Value>,
    /// Request headers the agent may send this integration besides the gateway's allow-list
    /// (never one that can carry a credential, e.g. `X-Tenant`; at most 16).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Required when `authMode` is `server_token`; sealed on receipt, never returned.
    pub server_token: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateIntegration {
    pub name: Option<String>,
    pub url: Option<String>,
    pub category: Option<Category>,
    pub auth_mode: Option<AuthMode>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    pub capabilities: Option<Option<serde_json::Value>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    pub credential_schema: Option<Option<serde_json::Value>>,
    /// Replaces the extra forwarded request headers (`[]` removes them).
    pub forward_headers: Option<Vec<String>>,
    /// A new server token (sealed), or `null` to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub server_token: Option<Option<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct IntegrationOAuthEnvelope {
    pub oauth: IntegrationOAuthView,
}

/// Result of a connectivity check.
#[derive(Serialize, ToSchema)]
pub struct ValidationResult {
    pub status: ValidationStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddUserToken {
    /// The personal access token or API key; sealed on receipt, never returned.
    pub token: String,
    pub display_name: Option<String>,
}

// === Service accounts ===

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountView {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acting_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<Timestamp>,
}

impl From<&ServiceAccount> for ServiceAccountView {
    fn from(sa: &ServiceAccount) -> Self {
        Self {
            id: sa.id.to_string(),
            name: sa.name.clone(),
            description: sa.description.clone(),
            created_at: sa.created_at,
            acting_user_id: sa.acting_user_id.map(|u| u.to_string()),
            archived_at: sa.archived_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountWithCredentials {
    pub service_account: ServiceAccountView,
    pub credentials: Credentials,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountEnvelope {
    pub service_account: ServiceAccountView,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountList {
    pub items: Vec<ServiceAccountView>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateServiceAccount {
    pub name: String,
    pub description: Option<String>,
}

// === Agent sessions ===

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub id: String,
    pub name: Option<String>,
    pub status: keygate_core::model::SessionStatus,
    pub derived_status: DerivedSessionStatus,
    pub token_expires_at: Option<Timestamp>,
    pub last_active_at: Option<Timestamp>,
    pub connected_at: Option<Timestamp>,
    pub disconnected_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub agent_id: Option<String>,
    pub user_id: Option<String>,
    pub hostname: Option<String>,
    pub user_agent: Option<String>,
    pub client_info: Option<serde_json::Value>,
}

impl SessionView {
    pub fn new(s: &AgentSession, now: Timestamp) -> Self {
        Self {
            id: s.id.to_string(),
            name: s.name.clone(),
            status: s.status,
            derived_status: s.derived_status(now),
            token_expires_at: s.token_expires_at,
            last_active_at: s.last_active_at,
            connected_at: s.connected_at,
            disconnected_at: s.disconnected_at,
            created_at: s.created_at,
            agent_id: Some(
                s.agent_id
                    .clone()
                    .unwrap_or_else(|| s.application_id.to_string()),
            ),
            user_id: s.user_id.map(|u| u.to_string()),
            hostname: s.hostname.clone(),
            user_agent: s.user_agent.clone(),
            client_info: s.client_info.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<SessionView>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionEnvelope {
    pub session: SessionView,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokeSessionsResult {
    pub success: bool,
    pub disconnected_count: u64,
}

/// A Cedar tool policy.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    /// The Cedar text (one or more statements).
    pub text: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<&keygate_core::model::Policy> for PolicyView {
    fn from(p: &keygate_core::model::Policy) -> Self {
        Self {
            id: p.id.to_string(),
            name: p.name.clone(),
            description: p.description.clone(),
            enabled: p.enabled,
            text: p.text.clone(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PolicyEnvelope {
    pub policy: PolicyView,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyList {
    pub items: Vec<PolicyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreatePolicy {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Defaults to true.
    #[serde(default)]
    pub enabled: Option<bool>,
    pub text: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePolicy {
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub text: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValidatePolicy {
    pub text: String,
}

/// The outcome of validating a policy text; `errors` name line and column where Cedar can.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyValidation {
    pub valid: bool,
    pub errors: Vec<crate::error::FieldError>,
}

/// The Cedar schema policies are validated against.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySchema {
    /// Cedar's human-readable schema format.
    pub schema: String,
    pub actions: Vec<String>,
}

/// The user of a dry run.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluatePrincipal {
    pub id: String,
    pub email: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
}

/// The integration of a dry run's resource.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluateIntegration {
    pub slug: String,
    pub host: String,
}

/// The tool, prompt or resource of a dry run, named as its integration names it.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluateResource {
    pub name: String,
    pub integration: EvaluateIntegration,
    /// The application's id.
    pub application: String,
    /// MCP tool annotations (`readOnlyHint`, …); absent hints take the specification's defaults.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub annotations: serde_json::Value,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluateContext {
    /// The call's arguments.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
}

/// A dry run of the gateway's decision with the organization's enabled policies.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluatePolicy {
    pub principal: EvaluatePrincipal,
    /// `call_tool`, `get_prompt` or `read_resource`.
    pub action: String,
    pub resource: EvaluateResource,
    #[serde(default)]
    pub context: EvaluateContext,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDecision {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The policies behind it (permits that allowed; forbids, or failing policies, that denied).
    pub policy_ids: Vec<String>,
    /// Evaluation errors, each of which denies.
    pub errors: Vec<String>,
    /// Allowed only once the user approves (a permit behind it is annotated
    /// `@approval("user")`): the gateway asks with an MCP elicitation.
    pub approval_required: bool,
}
