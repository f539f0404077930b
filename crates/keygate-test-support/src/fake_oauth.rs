//! A fake upstream OAuth provider: a real HTTP server with RFC 8414 metadata, dynamic client
//! registration (RFC 7591), an authorization endpoint that approves at once (the user always
//! says yes), a token endpoint with PKCE S256, short-lived access tokens and rotating refresh
//! tokens (a reused refresh token is refused), RFC 7009 revocation and a userinfo endpoint.
//!
//! It records what tests assert on: how many refreshes happened, what was revoked, the last
//! authorization request, and every secret it ever issued (for the log-grep test).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    resource: Option<String>,
}

#[derive(Default)]
struct Inner {
    clients: HashMap<String, (Option<String>, Vec<String>)>,
    codes: HashMap<String, Grant>,
    access: HashMap<String, Instant>,
    refresh: HashMap<String, String>,
    revoked: Vec<String>,
    issued: Vec<String>,
    last_authorize: HashMap<String, String>,
    token_requests: Vec<HashMap<String, String>>,
}

struct Provider {
    issuer: String,
    access_ttl: Duration,
    refresh_delay: Duration,
    refreshes: AtomicUsize,
    /// Refresh requests being answered now, and the most there were at once.
    refreshing: AtomicUsize,
    most_refreshing: AtomicUsize,
    inner: Mutex<Inner>,
}

/// A running fake provider (cheap to clone; the server stops when the last clone drops).
#[derive(Clone)]
pub struct FakeOAuth {
    /// `http://127.0.0.1:PORT` — the issuer and base of every endpoint.
    pub issuer: String,
    provider: Arc<Provider>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn random() -> String {
    URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

impl FakeOAuth {
    /// A provider whose access tokens live `access_ttl`; each refresh takes 100 ms (so
    /// concurrent refreshes would overlap if the gateway let them).
    pub async fn start(access_ttl: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let provider = Arc::new(Provider {
            issuer: issuer.clone(),
            access_ttl,
            refresh_delay: Duration::from_millis(100),
            refreshes: AtomicUsize::new(0),
            refreshing: AtomicUsize::new(0),
            most_refreshing: AtomicUsize::new(0),
            inner: Mutex::default(),
        });
        let app = Router::new()
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/register", post(register))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/userinfo", get(userinfo))
            .with_state(provider.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            issuer,
            provider,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// Registers a client out of band (as an operator would in a provider's console).
    pub fn register_client(&self, id: &str, secret: Option<&str>, redirect_uri: &str) {
        self.lock().clients.insert(
            id.to_owned(),
            (secret.map(str::to_owned), vec![redirect_uri.to_owned()]),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.provider.inner.lock().unwrap()
    }

    /// Whether `token` is a live access token.
    pub fn is_valid(&self, token: &str) -> bool {
        self.lock()
            .access
            .get(token)
            .is_some_and(|exp| *exp > Instant::now())
    }

    /// Issues a token pair to `client_id` out of band, as if its user had just been through
    /// the code flow: the token response (`access_token`, `refresh_token`, `expires_in`).
    pub fn grant(&self, client_id: &str) -> Value {
        let mut inner = self.lock();
        issue(&self.provider, &mut inner, client_id)
    }

    /// How many refresh grants succeeded.
    pub fn refresh_count(&self) -> usize {
        self.provider.refreshes.load(Ordering::SeqCst)
    }

    /// The most refresh requests the provider was answering at once.
    pub fn most_concurrent_refreshes(&self) -> usize {
        self.provider.most_refreshing.load(Ordering::SeqCst)
    }

    /// Every token presented at the revocation endpoint.
    pub fn revoked(&self) -> Vec<String> {
        self.lock().revoked.clone()
    }

    /// Every code, access token, refresh token and client secret this provider issued.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.lock().issued.clone()
    }

    /// The query of the last authorization request.
    pub fn last_authorize(&self) -> HashMap<String, String> {
        self.lock().last_authorize.clone()
    }

    /// The form of every token request (for asserting on `resource`).
    pub fn token_requests(&self) -> Vec<HashMap<String, String>> {
        self.lock().token_requests.clone()
    }

    /// The provider forgets every access token (as after a password change): the next use
    /// of one is refused, while refresh tokens keep working.
    pub fn invalidate_access_tokens(&self) {
        self.lock().access.clear();
    }

    /// The provider ends every grant: access and refresh tokens stop working.
    pub fn revoke_all_grants(&self) {
        let mut inner = self.lock();
        inner.access.clear();
        inner.refresh.clear();
    }
}

async fn metadata(State(p): State<Arc<Provider>>) -> Json<Value> {
    let base = &p.issuer;
    Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "revocation_endpoint": format!("{base}/revoke"),
        "userinfo_endpoint": format!("{base}/userinfo"),
        "registration_endpoint": format!("{base}/register"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }))
}

async fn register(State(p): State<Arc<Provider>>, Json(body): Json<Value>) -> Response {
    let redirect_uris: Vec<String> = body["redirect_uris"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if redirect_uris.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_redirect_uri"})),
        )
            .into_response();
    }
    let (id, secret) = (format!("dcr-{}", random()), random());
    let mut inner = p.inner.lock().unwrap();
    inner.issued.push(secret.clone());
    inner
        .clients
        .insert(id.clone(), (Some(secret.clone()), redirect_uris.clone()));
    (
        StatusCode::CREATED,
        Json(json!({
            "client_id": id,
            "client_secret": secret,
            "redirect_uris": redirect_uris,
            "token_endpoint_auth_method": body["token_endpoint_auth_method"],
        })),
    )
        .into_response()
}

fn oauth_error(code: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": code}))).into_response()
}

async fn authorize(
    State(p): State<Arc<Provider>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = p.inner.lock().unwrap();
    inner.last_authorize = q.clone();
    let client_id = q.get("client_id").cloned().unwrap_or_default();
    let redirect_uri = q.get("redirect_uri").cloned().unwrap_or_default();
    let known = inner
        .clients
        .get(&client_id)
        .is_some_and(|(_, uris)| uris.contains(&redirect_uri));
    if !known {
        return (StatusCode::BAD_REQUEST, "unknown client or redirect_uri").into_response();
    }
    if q.get("code_challenge_method").map(String::as_str) != Some("S256")
        || q.get("response_type").map(String::as_str) != Some("code")
    {
        return (
            StatusCode::BAD_REQUEST,
            "PKCE S256 and response_type=code required",
        )
            .into_response();
    }
    let code = random();
    inner.issued.push(code.clone());
    inner.codes.insert(
        code.clone(),
        Grant {
            client_id,
            redirect_uri: redirect_uri.clone(),
            challenge: q.get("code_challenge").cloned().unwrap_or_default(),
            resource: q.get("resource").cloned(),
        },
    );
    let mut location = url::Url::parse(&redirect_uri).expect("registered URIs parse");
    location.query_pairs_mut().append_pair("code", &code);
    if let Some(state) = q.get("state") {
        location.query_pairs_mut().append_pair("state", state);
    }
    (
        StatusCode::FOUND,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

/// The authenticated client id: HTTP Basic or `client_id` + `client_secret` in the form.
fn client_auth(
    inner: &Inner,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<String> {
    let (id, secret) = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        Some(b) => {
            let decoded = String::from_utf8(STANDARD.decode(b).ok()?).ok()?;
            let (id, secret) = decoded.split_once(':')?;
            let unescape = |s: &str| {
                url::form_urlencoded::parse(format!("v={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (unescape(id), Some(unescape(secret)))
        }
        None => (
            form.get("client_id")?.clone(),
            form.get("client_secret").cloned(),
        ),
    };
    let (expected, _) = inner.clients.get(&id)?;
    (expected == &secret).then_some(id)
}

fn issue(p: &Provider, inner: &mut Inner, client_id: &str) -> Value {
    let (access, refresh) = (format!("at-{}", random()), format!("rt-{}", random()));
    inner.issued.push(access.clone());
    inner.issued.push(refresh.clone());
    inner
        .access
        .insert(access.clone(), Instant::now() + p.access_ttl);
    inner.refresh.insert(refresh.clone(), client_id.to_owned());
    json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": p.access_ttl.as_secs(),
        "refresh_token": refresh,
        "scope": "read",
    })
}

async fn token(
    State(p): State<Arc<Provider>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        let now = p.refreshing.fetch_add(1, Ordering::SeqCst) + 1;
        p.most_refreshing.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(p.refresh_delay).await;
        p.refreshing.fetch_sub(1, Ordering::SeqCst);
    }
    let mut inner = p.inner.lock().unwrap();
    inner.token_requests.push(
        form.iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "code" | "refresh_token" | "code_verifier" | "client_secret"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let Some(client_id) = client_auth(&inner, &headers, &form) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    };
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(grant) = form.get("code").and_then(|c| inner.codes.remove(c)) else {
                return oauth_error("invalid_grant");
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if grant.client_id != client_id
                || form.get("redirect_uri") != Some(&grant.redirect_uri)
                || challenge != grant.challenge
                || form.get("resource") != grant.resource.as_ref()
            {
                return oauth_error("invalid_grant");
            }
            Json(issue(&p, &mut inner, &client_id)).into_response()
        }
        Some("refresh_token") => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            // Rotation: a refresh token works once.
            match inner.refresh.remove(&presented) {
                Some(owner) if owner == client_id => {
                    p.refreshes.fetch_add(1, Ordering::SeqCst);
                    Json(issue(&p, &mut inner, &client_id)).into_response()
                }
                _ => oauth_error("invalid_grant"),
            }
        }
        _ => oauth_error("unsupported_grant_type"),
    }
}

async fn revoke(
    State(p): State<Arc<Provider>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut inner = p.inner.lock().unwrap();
    if client_auth(&inner, &headers, &form).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if let Some(t) = form.get("token") {
        inner.access.remove(t);
        inner.refresh.remove(t);
        inner.revoked.push(t.clone());
    }
    StatusCode::OK.into_response()
}

async fn userinfo(State(p): State<Arc<Provider>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let live = p
        .inner
        .lock()
        .unwrap()
        .access
        .get(token)
        .is_some_and(|e| *e > Instant::now());
    if !live {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"login": "octo-user", "name": "Octo User"})).into_response()
}
