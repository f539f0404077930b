//! The dashboard, `/ui`: server-rendered pages over the management API for a signed-in person.
//!
//! Sign-in is the authorization code flow with PKCE through keygate's own authorization server
//! ([`signin`]); the access token lives in a server-side [`session`], named by an HttpOnly
//! cookie. Every page and action asks the management API in-process with that token
//! ([`api`]), so roles and organization scoping are the API's, decided once. Every form
//! carries the session's CSRF token; every response carries a strict Content-Security-Policy
//! (scripts and styles only from `/ui/assets`, no inline code).

pub mod api;
pub mod graph;
pub mod pages;
pub mod policies;
pub mod session;
pub mod signin;

use std::collections::HashMap;

use axum::extract::{Form, Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use keygate_auth::web::CookiePolicy;
use serde_json::json;

use self::api::{Api, CallError};
use self::pages::*;
use self::session::{Session, Sessions};
use crate::ApiState;

/// The policy of every dashboard response: nothing from another origin, no inline script or
/// style, no framing, forms only to this origin.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Ui {
    pub api_state: ApiState,
    /// The management API's router, which every page asks.
    pub api_router: Router,
    pub sessions: Sessions,
}

impl Ui {
    fn public_url(&self) -> &str {
        self.api_state.public_url()
    }

    fn cookies(&self) -> CookiePolicy {
        self.api_state.auth.cookies()
    }

    fn api(&self, session: &Session) -> Api {
        Api::new(self.api_router.clone(), &session.access_token)
    }
}

/// `/ui/*`, asking `api_router` (the management API) for everything it shows or changes.
pub fn router(api_state: ApiState, api_router: Router) -> Router {
    let ui = Ui {
        api_state,
        api_router,
        sessions: Sessions::default(),
    };
    Router::new()
        .route("/", get(|| async { signin::see_other("/ui/", vec![]) }))
        .route("/ui", get(|| async { signin::see_other("/ui/", vec![]) }))
        .route("/ui/", get(overview))
        .route("/ui/login", get(signin::login))
        .route("/ui/callback", get(signin::callback))
        .route("/ui/signed-out", get(signed_out_page))
        .route("/ui/logout", post(logout))
        .route(
            "/ui/applications",
            get(applications).post(create_application),
        )
        .route("/ui/applications/{id}/attach", post(attach_integration))
        .route("/ui/applications/{id}/detach", post(detach_integration))
        .route("/ui/applications/{id}/rotate-secret", post(rotate_secret))
        .route("/ui/applications/{id}/oauth", post(update_oauth))
        .route(
            "/ui/applications/{id}/sessions/revoke",
            post(revoke_sessions),
        )
        .route(
            "/ui/integrations",
            get(integrations).post(create_integration),
        )
        .route("/ui/integrations/{id}/validate", post(validate_integration))
        .route("/ui/traces", get(traces))
        .route("/ui/events/stream", get(event_stream))
        .route("/ui/sessions", get(sessions))
        .route("/ui/connections", get(connections))
        .route("/ui/access-graph", get(access_graph))
        .route(
            "/ui/policies",
            get(policies::policies).post(policies::create_policy),
        )
        .route("/ui/policies/evaluate", post(policies::try_decision))
        .route(
            "/ui/policies/{id}",
            get(policies::policy).post(policies::update_policy),
        )
        .route("/ui/policies/{id}/delete", post(policies::delete_policy))
        .route("/ui/policies/{id}/{to}", post(policies::switch_policy))
        .route(
            "/ui/service-accounts",
            get(service_accounts).post(create_service_account),
        )
        .route(
            "/ui/assets/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/ui/assets/app.css",
            get(|| asset("text/css; charset=utf-8", APP_CSS)),
        )
        .layer(middleware::map_response(security_headers))
        .with_state(ui)
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn signed_out_page() -> Response {
    render(StatusCode::OK, &MessagePage { message: None })
}

/// The signed-in session, or the answer for a browser without one: a `GET` goes to sign in,
/// anything else is refused.
fn require_session(
    ui: &Ui,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Session, Box<Response>> {
    match ui.sessions.current(ui.cookies(), headers) {
        Some(s) => Ok(s),
        None if method == Method::GET => Err(Box::new(signin::see_other("/ui/login", vec![]))),
        None => Err(Box::new(signed_out(
            StatusCode::UNAUTHORIZED,
            "You are signed out.",
        ))),
    }
}

/// The session of a form `POST` whose CSRF token is this session's, or the refusal.
fn require_form(
    ui: &Ui,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Session, Box<Response>> {
    let session = require_session(ui, &Method::POST, headers)?;
    if session.csrf_ok(form.get("csrf").map(String::as_str)) {
        Ok(session)
    } else {
        Err(Box::new(signed_out(
            StatusCode::FORBIDDEN,
            "This form was stale or forged (its CSRF token did not match). Reload the page and try again.",
        )))
    }
}

/// An API refusal shown on a page, or, for a token the API no longer takes, a new sign-in.
fn failure(ui: &Ui, headers: &HeaderMap, e: CallError) -> Response {
    match e {
        CallError::Refused {
            status: StatusCode::UNAUTHORIZED,
            ..
        } => {
            ui.sessions.close(ui.cookies(), headers);
            signin::see_other("/ui/login", vec![])
        }
        CallError::Refused { status, message } => signed_out(status, &message),
        CallError::Unreadable(why) => {
            tracing::error!(%why, "dashboard could not read the management API");
            signed_out(StatusCode::BAD_GATEWAY, "The management API failed.")
        }
    }
}

/// `?done=…` after a redirect: what the action did.
fn done_notice(q: &HashMap<String, String>) -> Option<Notice> {
    q.get("done").and_then(|d| Notice::done(d.clone()))
}

fn form_field<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map_or("", |v| v.trim())
}

fn back_to(path: &str, done: &str) -> Response {
    let query = serde_urlencoded::to_string([("done", done)]).expect("a string encodes");
    signin::see_other(&format!("{path}?{query}"), vec![])
}

async fn overview(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let session = match require_session(&ui, &Method::GET, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match ui
        .api(&session)
        .get::<Stats>("/traces/stats?period=1d")
        .await
    {
        Ok(stats) => render(
            StatusCode::OK,
            &OverviewPage {
                chrome: Chrome::of(&session, "/ui/"),
                notice: done_notice(&q),
                stats,
            },
        ),
        Err(e) => failure(&ui, &headers, e),
    }
}

async fn applications_page(
    ui: &Ui,
    session: &Session,
    notice: Option<Notice>,
) -> Result<ApplicationsPage, CallError> {
    let api = ui.api(session);
    // Owners and admins manage every application, not only those they created.
    let path = if session.privileged {
        "/applications?limit=100&all=true"
    } else {
        "/applications?limit=100"
    };
    let apps: Items<AppRow> = api.get(path).await?;
    let integrations: Items<IntegrationRow> = if session.privileged {
        api.get("/integrations?limit=100").await?
    } else {
        Items { items: vec![] }
    };
    Ok(ApplicationsPage {
        chrome: Chrome::of(session, "/ui/applications"),
        notice,
        public_url: ui.public_url().to_owned(),
        apps: apps.items,
        integrations: integrations.items,
        revealed: None,
    })
}

async fn applications(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let session = match require_session(&ui, &Method::GET, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let page = applications_page(&ui, &session, done_notice(&q)).await;
    respond(&ui, &headers, StatusCode::OK, page)
}

async fn create_application(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let name = form_field(&form, "name");
    let redirect_uris: Vec<&str> = form_field(&form, "redirect_uri")
        .split_whitespace()
        .collect();
    let client_type = if form_field(&form, "client_type") == "confidential" {
        "confidential"
    } else {
        "public"
    };
    let body = json!({"name": name, "oauth": {"type": client_type, "redirectUris": redirect_uris}});
    let created = ui
        .api(&session)
        .post::<serde_json::Value>("/applications", body)
        .await;
    match created {
        Ok(v) => match revealed_secret(&v) {
            Some(secret) => {
                let notice = Notice::done(format!(
                    "Application “{name}” created. Copy its client secret now: it is shown only once."
                ));
                show_secret(&ui, &session, &headers, notice, secret).await
            }
            None => back_to(
                "/ui/applications",
                &format!("Application “{name}” created."),
            ),
        },
        Err(e) => match shown_refusal(e) {
            Ok((status, notice)) => respond(
                &ui,
                &headers,
                status,
                applications_page(&ui, &session, notice).await,
            ),
            Err(e) => failure(&ui, &headers, e),
        },
    }
}

/// The client secret of a create or rotate answer, if it has one.
fn revealed_secret(answer: &serde_json::Value) -> Option<AppSecret> {
    let text = |p: &str| {
        answer
            .pointer(p)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    Some(AppSecret {
        app_id: text("/application/id")?,
        client_id: text("/oauth/clientId")?,
        client_secret: text("/oauth/clientSecret")?,
    })
}

/// The applications page with `secret` shown on this one answer (never again: the store keeps
/// only its hash, and the page is `no-store`).
async fn show_secret(
    ui: &Ui,
    session: &Session,
    headers: &HeaderMap,
    notice: Option<Notice>,
    secret: AppSecret,
) -> Response {
    let page = applications_page(ui, session, notice).await.map(|mut p| {
        p.revealed = Some(secret);
        p
    });
    respond(ui, headers, StatusCode::OK, page)
}

/// A form action's answer: back to `path` with `done`, or — when the API refused it in words —
/// the page again (`page` builds it) with the refusal shown, under the API's status.
pub(super) async fn action_done<P, Page>(
    ui: &Ui,
    headers: &HeaderMap,
    result: Result<(), CallError>,
    (path, done): (&str, &str),
    page: impl FnOnce(Option<Notice>) -> Page,
) -> Response
where
    P: askama::Template,
    Page: Future<Output = Result<P, CallError>>,
{
    match result {
        Ok(()) => back_to(path, done),
        Err(e) => match shown_refusal(e) {
            Ok((status, notice)) => respond(ui, headers, status, page(notice).await),
            Err(e) => failure(ui, headers, e),
        },
    }
}

/// An application action's answer: back to the applications page with `done`, or the refusal
/// shown on it.
async fn application_done(
    ui: &Ui,
    session: &Session,
    headers: &HeaderMap,
    result: Result<(), CallError>,
    done: &str,
) -> Response {
    action_done(ui, headers, result, ("/ui/applications", done), |notice| {
        applications_page(ui, session, notice)
    })
    .await
}

async fn detach_integration(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(app): Path<uuid::Uuid>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Ok(integration) = form_field(&form, "integration").parse::<uuid::Uuid>() else {
        return back_to("/ui/applications", "Choose an integration to detach.");
    };
    let detached = ui
        .api(&session)
        .send(
            Method::DELETE,
            &format!("/applications/{app}/integrations/{integration}"),
        )
        .await;
    application_done(&ui, &session, &headers, detached, "Integration detached.").await
}

/// Rotates a confidential application's client secret and shows the new one once.
async fn rotate_secret(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(app): Path<uuid::Uuid>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let rotated = ui
        .api(&session)
        .post::<serde_json::Value>(&format!("/applications/{app}/rotate-secret"), json!({}))
        .await;
    match rotated.map(|v| revealed_secret(&v)) {
        Ok(Some(secret)) => {
            let notice = Notice::done(
                "Client secret rotated: the old one no longer works. Copy the new one now: it is shown only once.",
            );
            show_secret(&ui, &session, &headers, notice, secret).await
        }
        Ok(None) => back_to("/ui/applications", "The secret was rotated."),
        Err(e) => application_done(&ui, &session, &headers, Err(e), "").await,
    }
}

/// Saves an application's OAuth client settings.
async fn update_oauth(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(app): Path<uuid::Uuid>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let list = |name: &str| -> Vec<String> {
        form_field(&form, name)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let body = json!({
        "redirectUris": list("redirect_uris"),
        "scopes": list("scopes"),
        "allowedResources": list("allowed_resources"),
        "pkceRequired": form.contains_key("pkce_required"),
    });
    let saved = ui
        .api(&session)
        .call_json::<serde_json::Value>(Method::PATCH, &format!("/applications/{app}/oauth"), body)
        .await
        .map(drop);
    application_done(&ui, &session, &headers, saved, "OAuth settings saved.").await
}

/// The status and notice of a refusal the page shows above itself, or the error that ends
/// the page (a token the API no longer takes, an unreadable answer).
fn shown_refusal(e: CallError) -> Result<(StatusCode, Option<Notice>), CallError> {
    match e {
        CallError::Refused { status, message } if status != StatusCode::UNAUTHORIZED => {
            Ok((status, Notice::error(message)))
        }
        e => Err(e),
    }
}

fn respond<P: askama::Template>(
    ui: &Ui,
    headers: &HeaderMap,
    status: StatusCode,
    page: Result<P, CallError>,
) -> Response {
    match page {
        Ok(p) => render(status, &p),
        Err(e) => failure(ui, headers, e),
    }
}

async fn attach_integration(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(app): Path<uuid::Uuid>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Ok(integration) = form_field(&form, "integration").parse::<uuid::Uuid>() else {
        return back_to("/ui/applications", "Choose an integration to attach.");
    };
    let attached = ui
        .api(&session)
        .send(
            Method::POST,
            &format!("/applications/{app}/integrations/{integration}"),
        )
        .await;
    application_done(&ui, &session, &headers, attached, "Integration attached.").await
}

async fn revoke_sessions(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(app): Path<uuid::Uuid>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let revoked = ui
        .api(&session)
        .send(Method::DELETE, &format!("/applications/{app}/sessions"))
        .await;
    let done = ("/ui/sessions", "Agent sessions revoked.");
    action_done(&ui, &headers, revoked, done, |notice| {
        sessions_page(&ui, &session, notice)
    })
    .await
}

async fn integrations_page(
    ui: &Ui,
    session: &Session,
    notice: Option<Notice>,
) -> Result<IntegrationsPage, CallError> {
    let api = ui.api(session);
    let list: Items<IntegrationRow> = api.get("/integrations?limit=100").await?;
    let connected = if session.privileged {
        connected_users(&api).await?
    } else {
        HashMap::new()
    };
    Ok(IntegrationsPage {
        chrome: Chrome::of(session, "/ui/integrations"),
        notice,
        integrations: list.items,
        connected,
    })
}

/// The users connected to each integration (by integration id), from the access graph.
async fn connected_users(api: &Api) -> Result<HashMap<String, Vec<String>>, CallError> {
    let graph: graph::GraphAnswer = api.get("/applications/access-graph").await?;
    let names: HashMap<&str, &str> = graph
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.name.as_str()))
        .collect();
    let mut connected: HashMap<String, Vec<String>> = HashMap::new();
    for e in graph.edges.iter().filter(|e| e.kind == "connected") {
        if let Some(user) = names.get(e.from.as_str()) {
            connected
                .entry(e.to.clone())
                .or_default()
                .push((*user).to_owned());
        }
    }
    Ok(connected)
}

async fn integrations(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let session = match require_session(&ui, &Method::GET, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let page = integrations_page(&ui, &session, done_notice(&q)).await;
    respond(&ui, &headers, StatusCode::OK, page)
}

async fn create_integration(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let name = form_field(&form, "name");
    let mut body = json!({
        "name": name,
        "url": form_field(&form, "url"),
        "authMode": form_field(&form, "auth_mode"),
    });
    let token = form_field(&form, "server_token");
    if !token.is_empty() {
        body["serverToken"] = json!(token);
    }
    let created = ui
        .api(&session)
        .post::<serde_json::Value>("/integrations", body)
        .await;
    match created {
        Ok(_) => back_to(
            "/ui/integrations",
            &format!("Integration “{name}” created."),
        ),
        Err(e) => match shown_refusal(e) {
            Ok((status, notice)) => respond(
                &ui,
                &headers,
                status,
                integrations_page(&ui, &session, notice).await,
            ),
            Err(e) => failure(&ui, &headers, e),
        },
    }
}

async fn validate_integration(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(id): Path<uuid::Uuid>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let result = ui
        .api(&session)
        .post::<serde_json::Value>(&format!("/integrations/{id}/validate"), json!({}))
        .await;
    match result {
        Ok(v) => {
            let status = v
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or("unknown");
            let message = v.get("message").and_then(|s| s.as_str()).unwrap_or("");
            back_to(
                "/ui/integrations",
                format!("Validation: {status}. {message}").trim_end(),
            )
        }
        Err(e) => match shown_refusal(e) {
            Ok((status, notice)) => respond(
                &ui,
                &headers,
                status,
                integrations_page(&ui, &session, notice).await,
            ),
            Err(e) => failure(&ui, &headers, e),
        },
    }
}

async fn traces(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let session = match require_session(&ui, &Method::GET, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match ui
        .api(&session)
        .get::<Items<EventRow>>("/events?limit=50")
        .await
    {
        Ok(list) => {
            let after = list.items.first().map(|e| e.id.clone()).unwrap_or_default();
            render(
                StatusCode::OK,
                &TracesPage {
                    chrome: Chrome::of(&session, "/ui/traces"),
                    notice: None,
                    events: list.items,
                    after,
                },
            )
        }
        Err(e) => failure(&ui, &headers, e),
    }
}

/// `GET /ui/events/stream?after=…`: the management API's live tail for this session, relayed
/// as it streams (`after` becomes its `Last-Event-ID`, since `EventSource` cannot send one
/// on its first request).
async fn event_stream(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // An `EventSource` cannot follow a sign-in, so a stream without a session is refused
    // (as a `POST` would be) instead of redirected.
    let session = match require_session(&ui, &Method::POST, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let resume = headers
        .get("last-event-id")
        .cloned()
        .or_else(|| q.get("after").and_then(|a| HeaderValue::from_str(a).ok()))
        .filter(|v| !v.is_empty());
    ui.api(&session)
        .raw(Method::GET, "/events/stream", None, resume)
        .await
}

async fn sessions_page(
    ui: &Ui,
    session: &Session,
    notice: Option<Notice>,
) -> Result<SessionsPage, CallError> {
    let api = ui.api(session);
    let apps: Items<AppRow> = api.get("/applications?limit=100").await?;
    let mut rows = Vec::with_capacity(apps.items.len());
    for app in apps.items {
        let list: Items<SessionRow> = api
            .get(&format!("/applications/{}/sessions?limit=100", app.id))
            .await?;
        rows.push(AppSessions {
            app,
            sessions: list.items,
        });
    }
    Ok(SessionsPage {
        chrome: Chrome::of(session, "/ui/sessions"),
        notice,
        apps: rows,
    })
}

async fn sessions(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let session = match require_session(&ui, &Method::GET, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let page = sessions_page(&ui, &session, done_notice(&q)).await;
    respond(&ui, &headers, StatusCode::OK, page)
}

async fn connections(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let session = match require_session(&ui, &Method::GET, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let list = ui
        .api(&session)
        .get::<Items<IntegrationRow>>("/integrations?limit=100")
        .await;
    let page = list.map(|list| ConnectionsPage {
        chrome: Chrome::of(&session, "/ui/connections"),
        notice: None,
        integrations: list
            .items
            .into_iter()
            .filter(|i| i.user_connection.is_some())
            .collect(),
    });
    respond(&ui, &headers, StatusCode::OK, page)
}

async fn service_accounts_page(
    ui: &Ui,
    session: &Session,
    notice: Option<Notice>,
    revealed: Option<Revealed>,
) -> Result<ServiceAccountsPage, CallError> {
    let list: Items<ServiceAccountRow> = ui.api(session).get("/service-accounts?limit=100").await?;
    Ok(ServiceAccountsPage {
        chrome: Chrome::of(session, "/ui/service-accounts"),
        notice,
        accounts: list.items,
        revealed,
    })
}

async fn service_accounts(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let session = match require_session(&ui, &Method::GET, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !session.privileged {
        return forbidden_page(&session);
    }
    let page = service_accounts_page(&ui, &session, None, None).await;
    respond(&ui, &headers, StatusCode::OK, page)
}

/// The access graph with its policy overlay, drawn (owners and admins).
async fn access_graph(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let session = match require_session(&ui, &Method::GET, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !session.privileged {
        return render(
            StatusCode::FORBIDDEN,
            &MessagePage {
                message: Some("The access graph is for owners and admins.".to_owned()),
            },
        );
    }
    let api = ui.api(&session);
    let page = async {
        let graph: graph::GraphAnswer = api
            .get("/applications/access-graph?includePolicy=true")
            .await?;
        let names = policy_names(&api).await?;
        Ok(graph::AccessGraphPage::new(
            Chrome::of(&session, "/ui/access-graph"),
            None,
            graph,
            &names,
        ))
    }
    .await;
    respond(&ui, &headers, StatusCode::OK, page)
}

/// Every policy's name by id (for pages that cite policies by id).
async fn policy_names(api: &Api) -> Result<HashMap<String, String>, CallError> {
    let mut names = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/policies?limit=100&cursor={}", urlencode(c)),
            None => "/policies?limit=100".to_owned(),
        };
        let page: Paged<PolicyRow> = api.get(&path).await?;
        names.extend(page.items.into_iter().map(|p| (p.id, p.name)));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(names),
        }
    }
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)])
        .expect("a string encodes")
        .trim_start_matches("v=")
        .to_owned()
}

fn forbidden_page(session: &Session) -> Response {
    render(
        StatusCode::FORBIDDEN,
        &ServiceAccountsPage {
            chrome: Chrome::of(session, "/ui/service-accounts"),
            notice: Notice::error("Service accounts are managed by owners and admins."),
            accounts: vec![],
            revealed: None,
        },
    )
}

/// Creates a service account and shows its secret on this one answer (never again: the
/// store keeps only its hash, and the page is `no-store`).
async fn create_service_account(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = match require_form(&ui, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let name = form_field(&form, "name");
    let created = ui
        .api(&session)
        .post::<serde_json::Value>("/service-accounts", json!({"name": name}))
        .await;
    let revealed = match created {
        Ok(v) => {
            let field = |k: &str| {
                v.pointer(&format!("/credentials/{k}"))
                    .and_then(|s| s.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            Revealed {
                client_id: field("clientId"),
                client_secret: field("clientSecret"),
            }
        }
        Err(e) => {
            return match shown_refusal(e) {
                Ok((status, notice)) => respond(
                    &ui,
                    &headers,
                    status,
                    service_accounts_page(&ui, &session, notice, None).await,
                ),
                Err(e) => failure(&ui, &headers, e),
            };
        }
    };
    let notice = Notice::done(format!(
        "Service account “{name}” created. Copy its secret now: it is shown only once."
    ));
    match service_accounts_page(&ui, &session, notice, Some(revealed)).await {
        Ok(page) => render(StatusCode::CREATED, &page),
        Err(e) => failure(&ui, &headers, e),
    }
}

async fn logout(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match require_form(&ui, &headers, &form) {
        Ok(_) => signin::logout(&ui, &headers).await,
        Err(r) => *r,
    }
}
