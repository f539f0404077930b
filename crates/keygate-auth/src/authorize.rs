//! The authorization code flow's browser half: `GET /oauth2/authorize` validates and parks the
//! request, `/oauth2/login` signs the user in, `/oauth2/consent` asks (once per client and
//! resource) and issues the one-time code. The same sign-in page serves connect links
//! (`/oauth2/login?connect=…`, back to the link afterwards).
//!
//! Errors about the client or its redirect URI are shown as a page (never redirected, RFC 6749
//! §4.1.2.1); every other error goes back to the client's redirect URI with `state` and `iss`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use keygate_core::{OrgId, Timestamp, UserId};
use keygate_store::{AuthorizationRequest, StoreError};
use serde::Deserialize;
use url::Url;

use crate::clients::{Client, ClientKind};
use crate::limits::{ClientIp, retry_after_secs};
use crate::resource::Resource;
use crate::router::AuthState;
use crate::secret::{hash_secret, verify_password};
use crate::web::{
    CSRF_COOKIE, CSRF_FIELD, CookiePolicy, SESSION_COOKIE, csrf_ok, error_page, random_token,
    render,
};

/// Authorization codes live this long.
pub const CODE_TTL_SECS: i64 = 60;
/// A parked authorization request waits this long for the user.
const REQUEST_TTL_SECS: i64 = 600;
/// A browser sign-in lasts this long.
const BROWSER_SESSION_SECS: i64 = 12 * 3600;

/// Parses `a=1&b=2`, refusing repeated parameters (RFC 6749 §3.1).
pub fn unique_params(raw: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut params = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        if params
            .insert(k.clone().into_owned(), v.into_owned())
            .is_some()
        {
            return Err(format!("parameter `{k}` is repeated"));
        }
    }
    Ok(params)
}

fn get<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// A redirect back to the client carrying an error (RFC 6749 §4.1.2.1, RFC 9207 `iss`).
fn redirect_error(
    state: &AuthState,
    uri: &str,
    code: &str,
    desc: &str,
    st: Option<&str>,
) -> Response {
    let mut url = Url::parse(uri).expect("registered redirect URIs are absolute URLs");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("error", code)
            .append_pair("error_description", desc);
        if let Some(s) = st {
            q.append_pair("state", s);
        }
        q.append_pair("iss", &state.public_url);
    }
    Redirect::to(url.as_str()).into_response()
}

fn is_pkce_challenge(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_scope(scope: &str) -> bool {
    scope.split(' ').filter(|s| !s.is_empty()).all(|s| {
        s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    })
}

/// `GET /oauth2/authorize` (and `/oauth2/auth`).
pub async fn authorize(State(state): State<AuthState>, RawQuery(query): RawQuery) -> Response {
    let params = match unique_params(query.unwrap_or_default().as_bytes()) {
        Ok(p) => p,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let Some(client_id) = get(&params, "client_id") else {
        return error_page(StatusCode::BAD_REQUEST, "client_id is required");
    };
    let client = match Client::resolve(&state, client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return error_page(StatusCode::BAD_REQUEST, "Unknown or archived client"),
        Err(e) => return server_error(e),
    };
    let Some(redirect_uri) = client.redirect_uri(get(&params, "redirect_uri"), &state.public_url)
    else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri is not registered for this client",
        );
    };
    let st = get(&params, "state");
    let fail = |code: &str, desc: &str| redirect_error(&state, &redirect_uri, code, desc, st);

    if get(&params, "response_type") != Some("code") {
        return fail(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    let challenge = get(&params, "code_challenge");
    let pkce_required = match &client.kind {
        ClientKind::Application(app) => client.is_public() || app.oauth.pkce_required,
        ClientKind::Registered(_) | ClientKind::FirstParty => true,
    };
    match (challenge, get(&params, "code_challenge_method")) {
        (Some(c), Some("S256")) if is_pkce_challenge(c) => {}
        (Some(_), Some("S256")) => return fail("invalid_request", "code_challenge is malformed"),
        (Some(_), _) => return fail("invalid_request", "code_challenge_method must be S256"),
        (None, _) if pkce_required => {
            return fail(
                "invalid_request",
                "PKCE with code_challenge_method=S256 is required",
            );
        }
        (None, _) => {}
    }
    let scope = get(&params, "scope").unwrap_or("").to_owned();
    if !valid_scope(&scope) {
        return fail("invalid_scope", "scope is malformed");
    }
    if let ClientKind::Application(app) = &client.kind
        && !app.oauth.scopes.is_empty()
        && let Some(extra) = scope
            .split(' ')
            .find(|s| !s.is_empty() && !app.oauth.scopes.iter().any(|a| a == s))
    {
        return fail(
            "invalid_scope",
            &format!("scope `{extra}` is not allowed for this application"),
        );
    }
    let target = match resolve_target(&state, &client, get(&params, "resource")).await {
        Ok(t) => t,
        Err(TargetError::Invalid(desc)) => return fail("invalid_target", &desc),
        Err(TargetError::Store(e)) => return server_error(e),
    };
    if target.app.is_some() && scope.split(' ').any(|s| s == crate::MANAGEMENT_SCOPE) {
        return fail(
            "invalid_scope",
            "management scopes are not granted for MCP resources",
        );
    }
    let request = AuthorizationRequest {
        id: random_token(),
        org_id: target.org,
        application_id: target.app,
        client_id: client.id.clone(),
        redirect_uri: redirect_uri.clone(),
        scope,
        state: st.map(str::to_owned),
        code_challenge: challenge.map(str::to_owned),
        resource: target.resource,
        expires_at: Timestamp::now().plus_seconds(REQUEST_TTL_SECS),
    };
    if let Err(e) = state.store.insert_authorization_request(&request).await {
        return server_error(e);
    }
    Redirect::to(&format!("/oauth2/login?request={}", request.id)).into_response()
}

/// What a token will be for.
pub struct Target {
    pub resource: String,
    pub app: Option<keygate_core::ApplicationId>,
    pub org: Option<OrgId>,
}

pub enum TargetError {
    Invalid(String),
    Store(StoreError),
}

/// Which resource the client may ask for: an application's own client gets its MCP URLs
/// (default: the aggregated one); registered clients any active application's MCP URL; only
/// the first-party client the management API.
pub async fn resolve_target(
    state: &AuthState,
    client: &Client,
    resource: Option<&str>,
) -> Result<Target, TargetError> {
    let base = &state.public_url;
    let parsed = match resource {
        Some(r) => Some(Resource::parse(base, r).ok_or_else(|| {
            TargetError::Invalid(format!("{r} is not a resource of this gateway"))
        })?),
        None => None,
    };
    let active_app = |id| async move {
        match state.store.application_secret_hash(id).await {
            Ok((app, _)) => Ok(app),
            Err(StoreError::NotFound) => Err(TargetError::Invalid(
                "the application does not exist or is archived".into(),
            )),
            Err(e) => Err(TargetError::Store(e)),
        }
    };
    match (&client.kind, parsed) {
        (ClientKind::Application(app), None) => {
            let r = Resource::AppMcp {
                app: app.id,
                integration: None,
            };
            Ok(Target {
                resource: r.url(base),
                app: Some(app.id),
                org: Some(app.org_id),
            })
        }
        (
            ClientKind::Application(app),
            Some(r @ (Resource::AppMcp { .. } | Resource::KontextMcp)),
        ) => {
            if let Resource::AppMcp { app: id, .. } = &r
                && *id != app.id
            {
                return Err(TargetError::Invalid(
                    "this client may only ask for its own application".into(),
                ));
            }
            let url = r.url(base);
            let own_default = Resource::AppMcp {
                app: app.id,
                integration: None,
            }
            .url(base);
            let listed = app
                .oauth
                .allowed_resources
                .iter()
                .any(|a| a.trim_end_matches('/') == url);
            if !app.oauth.allowed_resources.is_empty() && !listed && url != own_default {
                return Err(TargetError::Invalid(
                    "resource is not in the application's allowedResources".into(),
                ));
            }
            Ok(Target {
                resource: url,
                app: Some(app.id),
                org: Some(app.org_id),
            })
        }
        (
            ClientKind::Registered(_) | ClientKind::FirstParty,
            Some(r @ Resource::AppMcp { app, .. }),
        ) => {
            let app = active_app(app).await?;
            Ok(Target {
                resource: r.url(base),
                app: Some(app.id),
                org: Some(app.org_id),
            })
        }
        (ClientKind::FirstParty, Some(Resource::Management)) => Ok(Target {
            resource: Resource::Management.url(base),
            app: None,
            org: None,
        }),
        (_, Some(Resource::Management)) => Err(TargetError::Invalid(
            "only the first-party keygate client may obtain management API tokens".into(),
        )),
        (_, Some(Resource::KontextMcp)) => Err(TargetError::Invalid(
            "/mcp names the application by its own client; use /apps/{id}/mcp".into(),
        )),
        (_, None) => Err(TargetError::Invalid(
            "resource is required (RFC 8707)".into(),
        )),
    }
}

#[derive(Deserialize)]
pub struct RequestRef {
    request: String,
}

/// The signed-in user of this browser, if any.
pub(crate) async fn browser_user(
    state: &AuthState,
    headers: &HeaderMap,
) -> Option<(OrgId, UserId)> {
    let cookie = state.cookies().get(headers, SESSION_COOKIE)?;
    state
        .store
        .browser_session_user(&hash_secret(&cookie))
        .await
        .ok()
}

/// The CSRF token for a form: the browser's cookie, or a fresh one to set.
pub(crate) fn csrf_token(policy: CookiePolicy, headers: &HeaderMap) -> (String, Vec<HeaderValue>) {
    match policy.get(headers, CSRF_COOKIE).filter(|c| c.len() >= 32) {
        Some(c) => (c, vec![]),
        None => {
            let t = random_token();
            let set = policy.set(CSRF_COOKIE, &t, BROWSER_SESSION_SECS);
            (t, vec![set])
        }
    }
}

fn expired_request() -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "This sign-in request is unknown or has expired. Start again from your application.",
    )
}

fn csrf_failure() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "The form's CSRF token is missing or invalid. Reload the page and try again.",
    )
}

/// `?request=…` (an authorization request) or `?connect=…` (a connect link).
#[derive(Deserialize)]
pub struct LoginRef {
    request: Option<String>,
    connect: Option<String>,
}

/// What a sign-in is for, and where the browser goes once signed in.
enum SignInFor {
    /// An authorization request: on to consent.
    Request(AuthorizationRequest),
    /// A connect link: back to it. Only users of the link's organization may sign in here.
    Connect {
        session: String,
        org: OrgId,
        user: UserId,
    },
}

impl SignInFor {
    async fn find(
        state: &AuthState,
        request: Option<&str>,
        connect: Option<&str>,
    ) -> Result<Self, Response> {
        match (request, connect) {
            (Some(id), None) => match state.store.authorization_request(id).await {
                Ok(req) => Ok(Self::Request(req)),
                Err(StoreError::NotFound) => Err(expired_request()),
                Err(e) => Err(server_error(e)),
            },
            (None, Some(session)) => {
                match state.store.connect_session(&hash_secret(session)).await {
                    Ok((org, _, user)) => Ok(Self::Connect {
                        session: session.to_owned(),
                        org,
                        user,
                    }),
                    Err(StoreError::NotFound) => Err(crate::connect::link_gone()),
                    Err(e) => Err(server_error(e)),
                }
            }
            _ => Err(expired_request()),
        }
    }

    /// The organization whose users may sign in (any, for a client that is not an
    /// application's).
    fn org(&self) -> Option<OrgId> {
        match self {
            Self::Request(req) => req.org_id,
            Self::Connect { org, .. } => Some(*org),
        }
    }

    /// The form's hidden field naming this target.
    fn hidden(&self) -> (&'static str, &str) {
        match self {
            Self::Request(req) => ("request", req.id.as_str()),
            Self::Connect { session, .. } => ("connect", session.as_str()),
        }
    }

    fn next(&self) -> String {
        match self {
            Self::Request(req) => format!("/oauth2/consent?request={}", req.id),
            Self::Connect { session, .. } => crate::connect::link_path(session),
        }
    }

    /// Whether a browser signed in as `user` of `org` skips the form. A connect link needs
    /// its own user: anyone else gets the form, to sign in as that user.
    fn signed_in(&self, org: OrgId, user: UserId) -> bool {
        match self {
            Self::Request(req) => req.org_id.is_none_or(|o| o == org),
            Self::Connect {
                org: o, user: u, ..
            } => *o == org && *u == user,
        }
    }
}

#[derive(askama::Template)]
#[template(path = "auth/login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    /// `request` or `connect`, and its value.
    target_field: &'a str,
    target_value: &'a str,
    error: Option<&'a str>,
}

fn login_form(
    state: &AuthState,
    headers: &HeaderMap,
    target: &SignInFor,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let (csrf, cookies) = csrf_token(state.cookies(), headers);
    let (target_field, target_value) = target.hidden();
    let page = LoginPage {
        csrf: &csrf,
        target_field,
        target_value,
        error,
    };
    render(status, &page, cookies)
}

/// `GET /oauth2/login?request=…` or `?connect=…`
pub async fn login_page(
    State(state): State<AuthState>,
    headers: HeaderMap,
    Query(r): Query<LoginRef>,
) -> Response {
    let target = match SignInFor::find(&state, r.request.as_deref(), r.connect.as_deref()).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    if let Some((org, user)) = browser_user(&state, &headers).await
        && target.signed_in(org, user)
    {
        return Redirect::to(&target.next()).into_response();
    }
    login_form(&state, &headers, &target, StatusCode::OK, None)
}

/// `POST /oauth2/login` with `email`, `password`, `csrf`, and `request` or `connect`.
///
/// Failed sign-ins are throttled per account and per client address ([`crate::limits`]); an
/// attempt that must wait gets 429 with `Retry-After` and no password check.
pub async fn login_submit(
    State(state): State<AuthState>,
    ip: ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(form) = unique_params(&body) else {
        return error_page(StatusCode::BAD_REQUEST, "Malformed form");
    };
    if !csrf_ok(state.cookies(), &headers, get(&form, CSRF_FIELD)) {
        return csrf_failure();
    }
    let target = match SignInFor::find(&state, get(&form, "request"), get(&form, "connect")).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let (email, password) = (
        get(&form, "email").unwrap_or(""),
        get(&form, "password").unwrap_or(""),
    );
    let attempt = match state.limits.begin_login(ip, email) {
        Ok(attempt) => attempt,
        Err(wait) => {
            let secs = retry_after_secs(wait);
            tracing::info!(ip = %ip.0, "sign-in throttled");
            let message = format!("Too many failed sign-ins. Try again in {secs} seconds.");
            let mut resp = login_form(
                &state,
                &headers,
                &target,
                StatusCode::TOO_MANY_REQUESTS,
                Some(&message),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return resp;
        }
    };
    let candidates = match state.store.users_by_email(target.org(), email).await {
        Ok(c) => c,
        Err(e) => return server_error(e),
    };
    let password_owned = password.to_owned();
    // argon2 is deliberately slow: keep it off the async workers.
    let verified = tokio::task::spawn_blocking(move || {
        if candidates.is_empty() {
            // Spend the same time as a real check, so timing does not reveal who exists.
            verify_password(&password_owned, DUMMY_HASH);
        }
        candidates
            .into_iter()
            .filter(|(_, hash)| {
                hash.as_deref()
                    .is_some_and(|h| verify_password(&password_owned, h))
            })
            .map(|(u, _)| u)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let [user] = verified.as_slice() else {
        tracing::info!(ip = %ip.0, "sign-in refused");
        return login_form(
            &state,
            &headers,
            &target,
            StatusCode::UNAUTHORIZED,
            Some("Invalid email or password."),
        );
    };
    attempt.succeeded();
    let session = random_token();
    let expires = Timestamp::now().plus_seconds(BROWSER_SESSION_SECS);
    if let Err(e) = state
        .store
        .insert_browser_session(&hash_secret(&session), user.org_id, user.id, expires)
        .await
    {
        return server_error(e);
    }
    let mut resp = Redirect::to(&target.next()).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        state
            .cookies()
            .set(SESSION_COOKIE, &session, BROWSER_SESSION_SECS),
    );
    resp
}

/// The pieces every consent step needs: a live request and a signed-in user of its org.
async fn consent_context(
    state: &AuthState,
    headers: &HeaderMap,
    request_id: &str,
) -> Result<(AuthorizationRequest, OrgId, UserId), Response> {
    let request = match state.store.authorization_request(request_id).await {
        Ok(req) => req,
        Err(StoreError::NotFound) => return Err(expired_request()),
        Err(e) => return Err(server_error(e)),
    };
    let Some((org, user)) = browser_user(state, headers).await else {
        return Err(Redirect::to(&format!("/oauth2/login?request={}", request.id)).into_response());
    };
    if request.org_id.is_some_and(|o| o != org) {
        return Err(redirect_error(
            state,
            &request.redirect_uri,
            "access_denied",
            "the signed-in user does not belong to this application's organization",
            request.state.as_deref(),
        ));
    }
    Ok((request, org, user))
}

/// `GET /oauth2/consent?request=…`
pub async fn consent_page(
    State(state): State<AuthState>,
    headers: HeaderMap,
    Query(r): Query<RequestRef>,
) -> Response {
    let (request, org, user) = match consent_context(&state, &headers, &r.request).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    match state
        .store
        .has_consent(user, &request.client_id, &request.resource, &request.scope)
        .await
    {
        Ok(true) => return issue_code(&state, &request, org, user).await,
        Ok(false) => {}
        Err(e) => return server_error(e),
    }
    let client = match Client::resolve(&state, &request.client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return error_page(StatusCode::BAD_REQUEST, "Unknown or archived client"),
        Err(e) => return server_error(e),
    };
    let email = state
        .store
        .get_user(org, user)
        .await
        .map(|u| u.email)
        .unwrap_or_default();
    let (csrf, cookies) = csrf_token(state.cookies(), &headers);
    let page = ConsentPage {
        csrf: &csrf,
        request: &request.id,
        client: client.display_name(),
        unverified: client.is_self_registered(),
        email: &email,
        resource: &request.resource,
        scopes: request.scope.split(' ').filter(|s| !s.is_empty()).collect(),
        redirect_host: redirect_host(&request.redirect_uri),
    };
    render(StatusCode::OK, &page, cookies)
}

#[derive(askama::Template)]
#[template(path = "auth/consent.html")]
struct ConsentPage<'a> {
    csrf: &'a str,
    request: &'a str,
    client: String,
    /// A client that registered itself (dynamic client registration, or a client ID metadata
    /// document): its name is its own claim.
    unverified: bool,
    email: &'a str,
    resource: &'a str,
    scopes: Vec<&'a str>,
    /// Where approving sends the browser (scheme, host and port of the redirect URI).
    redirect_host: String,
}

/// The origin of a redirect URI, as a person recognises it.
fn redirect_host(uri: &str) -> String {
    match Url::parse(uri) {
        Ok(url) => match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
            (Some(host), None) => format!("{}://{host}", url.scheme()),
            // A private-use scheme (`com.example.app:/cb`) names the app, not a host.
            (None, _) => format!("{}:", url.scheme()),
        },
        Err(_) => uri.to_owned(),
    }
}

/// `POST /oauth2/consent` with `approve` (or `deny`), `csrf`, `request`.
pub async fn consent_submit(
    State(state): State<AuthState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(form) = unique_params(&body) else {
        return error_page(StatusCode::BAD_REQUEST, "Malformed form");
    };
    if !csrf_ok(state.cookies(), &headers, get(&form, CSRF_FIELD)) {
        return csrf_failure();
    }
    let (request, org, user) =
        match consent_context(&state, &headers, get(&form, "request").unwrap_or("")).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
    if !form.contains_key("approve") {
        return redirect_error(
            &state,
            &request.redirect_uri,
            "access_denied",
            "the user denied access",
            request.state.as_deref(),
        );
    }
    if let Err(e) = state
        .store
        .save_consent(
            org,
            user,
            &request.client_id,
            &request.resource,
            &request.scope,
        )
        .await
    {
        return server_error(e);
    }
    issue_code(&state, &request, org, user).await
}

async fn issue_code(
    state: &AuthState,
    request: &AuthorizationRequest,
    org: OrgId,
    user: UserId,
) -> Response {
    let code = random_token();
    match state
        .store
        .issue_authorization_code(&request.id, org, user, &hash_secret(&code), CODE_TTL_SECS)
        .await
    {
        Ok(_) => {}
        // A double submit: the first one already produced the code.
        Err(StoreError::NotFound) => return expired_request(),
        Err(e) => return server_error(e),
    }
    let mut url = Url::parse(&request.redirect_uri).expect("stored redirect URIs are absolute");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(s) = &request.state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", &state.public_url);
    }
    Redirect::to(url.as_str()).into_response()
}

fn server_error(e: StoreError) -> Response {
    tracing::error!(error = %e, "authorization server failed");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The authorization server failed; try again.",
    )
}

/// A valid argon2id hash of a random password, for constant-time refusals.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$H0ewP7ixuB8WHRIzzwRD2CpzfgfXmMHrQSdF31Jq0vE";
