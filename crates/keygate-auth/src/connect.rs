//! The connect page, `/oauth/connect?session=…`: where an agent's user stores the credentials
//! an application's integrations need. The gateway hands the link out in `-32042` errors and
//! `POST /mcp/connect-session`; it names one user and is not a bearer capability:
//!
//! - it opens only for that user, signed in at the gateway's own sign-in page (a browser that
//!   is not signed in as them is sent there, `/oauth2/login?connect=…`, and back); another
//!   signed-in user gets a page saying the link is someone else's;
//! - it lives `auth.connect_link_ttl_secs` (stored as a hash), and completing a connection
//!   uses it up — storing a token here, or the provider's callback for a flow started here.
//!   Viewing the page does not.
//!
//! `user_token` integrations get a form with a `token` field and a `connect` button; `oauth`
//! integrations a button that starts the provider's authorization flow ([`crate::broker`]),
//! which comes back to `/oauth/connect/callback`.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use keygate_core::model::AuthMode;
use keygate_core::{ApplicationId, IntegrationId, OrgId, Secret, Timestamp, UserId};
use keygate_store::StoreError;
use serde::Deserialize;

use crate::authorize::{browser_user, csrf_token, unique_params};
use crate::broker::BrokerError;
use crate::router::AuthState;
use crate::secret::hash_secret;
use crate::web::{
    CSRF_FIELD, MessagePage, csrf_ok, error_page, message_page, random_token, render,
};

/// A new connect session for a user of an application: `(id, expiresAt, connect URL)`.
pub async fn create_connect_session(
    state: &AuthState,
    org: OrgId,
    app: ApplicationId,
    user: UserId,
) -> Result<(String, Timestamp, String), StoreError> {
    let id = random_token();
    let ttl = i64::try_from(state.connect_link_ttl_secs).unwrap_or(i64::MAX);
    let expires = Timestamp::now().plus_seconds(ttl);
    state
        .store
        .insert_connect_session(&hash_secret(&id), org, app, user, expires)
        .await?;
    let url = format!("{}{}", state.public_url, link_path(&id));
    Ok((id, expires, url))
}

/// `/oauth/connect?session=…`
pub(crate) fn link_path(session: &str) -> String {
    format!(
        "/oauth/connect?session={}",
        url::form_urlencoded::byte_serialize(session.as_bytes()).collect::<String>()
    )
}

/// The page for a link that is unknown, expired or used up.
pub(crate) fn link_gone() -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "This connect link is unknown, has expired or was already used. Ask your agent for a new one.",
    )
}

#[derive(Deserialize)]
pub struct SessionRef {
    session: String,
}

/// A live link and the user it is for.
struct Link {
    org: OrgId,
    app: ApplicationId,
    user: UserId,
}

/// The live link `session`, if this browser is signed in as its user: a browser not signed
/// in is sent to sign in; another user is refused.
async fn open_link(
    state: &AuthState,
    headers: &HeaderMap,
    session: &str,
) -> Result<Link, Response> {
    let (org, app, user) = match state.store.connect_session(&hash_secret(session)).await {
        Ok(s) => s,
        Err(StoreError::NotFound) => return Err(link_gone()),
        Err(e) => return Err(failed(e)),
    };
    let sign_in = format!(
        "/oauth2/login?connect={}",
        url::form_urlencoded::byte_serialize(session.as_bytes()).collect::<String>()
    );
    match browser_user(state, headers).await {
        Some((o, u)) if o == org && u == user => Ok(Link { org, app, user }),
        Some((o, u)) => {
            tracing::info!(link_user = %user, signed_in = %u, "connect link refused to another user");
            let email = state
                .store
                .get_user(o, u)
                .await
                .map(|u| u.email)
                .unwrap_or_default();
            let message = format!(
                "You are signed in as {email}, but this connect link was made for another \
                 account. Only that account can use it."
            );
            Err(render(
                StatusCode::FORBIDDEN,
                &MessagePage {
                    title: "Not your connect link",
                    message: &message,
                    error: true,
                    link: Some((&sign_in, "Sign in with another account")),
                },
                vec![],
            ))
        }
        None => Err(Redirect::to(&sign_in).into_response()),
    }
}

/// `GET /oauth/connect?session=…`
pub async fn connect_page(
    State(state): State<AuthState>,
    headers: HeaderMap,
    Query(r): Query<SessionRef>,
) -> Response {
    let Link { org, app, user } = match open_link(&state, &headers, &r.session).await {
        Ok(link) => link,
        Err(resp) => return resp,
    };
    let (csrf, cookies) = csrf_token(state.cookies(), &headers);
    let integrations = match state.store.attached_integrations(org, app).await {
        Ok(list) => list,
        Err(e) => return failed(e),
    };
    let mut items = Vec::new();
    for i in integrations.iter().filter(|i| i.auth_mode.is_per_user()) {
        let connected = match state.store.get_connection(org, i.id, user).await {
            Ok(c) => c.connected,
            Err(StoreError::NotFound) => false,
            Err(e) => return failed(e),
        };
        items.push(ConnectItem {
            id: i.id.to_string(),
            name: i.name.clone(),
            connected,
            oauth: i.auth_mode == AuthMode::Oauth,
        });
    }
    let page = ConnectPage {
        csrf: &csrf,
        session: &r.session,
        items,
    };
    render(StatusCode::OK, &page, cookies)
}

#[derive(askama::Template)]
#[template(path = "auth/connect.html")]
struct ConnectPage<'a> {
    csrf: &'a str,
    session: &'a str,
    items: Vec<ConnectItem>,
}

/// An integration the link's user connects with their own token or OAuth.
struct ConnectItem {
    id: String,
    name: String,
    connected: bool,
    /// Connected through the provider's OAuth (else with a pasted token).
    oauth: bool,
}

/// `POST /oauth/connect` with `csrf`, `session`, `integration`, and `token` + `connect` or
/// `oauth`.
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
    let Link { org, app, user } = match open_link(&state, &headers, session).await {
        Ok(link) => link,
        Err(resp) => return resp,
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
        // The provider's callback uses the link up (see `Broker::complete`).
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
    let Some(token) = field("token").filter(|t| t.len() <= 16 * 1024) else {
        return error_page(StatusCode::BAD_REQUEST, "A token is required");
    };
    // Use the link up first: of two submissions racing, only one stores.
    match state
        .store
        .take_connect_session(&hash_secret(session))
        .await
    {
        Ok(taken) if taken == (org, app, user) => {}
        Ok(_) | Err(StoreError::NotFound) => return link_gone(),
        Err(e) => return failed(e),
    }
    if let Err(e) = state
        .store
        .put_user_token(org, integration.id, user, &Secret::new(token), None)
        .await
    {
        return failed(e);
    }
    connected_page(&integration.name)
}

/// The end of a connection: the link is used up, so there is no page to go back to.
fn connected_page(name: &str) -> Response {
    message_page(
        StatusCode::OK,
        "Connected",
        &format!("{name} is connected. You can close this window and return to your agent."),
    )
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
        Ok(done) => connected_page(&done.integration.name),
        Err(e) => broker_failed(&e),
    }
}

fn broker_failed(e: &BrokerError) -> Response {
    match e {
        BrokerError::UnknownState => error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown, was already used or has expired, or its connect link was \
             already used. Start again from your agent.",
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
