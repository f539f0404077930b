//! The connect page, `/oauth/connect?session=…`: where an agent's user stores the credentials
//! an application's integrations need. A connect session (15 minutes, stored as a hash) is the
//! capability: the gateway hands its URL out in `-32042` errors and `POST /mcp/connect-session`.
//! `user_token` integrations get a form with a `token` field and a `connect` button; `oauth`
//! integrations a button that starts the provider's authorization flow ([`crate::broker`]),
//! which comes back to `/oauth/connect/callback` and then to this page.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use keygate_core::model::AuthMode;
use keygate_core::{ApplicationId, IntegrationId, OrgId, Secret, Timestamp, UserId};
use keygate_store::StoreError;
use serde::Deserialize;

use crate::authorize::unique_params;
use crate::broker::BrokerError;
use crate::router::AuthState;
use crate::secret::hash_secret;
use crate::web::{CSRF_COOKIE, CSRF_FIELD, csrf_ok, error_page, escape, page, random_token};

/// How long a connect session lasts.
pub const CONNECT_SESSION_SECS: i64 = 15 * 60;

/// A new connect session for a user of an application: `(id, expiresAt, connect URL)`.
pub async fn create_connect_session(
    state: &AuthState,
    org: OrgId,
    app: ApplicationId,
    user: UserId,
) -> Result<(String, Timestamp, String), StoreError> {
    let id = random_token();
    let expires = Timestamp::now().plus_seconds(CONNECT_SESSION_SECS);
    state
        .store
        .insert_connect_session(&hash_secret(&id), org, app, user, expires)
        .await?;
    let url = format!("{}/oauth/connect?session={id}", state.public_url);
    Ok((id, expires, url))
}

#[derive(Deserialize)]
pub struct SessionRef {
    session: String,
}

fn expired() -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "This connect link is unknown or has expired. Ask your agent for a new one.",
    )
}

/// `GET /oauth/connect?session=…`
pub async fn connect_page(
    State(state): State<AuthState>,
    headers: HeaderMap,
    Query(r): Query<SessionRef>,
) -> Response {
    let Ok((org, app, user)) = state.store.connect_session(&hash_secret(&r.session)).await else {
        return expired();
    };
    let (csrf, cookies) = match state
        .cookies()
        .get(&headers, CSRF_COOKIE)
        .filter(|c| c.len() >= 32)
    {
        Some(c) => (c, vec![]),
        None => {
            let t = random_token();
            (
                t.clone(),
                vec![state.cookies().set(CSRF_COOKIE, &t, CONNECT_SESSION_SECS)],
            )
        }
    };
    let integrations = match state.store.attached_integrations(org, app).await {
        Ok(list) => list,
        Err(e) => return failed(e),
    };
    let mut body = String::from("<ul>");
    for i in integrations
        .iter()
        .filter(|i| matches!(i.auth_mode, AuthMode::UserToken | AuthMode::Oauth))
    {
        let connected = match state.store.get_connection(org, i.id, user).await {
            Ok(c) => c.connected,
            Err(StoreError::NotFound) => false,
            Err(e) => return failed(e),
        };
        let name = escape(&i.name);
        body.push_str(&match (connected, i.auth_mode) {
            (true, _) => format!("<li><strong>{name}</strong>: connected</li>"),
            (false, AuthMode::UserToken) => format!(
                "<li><strong>{name}</strong><form method=\"post\" action=\"/oauth/connect\">\
                 <input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"session\" value=\"{session}\">\
                 <input type=\"hidden\" name=\"integration\" value=\"{id}\">\
                 <label for=\"t-{id}\">Personal access token</label>\
                 <input id=\"t-{id}\" name=\"token\" type=\"password\" autocomplete=\"off\" required>\
                 <button type=\"submit\" name=\"connect\" value=\"1\">Connect</button></form></li>",
                session = escape(&r.session),
                id = i.id,
            ),
            (false, AuthMode::Oauth) => format!(
                "<li><strong>{name}</strong><form method=\"post\" action=\"/oauth/connect\">\
                 <input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"session\" value=\"{session}\">\
                 <input type=\"hidden\" name=\"integration\" value=\"{id}\">\
                 <button type=\"submit\" name=\"oauth\" value=\"1\">Connect with {name}</button></form></li>",
                session = escape(&r.session),
                id = i.id,
            ),
            (false, _) => String::new(),
        });
    }
    body.push_str("</ul>");
    page(StatusCode::OK, "Connect your accounts", &body, cookies)
}

/// `POST /oauth/connect` with `csrf`, `session`, `integration`, `token`, `connect`.
pub async fn connect_submit(
    State(state): State<AuthState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(form) = unique_params(&body) else {
        return error_page(StatusCode::BAD_REQUEST, "Malformed form");
    };
    let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if !csrf_ok(state.cookies(), &headers, field(CSRF_FIELD)) {
        return error_page(
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or invalid. Reload the page and try again.",
        );
    }
    let session = field("session").unwrap_or("");
    let Ok((org, app, user)) = state.store.connect_session(&hash_secret(session)).await else {
        return expired();
    };
    let Some(integration) = field("integration").and_then(|v| v.parse::<IntegrationId>().ok())
    else {
        return error_page(StatusCode::BAD_REQUEST, "Unknown integration");
    };
    // Only an integration attached to this session's application, and taking user credentials.
    let attached = match state.store.attached_integrations(org, app).await {
        Ok(list) => list.into_iter().find(|i| i.id == integration),
        Err(e) => return failed(e),
    };
    let Some(integration) = attached else {
        return error_page(StatusCode::BAD_REQUEST, "Unknown integration");
    };
    if integration.auth_mode == AuthMode::Oauth {
        return match state
            .broker
            .begin(org, &integration, user, Some(session))
            .await
        {
            Ok((url, _)) => Redirect::to(&url).into_response(),
            Err(e) => broker_failed(&e),
        };
    }
    if integration.auth_mode != AuthMode::UserToken {
        return error_page(StatusCode::BAD_REQUEST, "Unknown integration");
    }
    let integration = integration.id;
    let Some(token) = field("token").filter(|t| t.len() <= 16 * 1024) else {
        return error_page(StatusCode::BAD_REQUEST, "A token is required");
    };
    if let Err(e) = state
        .store
        .put_user_token(org, integration, user, &Secret::new(token), None)
        .await
    {
        return failed(e);
    }
    Redirect::to(&format!(
        "/oauth/connect?session={}",
        url::form_urlencoded::byte_serialize(session.as_bytes()).collect::<String>()
    ))
    .into_response()
}

#[derive(Deserialize)]
pub struct Callback {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
}

/// `GET /oauth/connect/callback?code=…&state=…`: the provider sends the user back here.
pub async fn callback(State(state): State<AuthState>, Query(q): Query<Callback>) -> Response {
    let Some(flow_state) = q.state.as_deref().filter(|s| !s.is_empty()) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The provider's answer has no state.",
        );
    };
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        // The user declined (or the provider failed): the flow is over either way.
        let _ = state.store.take_flow_state(&hash_secret(flow_state)).await;
        let why = q.error.as_deref().unwrap_or("no code");
        let why: String = why
            .chars()
            .filter(char::is_ascii_graphic)
            .take(64)
            .collect();
        return error_page(
            StatusCode::BAD_REQUEST,
            &format!("The provider did not grant access ({why}). Start again from your agent."),
        );
    };
    match state.broker.complete(flow_state, code).await {
        Ok(done) => match done.return_to {
            Some(session) => Redirect::to(&format!(
                "/oauth/connect?session={}",
                url::form_urlencoded::byte_serialize(session.as_bytes()).collect::<String>()
            ))
            .into_response(),
            None => page(
                StatusCode::OK,
                "Connected",
                &format!(
                    "<p><strong>{}</strong> is connected. You can close this window and return to your agent.</p>",
                    escape(&done.integration.name)
                ),
                vec![],
            ),
        },
        Err(e) => broker_failed(&e),
    }
}

fn broker_failed(e: &BrokerError) -> Response {
    match e {
        BrokerError::UnknownState => error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown, was already used or has expired. Start again from your agent.",
        ),
        BrokerError::Store(_) => {
            tracing::error!(error = %e, "connect flow failed");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong; try again.",
            )
        }
        _ => {
            tracing::warn!(error = %e, "connect flow failed");
            error_page(StatusCode::BAD_GATEWAY, &e.to_string())
        }
    }
}

fn failed(e: StoreError) -> Response {
    tracing::error!(error = %e, "connect page failed");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong; try again.",
    )
}
