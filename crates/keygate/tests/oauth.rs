//! The OAuth 2.1 authorization server, driven like a browser and a stock client would, on
//! SQLite and PostgreSQL; plus two gateways sharing one PostgreSQL database.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_core::model::Role;
use keygate_test_support::browser::{browser, field, location};
use keygate_test_support::{Backend, TestGateway, both_backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;

both_backends!(
    code_flow_pkce_refresh_and_reuse_detection,
    authorize_redirects_only_to_registered_uris,
    authorize_refuses_requests_without_s256_or_for_another_resource,
    login_and_consent_forms_require_their_csrf_token,
    wrong_password_is_refused,
    code_with_a_wrong_verifier_is_refused_and_spent,
    code_without_its_verifier_or_redirect_is_refused,
    replayed_code_is_refused_and_revokes_its_grant,
    expired_code_is_refused,
    token_for_another_resource_is_refused,
    user_of_another_organization_cannot_sign_in,
    archived_applications_client_is_refused,
    sessions_revocation_and_counts,
    first_party_client_and_registration,
    revocation_endpoint_and_signing_key_rotation,
);

const REDIRECT: &str = "http://127.0.0.1:7777/callback";
const PASSWORD: &str = "correct horse battery";

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    let verifier = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

/// Organization setup every test needs: an owner with a password, a management token, and a
/// public application.
struct Setup {
    gw: TestGateway,
    token: String,
    app_id: String,
    client_id: String,
    mcp_url: String,
    email: String,
}

async fn setup(backend: Backend) -> Setup {
    let gw = TestGateway::start(backend).await;
    let email = "owner@example.com".to_owned();
    let hash = keygate_auth::secret::hash_password(PASSWORD).unwrap();
    gw.store
        .create_user(gw.org, &email, Role::Owner, Some(&hash))
        .await
        .unwrap();
    let token = gw.admin_token().await;
    let (status, _, app) = gw
        .api(
            Method::POST,
            "/applications",
            &token,
            Some(json!({
                "name": "Agent App", "oauth": {"type": "public", "redirectUris": [REDIRECT]}
            })),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["application"]["id"].as_str().unwrap().to_owned();
    Setup {
        mcp_url: format!("{}/apps/{app_id}/mcp", gw.url),
        client_id: format!("app_{app_id}"),
        app_id,
        token,
        email,
        gw,
    }
}

fn authorize_url(gw: &TestGateway, params: &[(&str, &str)]) -> String {
    let mut url = Url::parse(&format!("{}/oauth2/authorize", gw.url)).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    url.to_string()
}

fn absolute(gw: &TestGateway, loc: &str) -> String {
    if loc.starts_with('/') {
        format!("{}{loc}", gw.url)
    } else {
        loc.to_owned()
    }
}

fn query(url: &str) -> std::collections::HashMap<String, String> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// Follows authorize → login page; returns the login page's HTML and URL.
async fn open_login(gw: &TestGateway, b: &reqwest::Client, authorize: &str) -> (String, String) {
    let resp = b.get(authorize).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "{}",
        resp.text().await.unwrap()
    );
    let login_url = absolute(gw, &location(&resp));
    assert!(login_url.contains("/oauth2/login?request="), "{login_url}");
    let resp = b.get(&login_url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    (resp.text().await.unwrap(), login_url)
}

async fn post_form(b: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
    b.post(url).form(form).send().await.unwrap()
}

/// Signs in (unless this browser already is) and approves; returns where the gateway finally
/// redirects the browser.
async fn sign_in_and_approve(
    gw: &TestGateway,
    b: &reqwest::Client,
    authorize: &str,
    email: &str,
) -> String {
    let resp = b.get(authorize).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "{}",
        resp.text().await.unwrap()
    );
    let resp = b.get(absolute(gw, &location(&resp))).send().await.unwrap();
    let consent_url = if resp.status() == StatusCode::SEE_OTHER {
        absolute(gw, &location(&resp)) // already signed in
    } else {
        let html = resp.text().await.unwrap();
        let resp = post_form(
            b,
            &format!("{}/oauth2/login", gw.url),
            &[
                ("csrf", &field(&html, "csrf")),
                ("request", &field(&html, "request")),
                ("email", email),
                ("password", PASSWORD),
            ],
        )
        .await;
        assert_eq!(
            resp.status(),
            StatusCode::SEE_OTHER,
            "{}",
            resp.text().await.unwrap()
        );
        absolute(gw, &location(&resp))
    };
    let resp = b.get(&consent_url).send().await.unwrap();
    if resp.status() == StatusCode::SEE_OTHER {
        return location(&resp); // consent remembered
    }
    let html = resp.text().await.unwrap();
    assert!(html.contains("name=\"approve\""), "{html}");
    let resp = post_form(
        b,
        &format!("{}/oauth2/consent", gw.url),
        &[
            ("csrf", &field(&html, "csrf")),
            ("request", &field(&html, "request")),
            ("approve", "1"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    location(&resp)
}

async fn token_request(gw: &TestGateway, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = gw
        .http
        .post(format!("{}/oauth2/token", gw.url))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Code + PKCE for the application's MCP URL; returns the token response.
async fn full_flow(s: &Setup, b: &reqwest::Client) -> Value {
    let p = pkce();
    let auth = authorize_url(
        &s.gw,
        &[
            ("response_type", "code"),
            ("client_id", &s.client_id),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("state", "xyz"),
            ("resource", &s.mcp_url),
        ],
    );
    let back = sign_in_and_approve(&s.gw, b, &auth, &s.email).await;
    let q = query(&back);
    assert_eq!(q["state"], "xyz");
    assert_eq!(q["iss"], s.gw.url);
    let (status, body) = token_request(
        &s.gw,
        &[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", REDIRECT),
            ("client_id", &s.client_id),
            ("code_verifier", &p.verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Initializes on an MCP endpoint: 200 means authenticated (an application without
/// integrations is an empty MCP server), 401 refused.
async fn mcp_status(gw: &TestGateway, url: &str, token: Option<&str>) -> (u16, Option<String>) {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let mut req = gw.http.post(url).json(&init);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), challenge)
}

/// Another replica learns of a revocation through PostgreSQL `NOTIFY`; it must refuse the
/// token within a second.
async fn refused_within_a_second(gw: &TestGateway, url: &str, token: &str) {
    let started = std::time::Instant::now();
    loop {
        let status = mcp_status(gw, url, Some(token)).await.0;
        if status == 401 {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "still accepted after 1 s ({status})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn code_flow_pkce_refresh_and_reuse_detection(backend: Backend) {
    let s = setup(backend).await;
    let b = browser();

    // Unauthenticated: 401 with the RFC 9728 challenge, whose metadata names us.
    let (status, challenge) = mcp_status(&s.gw, &s.mcp_url, None).await;
    assert_eq!(status, 401);
    let prm_url = format!(
        "{}/.well-known/oauth-protected-resource/apps/{}/mcp",
        s.gw.url, s.app_id
    );
    assert_eq!(
        challenge.unwrap(),
        format!("Bearer resource_metadata=\"{prm_url}\"")
    );
    let prm: Value =
        s.gw.http
            .get(&prm_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(prm["resource"], s.mcp_url);
    assert_eq!(prm["authorization_servers"], json!([s.gw.url]));
    let meta: Value =
        s.gw.http
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                s.gw.url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        meta["registration_endpoint"],
        format!("{}/oauth2/register", s.gw.url)
    );

    let tokens = full_flow(&s, &b).await;
    let access = tokens["access_token"].as_str().unwrap();
    let c = claims(access);
    assert_eq!(c["aud"], s.mcp_url);
    assert_eq!(c["client_id"], s.client_id);
    assert!(c["sid"].is_string() && c["jti"].is_string() && c["exp"].is_i64());
    assert_eq!(
        mcp_status(&s.gw, &s.mcp_url, Some(access)).await.0,
        200,
        "authenticated"
    );
    // A pass-through URL of the same application accepts the application-wide token (and then
    // finds no such integration).
    assert_eq!(
        mcp_status(&s.gw, &format!("{}/github", s.mcp_url), Some(access))
            .await
            .0,
        404
    );
    // The same token is refused by other resources.
    let (status, _, _) = s.gw.api(Method::GET, "/applications", access, None).await;
    assert_eq!(status, 401, "an MCP token must not open the management API");

    // Refresh rotates; the new access token keeps the audience.
    let r1 = tokens["refresh_token"].as_str().unwrap();
    let (status, refreshed) = token_request(
        &s.gw,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", r1),
            ("client_id", &s.client_id),
        ],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let r2 = refreshed["refresh_token"].as_str().unwrap();
    assert_ne!(r1, r2);
    assert_eq!(
        claims(refreshed["access_token"].as_str().unwrap())["aud"],
        s.mcp_url
    );
    assert_eq!(
        claims(refreshed["access_token"].as_str().unwrap())["sid"],
        c["sid"]
    );

    // Replaying the old refresh token revokes the family: the new one and the access tokens die.
    let (status, body) = token_request(
        &s.gw,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", r1),
            ("client_id", &s.client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let (status, body) = token_request(
        &s.gw,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", r2),
            ("client_id", &s.client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let (status, challenge) = mcp_status(
        &s.gw,
        &s.mcp_url,
        Some(refreshed["access_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 401);
    assert!(challenge.unwrap().contains("error=\"invalid_token\""));

    // Consent is remembered: a second authorization goes straight back with a code.
    let p = pkce();
    let auth = authorize_url(
        &s.gw,
        &[
            ("response_type", "code"),
            ("client_id", &s.client_id),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("resource", &s.mcp_url),
        ],
    );
    let resp = b.get(&auth).send().await.unwrap();
    let resp = b
        .get(absolute(&s.gw, &location(&resp)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "already signed in: straight to consent"
    );
    let resp = b
        .get(absolute(&s.gw, &location(&resp)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "consent remembered");
    assert!(location(&resp).starts_with(REDIRECT) && query(&location(&resp)).contains_key("code"));
    s.gw.stop().await;
}

/// Parameters replacing those of [`authorize_with`]'s request.
type Changes<'a> = [(&'a str, &'a str)];

/// The authorization request of `s`'s client for `p`'s challenge with `state=st`, each of
/// `changes` replacing a parameter (an empty value leaves it out).
fn authorize_with(s: &Setup, p: &Pkce, changes: &Changes) -> String {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", s.client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_challenge", p.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "st"),
    ];
    for (k, v) in changes {
        params.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            params.push((k, v));
        }
    }
    authorize_url(&s.gw, &params)
}

/// A code for `s`'s owner, signed in and approved in `b`, bound to `p`'s challenge.
async fn fresh_code(s: &Setup, b: &reqwest::Client, p: &Pkce) -> String {
    let back = sign_in_and_approve(&s.gw, b, &authorize_with(s, p, &[]), &s.email).await;
    query(&back)["code"].clone()
}

/// The token request exchanging `code` (with `verifier`, unless `None`) at `redirect`.
fn code_exchange<'a>(
    s: &'a Setup,
    code: &'a str,
    verifier: Option<&'a str>,
    redirect: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect),
        ("client_id", s.client_id.as_str()),
    ];
    form.extend(verifier.map(|v| ("code_verifier", v)));
    form
}

/// Asserts that the token endpoint answers `form` with `status` and `error` (`case` says
/// which case it is).
async fn assert_token_error(
    s: &Setup,
    form: &[(&str, &str)],
    status: u16,
    error: &str,
    case: &str,
) {
    let (got, body) = token_request(&s.gw, form).await;
    assert_eq!(
        (got, body["error"].as_str()),
        (status, Some(error)),
        "{case}: {body}"
    );
}

/// Asserts where an authorization request was sent back to: an `error` for the client, with
/// its `state` (`case` says which request it was).
fn assert_redirected_error(resp: &reqwest::Response, error: &str, case: &str) {
    let q = query(&location(resp));
    assert_eq!(
        (
            q.get("error").map(String::as_str),
            q.get("state").map(String::as_str)
        ),
        (Some(error), Some("st")),
        "{case}: {q:?}"
    );
}

/// A redirect URI the client did not register gets an error page, never a redirect; a
/// loopback one may differ from the registered one in its port alone.
async fn authorize_redirects_only_to_registered_uris(backend: Backend) {
    let s = setup(backend).await;
    let (b, p) = (browser(), pkce());
    for refused in [
        "http://127.0.0.1:7777/other",
        "https://evil.example/callback",
    ] {
        let resp = b.get(authorize_with(&s, &p, &[("redirect_uri", refused)]));
        let resp = resp.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{refused}");
        let page = resp.text().await.unwrap();
        assert!(
            page.contains("redirect_uri is not registered"),
            "{refused}: {page}"
        );
    }
    let other_port = authorize_with(
        &s,
        &p,
        &[("redirect_uri", "http://127.0.0.1:9999/callback")],
    );
    let resp = b.get(other_port).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    s.gw.stop().await;
}

/// An authorization request without an S256 PKCE challenge goes back to the client as
/// `invalid_request`, and one for a resource other than this gateway's application's as
/// `invalid_target`.
async fn authorize_refuses_requests_without_s256_or_for_another_resource(backend: Backend) {
    let s = setup(backend).await;
    let (b, p) = (browser(), pkce());
    let other_app = format!("{}/apps/{}/mcp", s.gw.url, uuid::Uuid::new_v4());
    let management_api = format!("{}/api/v1", s.gw.url);
    let cases: [(&str, &Changes, &str); 4] = [
        (
            "no PKCE",
            &[("code_challenge", ""), ("code_challenge_method", "")],
            "invalid_request",
        ),
        (
            "plain PKCE",
            &[("code_challenge_method", "plain")],
            "invalid_request",
        ),
        (
            "another application",
            &[("resource", &other_app)],
            "invalid_target",
        ),
        (
            "the management API",
            &[("resource", &management_api)],
            "invalid_target",
        ),
    ];
    for (case, changes, error) in cases {
        let resp = b.get(authorize_with(&s, &p, changes)).send().await.unwrap();
        assert_redirected_error(&resp, error, case);
    }
    s.gw.stop().await;
}

/// The login form is refused without its CSRF token or with a forged one, and the consent
/// form without its own (`403`).
async fn login_and_consent_forms_require_their_csrf_token(backend: Backend) {
    let s = setup(backend).await;
    let (b, p) = (browser(), pkce());
    let (html, _) = open_login(&s.gw, &b, &authorize_with(&s, &p, &[])).await;
    let request = field(&html, "request");
    let login = format!("{}/oauth2/login", s.gw.url);
    let sign_in = [
        ("request", request.as_str()),
        ("email", &s.email),
        ("password", PASSWORD),
    ];
    let resp = post_form(&b, &login, &sign_in).await;
    assert_eq!(resp.status(), 403, "login without CSRF");
    assert!(resp.text().await.unwrap().contains("CSRF"));
    let forged = [("csrf", "forged-value-forged-value-forged-value")];
    let resp = post_form(&b, &login, &[&forged[..], &sign_in].concat()).await;
    assert_eq!(resp.status(), 403, "login with a forged CSRF token");
    let csrf = field(&html, "csrf");
    let resp = post_form(
        &b,
        &login,
        &[&[("csrf", csrf.as_str())][..], &sign_in].concat(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let page = b
        .get(absolute(&s.gw, &location(&resp)))
        .send()
        .await
        .unwrap();
    assert!(page.text().await.unwrap().contains("name=\"approve\""));
    let consent = format!("{}/oauth2/consent", s.gw.url);
    let resp = post_form(&b, &consent, &[("request", &request), ("approve", "1")]).await;
    assert_eq!(resp.status(), 403, "consent without CSRF");
    s.gw.stop().await;
}

/// A wrong password is refused (`401`) with a message that does not say which part was wrong.
async fn wrong_password_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let (b, p) = (browser(), pkce());
    let (html, _) = open_login(&s.gw, &b, &authorize_with(&s, &p, &[])).await;
    let form = [
        ("csrf", field(&html, "csrf")),
        ("request", field(&html, "request")),
        ("email", s.email.clone()),
        ("password", "wrong password".to_owned()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let resp = post_form(&b, &format!("{}/oauth2/login", s.gw.url), &form).await;
    assert_eq!(resp.status(), 401);
    let page = resp.text().await.unwrap();
    assert!(page.contains("Invalid email or password"), "{page}");
    s.gw.stop().await;
}

/// A code presented with a wrong verifier is refused and spent: a stolen code cannot be
/// retried, even with the right verifier.
async fn code_with_a_wrong_verifier_is_refused_and_spent(backend: Backend) {
    let s = setup(backend).await;
    let (b, p) = (browser(), pkce());
    let code = fresh_code(&s, &b, &p).await;
    let wrong = pkce().verifier;
    let form = code_exchange(&s, &code, Some(&wrong), REDIRECT);
    assert_token_error(&s, &form, 400, "invalid_grant", "wrong verifier").await;
    let form = code_exchange(&s, &code, Some(&p.verifier), REDIRECT);
    assert_token_error(&s, &form, 400, "invalid_grant", "reused code").await;
    s.gw.stop().await;
}

/// A code is refused without its verifier, or at a redirect URI other than its own.
async fn code_without_its_verifier_or_redirect_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let (b, p) = (browser(), pkce());
    let code = fresh_code(&s, &b, &p).await;
    let form = code_exchange(&s, &code, None, REDIRECT);
    assert_token_error(&s, &form, 400, "invalid_grant", "missing verifier").await;
    let code = fresh_code(&s, &b, &p).await;
    let elsewhere = "http://127.0.0.1:7777/elsewhere";
    let form = code_exchange(&s, &code, Some(&p.verifier), elsewhere);
    assert_token_error(&s, &form, 400, "invalid_grant", "redirect mismatch").await;
    s.gw.stop().await;
}

/// A code works once; presented again it is refused and the tokens it gave are revoked.
async fn replayed_code_is_refused_and_revokes_its_grant(backend: Backend) {
    let s = setup(backend).await;
    let (b, p) = (browser(), pkce());
    let code = fresh_code(&s, &b, &p).await;
    let form = code_exchange(&s, &code, Some(&p.verifier), REDIRECT);
    let (status, ok) = token_request(&s.gw, &form).await;
    assert_eq!(status, 200, "{ok}");
    assert_token_error(&s, &form, 400, "invalid_grant", "replay").await;
    let access = ok["access_token"].as_str();
    assert_eq!(
        mcp_status(&s.gw, &s.mcp_url, access).await.0,
        401,
        "replay revokes the grant"
    );
    s.gw.stop().await;
}

/// An expired code is refused, saying so.
async fn expired_code_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let (b, p) = (browser(), pkce());
    let code = fresh_code(&s, &b, &p).await;
    s.gw.raw_execute("UPDATE authorization_codes SET expires_at = 0 WHERE used_at IS NULL")
        .await;
    let form = code_exchange(&s, &code, Some(&p.verifier), REDIRECT);
    let (status, body) = token_request(&s.gw, &form).await;
    assert_eq!(
        (
            status,
            body["error"].as_str(),
            body["error_description"].as_str()
        ),
        (400, Some("invalid_grant"), Some("the code has expired"))
    );
    s.gw.stop().await;
}

/// The token endpoint refuses a resource other than the one the code was issued for
/// (`invalid_target`).
async fn token_for_another_resource_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let (b, p) = (browser(), pkce());
    let code = fresh_code(&s, &b, &p).await;
    let other_resource = format!("{}/apps/{}/mcp", s.gw.url, uuid::Uuid::new_v4());
    let mut form = code_exchange(&s, &code, Some(&p.verifier), REDIRECT);
    form.push(("resource", other_resource.as_str()));
    assert_token_error(&s, &form, 400, "invalid_target", "another resource").await;
    s.gw.stop().await;
}

/// A user of another organization cannot sign in to this application (`401`).
async fn user_of_another_organization_cannot_sign_in(backend: Backend) {
    let s = setup(backend).await;
    let gw = &s.gw;
    let other_org = gw.store.create_organization("other", "Other").await;
    let hash = keygate_auth::secret::hash_password(PASSWORD).unwrap();
    let stranger = "stranger@example.com";
    let user = gw
        .store
        .create_user(other_org.unwrap().id, stranger, Role::Owner, Some(&hash));
    user.await.unwrap();
    let b = browser();
    let (html, _) = open_login(gw, &b, &authorize_with(&s, &pkce(), &[])).await;
    let form = [
        ("csrf", field(&html, "csrf")),
        ("request", field(&html, "request")),
        ("email", stranger.to_owned()),
        ("password", PASSWORD.to_owned()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let resp = post_form(&b, &format!("{}/oauth2/login", gw.url), &form).await;
    assert_eq!(
        resp.status(),
        401,
        "a user of another organization is refused"
    );
    s.gw.stop().await;
}

/// The client of an archived application is refused at the authorization endpoint (an error
/// page) and at the token endpoint (`invalid_client`), even with a code issued before.
async fn archived_applications_client_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let (b, p) = (browser(), pkce());
    let code = fresh_code(&s, &b, &p).await;
    let archive = format!("/applications/{}", s.app_id);
    let (status, _, _) = s.gw.api(Method::DELETE, &archive, &s.token, None).await;
    assert_eq!(status, 204);
    let resp = b.get(authorize_with(&s, &p, &[])).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let page = resp.text().await.unwrap();
    assert!(page.contains("Unknown or archived client"), "{page}");
    let form = code_exchange(&s, &code, Some(&p.verifier), REDIRECT);
    assert_token_error(&s, &form, 401, "invalid_client", "archived application").await;
    s.gw.stop().await;
}

async fn sessions_revocation_and_counts(backend: Backend) {
    let s = setup(backend).await;
    let tokens = full_flow(&s, &browser()).await;
    let access = tokens["access_token"].as_str().unwrap();
    let sid = claims(access)["sid"].as_str().unwrap().to_owned();
    let (_, _, sessions) =
        s.gw.api(
            Method::GET,
            &format!("/applications/{}/sessions", s.app_id),
            &s.token,
            None,
        )
        .await;
    assert_eq!(sessions["items"][0]["id"], sid.as_str());
    assert_eq!(sessions["items"][0]["derivedStatus"], "active");
    assert_eq!(sessions["items"][0]["agentId"], s.client_id);
    assert!(sessions["items"][0]["userId"].is_string());
    let (_, _, app) =
        s.gw.api(
            Method::GET,
            &format!("/applications/{}", s.app_id),
            &s.token,
            None,
        )
        .await;
    assert_eq!(
        (
            app["application"]["activeSessionCount"].as_i64(),
            app["application"]["totalSessionCount"].as_i64()
        ),
        (Some(1), Some(1))
    );

    // A second replica on the same PostgreSQL database accepts the first one's tokens...
    let replica = if backend == Backend::Postgres {
        Some(s.gw.replica().await)
    } else {
        None
    };
    let replica_mcp = replica
        .as_ref()
        .map(|r| format!("{}/apps/{}/mcp", r.url, s.app_id));
    if let (Some(r), Some(url)) = (&replica, &replica_mcp) {
        assert_eq!(
            mcp_status(r, url, Some(access)).await.0,
            200,
            "the replica accepts the token"
        );
    }

    let (status, _, r) =
        s.gw.api(
            Method::DELETE,
            &format!("/applications/{}/sessions", s.app_id),
            &s.token,
            None,
        )
        .await;
    assert_eq!(
        (status, r),
        (200, json!({"success": true, "disconnectedCount": 1}))
    );
    let started = std::time::Instant::now();
    assert_eq!(mcp_status(&s.gw, &s.mcp_url, Some(access)).await.0, 401);
    // ...and honours the revocation made through the first one at once.
    if let (Some(r), Some(url)) = (&replica, &replica_mcp) {
        refused_within_a_second(r, url, access).await;
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let (status, body) = token_request(
        &s.gw,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &s.client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (_, _, app) =
        s.gw.api(
            Method::GET,
            &format!("/applications/{}", s.app_id),
            &s.token,
            None,
        )
        .await;
    assert_eq!(app["application"]["activeSessionCount"], 0);
    if let (Some(r), Some(url)) = (replica, replica_mcp) {
        // The other direction: a grant revoked through the replica dies on the first gateway.
        let tokens = full_flow(&s, &browser()).await;
        let access = tokens["access_token"].as_str().unwrap();
        assert_eq!(mcp_status(&s.gw, &s.mcp_url, Some(access)).await.0, 200);
        let form = [
            ("token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", s.client_id.as_str()),
        ];
        let resp = r
            .http
            .post(format!("{}/oauth2/revoke", r.url))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(mcp_status(&r, &url, Some(access)).await.0, 401);
        refused_within_a_second(&s.gw, &s.mcp_url, access).await;
        r.stop().await;
    }
    s.gw.stop().await;
}

async fn first_party_client_and_registration(backend: Backend) {
    let s = setup(backend).await;
    let gw = &s.gw;
    let b = browser();
    // The built-in `keygate` client: loopback redirect on any port, management API audience.
    let p = pkce();
    let mgmt = format!("{}/api/v1", gw.url);
    let redirect = "http://127.0.0.1:53111/cb";
    let auth = authorize_url(
        gw,
        &[
            ("response_type", "code"),
            ("client_id", "keygate"),
            ("redirect_uri", redirect),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("resource", &mgmt),
        ],
    );
    let back = sign_in_and_approve(gw, &b, &auth, &s.email).await;
    let (status, t) = token_request(
        gw,
        &[
            ("grant_type", "authorization_code"),
            ("code", &query(&back)["code"]),
            ("redirect_uri", redirect),
            ("client_id", "keygate"),
            ("code_verifier", &p.verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{t}");
    let user_token = t["access_token"].as_str().unwrap();
    assert_eq!(claims(user_token)["aud"], mgmt);
    let (status, _, list) = gw
        .api(Method::GET, "/applications?all=true", user_token, None)
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["id"], s.app_id.as_str());
    // A user's token can hold the user's own connections.
    let (_, _, i) = gw
        .api(
            Method::POST,
            "/integrations",
            &s.token,
            Some(json!({"name": "Lin", "url": "https://l.example/mcp", "authMode": "user_token"})),
        )
        .await;
    let iid = i["integration"]["id"].as_str().unwrap();
    let (status, _, c) = gw
        .api(
            Method::POST,
            &format!("/integrations/{iid}/connection"),
            user_token,
            Some(json!({"token": "personal"})),
        )
        .await;
    assert_eq!((status, &c["connection"]["connected"]), (200, &json!(true)));

    // Dynamic registration; the registered client may not ask for the management API.
    let reg: Value = gw.http.post(format!("{}/oauth2/register", gw.url)).json(&json!({
        "redirect_uris": ["http://localhost:3000/callback"], "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"], "client_name": "stock client"
    })).send().await.unwrap().json().await.unwrap();
    let dyn_id = reg["client_id"].as_str().unwrap();
    assert!(
        dyn_id.starts_with("mcp_") && reg.get("client_secret").is_none(),
        "{reg}"
    );
    let bad: Value = gw
        .http
        .post(format!("{}/oauth2/register", gw.url))
        .json(&json!({"redirect_uris": ["http://evil.example/cb"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bad["error"], "invalid_redirect_uri");
    let p = pkce();
    let auth = authorize_url(
        gw,
        &[
            ("response_type", "code"),
            ("client_id", dyn_id),
            ("redirect_uri", "http://localhost:3000/callback"),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("resource", &mgmt),
        ],
    );
    let resp = b.get(&auth).send().await.unwrap();
    assert_eq!(query(&location(&resp))["error"], "invalid_target");
    let auth = authorize_url(
        gw,
        &[
            ("response_type", "code"),
            ("client_id", dyn_id),
            ("redirect_uri", "http://localhost:3000/callback"),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("resource", &s.mcp_url),
        ],
    );
    let back = sign_in_and_approve(gw, &b, &auth, &s.email).await;
    let (status, t) = token_request(
        gw,
        &[
            ("grant_type", "authorization_code"),
            ("code", &query(&back)["code"]),
            ("redirect_uri", "http://localhost:3000/callback"),
            ("client_id", dyn_id),
            ("code_verifier", &p.verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        claims(t["access_token"].as_str().unwrap())["aud"],
        s.mcp_url
    );
    assert_eq!(
        mcp_status(gw, &s.mcp_url, t["access_token"].as_str())
            .await
            .0,
        200
    );
    s.gw.stop().await;
}

async fn revoke_token(gw: &TestGateway, client_id: &str, token: &str) -> u16 {
    let form = [("token", token), ("client_id", client_id)];
    let resp = gw
        .http
        .post(format!("{}/oauth2/revoke", gw.url))
        .form(&form)
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn revocation_endpoint_and_signing_key_rotation(backend: Backend) {
    let s = setup(backend).await;
    let gw = &s.gw;
    let t1 = full_flow(&s, &browser()).await;
    let t2 = full_flow(&s, &browser()).await;
    // Access token revocation is by jti: that token dies, its session lives on.
    assert_eq!(
        revoke_token(gw, &s.client_id, t1["access_token"].as_str().unwrap()).await,
        200
    );
    assert_eq!(
        mcp_status(gw, &s.mcp_url, t1["access_token"].as_str())
            .await
            .0,
        401
    );
    let refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", t1["refresh_token"].as_str().unwrap()),
        ("client_id", s.client_id.as_str()),
    ];
    assert_eq!(token_request(gw, &refresh).await.0, 200);
    // Refresh token revocation ends the grant, access tokens included.
    assert_eq!(
        revoke_token(gw, &s.client_id, t2["refresh_token"].as_str().unwrap()).await,
        200
    );
    assert_eq!(
        mcp_status(gw, &s.mcp_url, t2["access_token"].as_str())
            .await
            .0,
        401
    );
    assert_eq!(
        revoke_token(gw, &s.client_id, "not-a-token").await,
        200,
        "unknown tokens get 200"
    );

    // Signing-key rotation (as `keygate signing-key rotate` does it, from another process):
    // the old key stays published and its tokens keep working.
    let jwks_url = format!("{}/.well-known/jwks.json", gw.url);
    let before: Value = gw
        .http
        .get(&jwks_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_process = keygate_auth::KeyRing::load(gw.store.clone(), gw.url.clone())
        .await
        .unwrap();
    let new_kid = other_process.rotate().await.unwrap();
    // A token under the new key makes the running gateway reload its key ring.
    let probe = other_process.sign(&keygate_auth::Claims {
        iss: gw.url.clone(),
        sub: "probe".into(),
        aud: format!("{}/api/v1", gw.url),
        client_id: "probe".into(),
        scope: String::new(),
        org: gw.org,
        sid: None,
        iat: 0,
        exp: i64::from(u32::MAX),
        jti: "probe".into(),
    });
    let (status, _, _) = gw.api(Method::GET, "/applications", &probe, None).await;
    assert_eq!(
        status, 401,
        "verified under the new key, then refused: no such principal"
    );
    let (status, _, _) = gw.api(Method::GET, "/applications", &s.token, None).await;
    assert_eq!(
        status, 200,
        "a token signed before the rotation still verifies"
    );
    let after: Value = gw
        .http
        .get(&jwks_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let published = kids(&after);
    assert!(
        published.contains(&new_kid),
        "new key published: {published:?}"
    );
    assert!(
        kids(&before).iter().all(|k| published.contains(k)),
        "old key kept: {published:?}"
    );
    assert_eq!(published.len(), 2);
    s.gw.stop().await;
}

fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A stock client identified by a client ID metadata document URL, served by a real local
/// HTTP server. The SSRF guard refuses the loopback fetch unless the host is allow-listed.
#[tokio::test]
async fn client_id_metadata_documents() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let doc_url = format!(
        "http://127.0.0.1:{}/client.json",
        listener.local_addr().unwrap().port()
    );
    let doc = json!({
        "client_id": doc_url, "client_name": "CIMD client",
        "redirect_uris": ["http://127.0.0.1:4444/cb"], "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code"], "response_types": ["code"],
    });
    let served = doc.clone();
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || async move { axum::Json(served) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Without the allow-list the document is never fetched from a loopback address.
    let s = setup(Backend::Sqlite).await;
    let p = pkce();
    let params = |p: &Pkce, resource: &str| {
        vec![
            ("response_type", "code".to_owned()),
            ("client_id", doc_url.clone()),
            ("redirect_uri", "http://127.0.0.1:4444/cb".to_owned()),
            ("code_challenge", p.challenge.clone()),
            ("code_challenge_method", "S256".to_owned()),
            ("resource", resource.to_owned()),
        ]
    };
    let resp = browser()
        .get(authorize_url(&s.gw, &as_refs(&params(&p, &s.mcp_url))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    s.gw.stop().await;

    // With it (local development), the flow completes and the token names the document URL.
    let gw = TestGateway::start_with(Backend::Sqlite, |c| {
        c.outbound.allowed_private_hosts = vec!["127.0.0.1".into()]
    })
    .await;
    let hash = keygate_auth::secret::hash_password(PASSWORD).unwrap();
    gw.store
        .create_user(gw.org, "u@example.com", Role::Member, Some(&hash))
        .await
        .unwrap();
    let token = gw.admin_token().await;
    let (_, _, app) = gw
        .api(
            Method::POST,
            "/applications",
            &token,
            Some(json!({"name": "A", "oauth": {"type": "public", "redirectUris": [REDIRECT]}})),
        )
        .await;
    let mcp_url = format!(
        "{}/apps/{}/mcp",
        gw.url,
        app["application"]["id"].as_str().unwrap()
    );
    let meta: Value = gw
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["client_id_metadata_document_supported"], true);
    let b = browser();
    let back = sign_in_and_approve(
        &gw,
        &b,
        &authorize_url(&gw, &as_refs(&params(&p, &mcp_url))),
        "u@example.com",
    )
    .await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", &query(&back)["code"]),
        ("redirect_uri", "http://127.0.0.1:4444/cb"),
        ("client_id", &doc_url),
        ("code_verifier", &p.verifier),
    ];
    let (status, t) = token_request(&gw, &form).await;
    assert_eq!(status, 200, "{t}");
    let c = claims(t["access_token"].as_str().unwrap());
    assert_eq!(
        (c["client_id"].as_str(), c["aud"].as_str()),
        (Some(doc_url.as_str()), Some(mcp_url.as_str()))
    );
    // A redirect URI the document does not list is refused.
    let mut bad = params(&p, &mcp_url);
    bad[2].1 = "http://127.0.0.1:4444/other".into();
    let resp = b
        .get(authorize_url(&gw, &as_refs(&bad)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    gw.stop().await;
}
