//! The dashboard's pages: askama templates (compiled and type-checked with the crate, every
//! value HTML-escaped unless a template says otherwise, which none does) and the views they
//! show, read from the management API's JSON.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::session::Session;

/// What every signed-in page shows around its content.
pub struct Chrome {
    pub email: String,
    pub csrf: String,
    pub privileged: bool,
    /// The navigation entry of this page.
    pub current: &'static str,
}

impl Chrome {
    pub fn of(session: &Session, current: &'static str) -> Self {
        Self {
            email: session.email.clone(),
            csrf: session.csrf.clone(),
            privileged: session.privileged,
            current,
        }
    }

    /// The pages this user may use: service accounts and the access graph are for owners and
    /// admins.
    pub fn nav(&self) -> Vec<(&'static str, &'static str)> {
        NAV.iter()
            .copied()
            .filter(|(path, _)| self.privileged || !PRIVILEGED_PAGES.contains(path))
            .collect()
    }

    pub fn is_current(&self, path: &str) -> bool {
        path == self.current
    }
}

/// The navigation, in order: (path, label).
pub const NAV: &[(&str, &str)] = &[
    ("/ui/", "Overview"),
    ("/ui/applications", "Applications"),
    ("/ui/integrations", "Integrations"),
    ("/ui/traces", "Traces"),
    ("/ui/sessions", "Agent sessions"),
    ("/ui/connections", "My connections"),
    ("/ui/access-graph", "Access graph"),
    ("/ui/policies", "Policies"),
    ("/ui/service-accounts", "Service accounts"),
];

/// The pages only owners and admins see.
pub const PRIVILEGED_PAGES: &[&str] = &["/ui/service-accounts", "/ui/access-graph"];

/// A notice above a page's content: what an action did, or why it failed.
pub struct Notice {
    pub error: bool,
    pub text: String,
}

impl Notice {
    pub fn error(text: impl Into<String>) -> Option<Self> {
        Some(Self {
            error: true,
            text: text.into(),
        })
    }
    pub fn done(text: impl Into<String>) -> Option<Self> {
        Some(Self {
            error: false,
            text: text.into(),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Items<T> {
    pub items: Vec<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppRow {
    pub id: String,
    pub name: String,
    pub can_modify: bool,
    pub live_session_count: i64,
    pub integrations: Vec<IntegrationRow>,
    #[serde(default)]
    pub oauth: Option<AppOAuth>,
}

/// An application's OAuth client settings.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppOAuth {
    #[serde(rename = "type")]
    pub client_type: String,
    pub client_id: String,
    pub redirect_uris: Vec<String>,
    pub pkce_required: bool,
    pub scopes: Vec<String>,
    pub allowed_resources: Vec<String>,
}

/// An application's new client secret, shown once (after creation or rotation).
pub struct AppSecret {
    pub app_id: String,
    pub client_id: String,
    pub client_secret: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationRow {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub url: String,
    pub auth_mode: String,
    pub validation_status: String,
    pub validation_message: Option<String>,
    pub user_connection: Option<ConnectionState>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionState {
    pub connected: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRow {
    pub id: String,
    pub name: Option<String>,
    pub derived_status: String,
    pub last_active_at: Option<String>,
    pub user_id: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    pub id: String,
    pub created_at: String,
    pub event_type: String,
    pub status: String,
    pub duration_ms: i64,
    pub tool_name: Option<String>,
    pub error_message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total_events: i64,
    pub error_events: i64,
    pub error_rate: f64,
    pub latency: Latency,
}

#[derive(Deserialize)]
pub struct Latency {
    pub p50: i64,
    pub p95: i64,
    pub p99: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRow {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

/// A service account's credentials, shown once after creation.
pub struct Revealed {
    pub client_id: String,
    pub client_secret: String,
}

/// An application's agent sessions, for the sessions page.
pub struct AppSessions {
    pub app: AppRow,
    pub sessions: Vec<SessionRow>,
}

#[derive(Template)]
#[template(path = "ui/overview.html")]
pub struct OverviewPage {
    pub chrome: Chrome,
    pub notice: Option<Notice>,
    pub stats: Stats,
}

#[derive(Template)]
#[template(path = "ui/applications.html")]
pub struct ApplicationsPage {
    pub chrome: Chrome,
    pub notice: Option<Notice>,
    pub public_url: String,
    pub apps: Vec<AppRow>,
    pub integrations: Vec<IntegrationRow>,
    /// A client secret to show once.
    pub revealed: Option<AppSecret>,
}

impl ApplicationsPage {
    /// The secret revealed for `app`, if it is this one's.
    pub fn revealed_for(&self, app: &AppRow) -> Option<&AppSecret> {
        self.revealed.as_ref().filter(|r| r.app_id == app.id)
    }

    /// The integrations `app` could still have attached.
    pub fn attachable(&self, app: &AppRow) -> Vec<&IntegrationRow> {
        self.integrations
            .iter()
            .filter(|i| !app.integrations.iter().any(|a| a.id == i.id))
            .collect()
    }
}

#[derive(Template)]
#[template(path = "ui/integrations.html")]
pub struct IntegrationsPage {
    pub chrome: Chrome,
    pub notice: Option<Notice>,
    pub integrations: Vec<IntegrationRow>,
    /// For owners and admins: the users connected to each integration (by integration id).
    pub connected: std::collections::HashMap<String, Vec<String>>,
}

impl IntegrationsPage {
    /// Who is connected to `integration`, as words.
    pub fn who_is_connected(&self, integration: &IntegrationRow) -> String {
        match self.connected.get(&integration.id) {
            Some(users) if !users.is_empty() => users.join(", "),
            _ => "nobody".to_owned(),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/traces.html")]
pub struct TracesPage {
    pub chrome: Chrome,
    pub notice: Option<Notice>,
    pub events: Vec<EventRow>,
    /// The newest event shown: the live tail starts after it.
    pub after: String,
}

#[derive(Template)]
#[template(path = "ui/sessions.html")]
pub struct SessionsPage {
    pub chrome: Chrome,
    pub notice: Option<Notice>,
    pub apps: Vec<AppSessions>,
}

#[derive(Template)]
#[template(path = "ui/connections.html")]
pub struct ConnectionsPage {
    pub chrome: Chrome,
    pub notice: Option<Notice>,
    pub integrations: Vec<IntegrationRow>,
}

#[derive(Template)]
#[template(path = "ui/service_accounts.html")]
pub struct ServiceAccountsPage {
    pub chrome: Chrome,
    pub notice: Option<Notice>,
    pub accounts: Vec<ServiceAccountRow>,
    pub revealed: Option<Revealed>,
}

#[derive(Template)]
#[template(path = "ui/message.html")]
pub struct MessagePage {
    pub message: Option<String>,
}

/// Renders a page with `status`.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a dashboard template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// The page for a browser without a session: a sign-in link and why it is there.
pub fn signed_out(status: StatusCode, message: &str) -> Response {
    render(
        status,
        &MessagePage {
            message: Some(message.to_owned()),
        },
    )
}

/// A page of a listing with its next cursor.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub text: String,
    pub updated_at: String,
}
