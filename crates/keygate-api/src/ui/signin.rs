//! Signing in to the dashboard: the authorization code flow with PKCE through keygate's own
//! authorization server, as the first-party client `keygate`, redirecting to `/ui/callback`.
//! The code is redeemed in-process; the access token stays in the server-side session.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::header::{CONTENT_TYPE, LOCATION, SET_COOKIE, USER_AGENT};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_auth::clients::{DASHBOARD_CALLBACK_PATH, FIRST_PARTY_CLIENT_ID};
use keygate_auth::grants::AgentInfo;
use keygate_auth::limits::ClientIp;
use keygate_auth::token::{TokenRequest, exchange};
use keygate_auth::web::random_token;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::session::{self, PendingSignin, SESSION_COOKIE, SIGNIN_COOKIE, Session};
use super::{Ui, pages};
use crate::caller::{Caller, CallerKind};

/// `GET /ui/login`: starts a sign-in and sends the browser to `/oauth2/authorize`.
pub async fn login(State(ui): State<Ui>) -> Response {
    let pending = PendingSignin::fresh();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
    let public = ui.public_url();
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", FIRST_PARTY_CLIENT_ID),
        (
            "redirect_uri",
            &format!("{public}{DASHBOARD_CALLBACK_PATH}"),
        ),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("state", &pending.state),
        ("resource", &ui.api_state.auth.management_audience()),
    ])
    .expect("strings encode as a query");
    see_other(
        &format!("/oauth2/authorize?{query}"),
        vec![pending.cookie(ui.cookies())],
    )
}

/// `GET /ui/callback?code=…&state=…`: redeems the code and opens a session.
pub async fn callback(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let policy = ui.cookies();
    let clear_signin = session::clear(policy, SIGNIN_COOKIE);
    let refuse = |message: &str| {
        let mut resp = pages::signed_out(StatusCode::BAD_REQUEST, message);
        resp.headers_mut().append(SET_COOKIE, clear_signin.clone());
        resp
    };
    let Some(pending) = PendingSignin::from_cookie(policy, &headers) else {
        return refuse("This sign-in has expired or was already used. Sign in again.");
    };
    let state_matches = params
        .get("state")
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(pending.state.as_bytes())));
    if !state_matches {
        return pages::signed_out(
            StatusCode::BAD_REQUEST,
            "The sign-in did not match. Sign in again.",
        );
    }
    let Some(code) = params.get("code") else {
        let why = params
            .get("error_description")
            .or_else(|| params.get("error"))
            .map_or("no code", String::as_str);
        return refuse(&format!("Sign-in refused: {why}"));
    };
    match open_session(&ui, code, &pending.verifier, &headers).await {
        Ok(session) => {
            let max_age = session
                .expires
                .saturating_duration_since(Instant::now())
                .as_secs() as i64;
            let id = ui.sessions.open(session);
            let cookie = policy.set(SESSION_COOKIE, &id, max_age);
            see_other("/ui/", vec![cookie, clear_signin])
        }
        Err(why) => {
            tracing::info!(%why, "dashboard sign-in failed");
            refuse(&format!("Sign-in failed: {why}"))
        }
    }
}

/// `POST /ui/logout` (CSRF-checked by the caller): forgets the session and revokes its grant
/// and access token, through the revocation endpoint's own logic.
pub async fn logout(ui: &Ui, headers: &HeaderMap) -> Response {
    let policy = ui.cookies();
    if let Some(session) = ui.sessions.close(policy, headers) {
        if let Some(refresh) = &session.refresh_token {
            revoke(ui, refresh, "refresh_token").await;
        }
        revoke(ui, &session.access_token, "access_token").await;
    }
    see_other(
        "/ui/signed-out",
        vec![session::clear(policy, SESSION_COOKIE)],
    )
}

/// RFC 7009 revocation of `token` as the first-party client, in-process.
async fn revoke(ui: &Ui, token: &str, hint: &str) {
    let form = serde_urlencoded::to_string([
        ("client_id", FIRST_PARTY_CLIENT_ID),
        ("token", token),
        ("token_type_hint", hint),
    ])
    .expect("strings encode as a form");
    let resp = keygate_auth::revoke::revoke(
        State(ui.api_state.auth.clone()),
        ClientIp(std::net::Ipv6Addr::LOCALHOST.into()),
        form_headers(),
        form.into(),
    )
    .await;
    if !resp.status().is_success() {
        tracing::warn!(status = %resp.status(), hint, "dashboard sign-out could not revoke a token");
    }
}

fn form_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    headers
}

/// Redeems `code` at the token endpoint's own logic and resolves who signed in.
async fn open_session(
    ui: &Ui,
    code: &str,
    verifier: &str,
    headers: &HeaderMap,
) -> Result<Session, String> {
    let public = ui.public_url();
    let form = serde_urlencoded::to_string([
        ("grant_type", "authorization_code"),
        ("client_id", FIRST_PARTY_CLIENT_ID),
        ("code", code),
        (
            "redirect_uri",
            &format!("{public}{DASHBOARD_CALLBACK_PATH}"),
        ),
        ("code_verifier", verifier),
        ("resource", &ui.api_state.auth.management_audience()),
    ])
    .expect("strings encode as a form");
    let request =
        TokenRequest::parse(&form_headers(), form.as_bytes()).map_err(|e| e.to_string())?;
    let agent = AgentInfo {
        user_agent: headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let token = exchange(&ui.api_state.auth, request, agent)
        .await
        .map_err(|e| e.to_string())?;
    let mut bearer = HeaderMap::new();
    bearer.insert(
        axum::http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", token.access_token))
            .map_err(|e| e.to_string())?,
    );
    let caller = Caller::resolve(&ui.api_state, &bearer)
        .await
        .map_err(|e| e.to_string())?;
    let CallerKind::User { id, .. } = caller.kind else {
        return Err("only people sign in to the dashboard".into());
    };
    let user = ui
        .api_state
        .store()
        .get_user(caller.org, id)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Session {
        access_token: token.access_token,
        refresh_token: token.refresh_token,
        csrf: random_token(),
        email: user.email,
        privileged: caller.is_privileged(),
        expires: Instant::now() + Duration::from_secs(token.expires_in),
    })
}

/// A `303 See Other` to `location`, setting `cookies`.
pub fn see_other(location: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    h.insert(
        LOCATION,
        HeaderValue::from_str(location).expect("locations are built from URL-safe parts"),
    );
    for c in cookies {
        h.append(SET_COOKIE, c);
    }
    resp
}
