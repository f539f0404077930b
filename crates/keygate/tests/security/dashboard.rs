//! The dashboard (`/ui`) against a browser that is not the one it signed in: forged forms
//! without the session's CSRF token, a replayed or mismatched sign-in callback, and what its
//! pages let a browser load (the Content-Security-Policy). tests/e2e/dashboard.sh drives the
//! same pages in a real Chromium.

use keygate_core::model::Role;
use keygate_test_support::browser::{browser, field, location};
use keygate_test_support::{Backend, TestGateway, both_backends};
use reqwest::StatusCode;

both_backends!(
    a_dashboard_form_without_its_csrf_token_is_refused,
    a_dashboard_callback_is_used_once,
    a_dashboard_callback_with_another_state_is_refused,
    dashboard_pages_allow_no_inline_script_and_no_other_origin,
    the_dashboard_session_cookie_is_http_only,
    signing_out_needs_the_csrf_token_and_ends_the_session,
);

const PASSWORD: &str = "correct horse battery";
const EMAIL: &str = "owner@example.com";

async fn gateway(backend: Backend) -> TestGateway {
    let gw = TestGateway::start(backend).await;
    let hash = keygate_auth::secret::hash_password(PASSWORD).unwrap();
    gw.store
        .create_user(gw.org, EMAIL, Role::Owner, Some(&hash))
        .await
        .unwrap();
    gw
}

fn absolute(gw: &TestGateway, loc: &str) -> String {
    if loc.starts_with('/') {
        format!("{}{loc}", gw.url)
    } else {
        loc.to_owned()
    }
}

/// `/ui/login` → authorize → sign-in form → consent; answers the callback URL the gateway
/// sends the browser to (not yet followed).
async fn callback_url(gw: &TestGateway, b: &reqwest::Client) -> String {
    signin_callback(gw, b).await.0
}

/// The callback URL and the sign-in cookie (`name=value`) the browser holds for it.
async fn signin_callback(gw: &TestGateway, b: &reqwest::Client) -> (String, String) {
    let resp = b.get(format!("{}/ui/login", gw.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let signin_cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let authorize = absolute(gw, &location(&resp));
    assert!(
        authorize.contains("code_challenge_method=S256"),
        "{authorize}"
    );
    let resp = b.get(&authorize).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "{}",
        resp.text().await.unwrap()
    );
    let html = b
        .get(absolute(gw, &location(&resp)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let resp = b
        .post(format!("{}/oauth2/login", gw.url))
        .form(&[
            ("csrf", field(&html, "csrf").as_str()),
            ("request", &field(&html, "request")),
            ("email", EMAIL),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "{}",
        resp.text().await.unwrap()
    );
    let resp = b.get(absolute(gw, &location(&resp))).send().await.unwrap();
    let next = if resp.status() == StatusCode::SEE_OTHER {
        location(&resp)
    } else {
        let html = resp.text().await.unwrap();
        let resp = b
            .post(format!("{}/oauth2/consent", gw.url))
            .form(&[
                ("csrf", field(&html, "csrf").as_str()),
                ("request", &field(&html, "request")),
                ("approve", "1"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        location(&resp)
    };
    assert!(
        next.starts_with(&format!("{}/ui/callback?", gw.url)),
        "{next}"
    );
    (next, signin_cookie)
}

/// A browser signed in to the dashboard, and the CSRF token of its forms.
async fn signed_in(gw: &TestGateway) -> (reqwest::Client, String) {
    let b = browser();
    let callback = callback_url(gw, &b).await;
    let resp = b.get(&callback).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "{}",
        resp.text().await.unwrap()
    );
    let html = b
        .get(format!("{}/ui/applications", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (b, field(&html, "csrf"))
}

async fn create_app(gw: &TestGateway, b: &reqwest::Client, form: &[(&str, &str)]) -> StatusCode {
    b.post(format!("{}/ui/applications", gw.url))
        .form(form)
        .send()
        .await
        .unwrap()
        .status()
}

async fn a_dashboard_form_without_its_csrf_token_is_refused(backend: Backend) {
    let gw = gateway(backend).await;
    let (b, csrf) = signed_in(&gw).await;
    assert_eq!(
        create_app(&gw, &b, &[("name", "forged")]).await,
        StatusCode::FORBIDDEN
    );
    let wrong = format!("{}x", &csrf[..csrf.len() - 1]);
    let forged = [("name", "forged"), ("csrf", wrong.as_str())];
    assert_eq!(create_app(&gw, &b, &forged).await, StatusCode::FORBIDDEN);
    let list = gw
        .store
        .list_applications(
            gw.org,
            keygate_store::ApplicationFilter::All,
            keygate_store::PageRequest {
                limit: 100,
                after: None,
            },
        )
        .await
        .unwrap();
    assert!(
        list.items.is_empty(),
        "a forged form created an application"
    );
    let genuine = [("name", "genuine"), ("csrf", csrf.as_str())];
    assert_eq!(create_app(&gw, &b, &genuine).await, StatusCode::SEE_OTHER);
}

fn sets_a_session(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .any(|c| c.to_str().unwrap().starts_with("kg_ui="))
}

/// Someone holding both the callback URL and the sign-in cookie after the browser used them
/// gets no session: the code is spent.
async fn a_dashboard_callback_is_used_once(backend: Backend) {
    let gw = gateway(backend).await;
    let b = browser();
    let (callback, signin_cookie) = signin_callback(&gw, &b).await;
    let first = b.get(&callback).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert!(sets_a_session(&first));
    let replay = browser()
        .get(&callback)
        .header("cookie", &signin_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert!(
        !sets_a_session(&replay),
        "a replayed callback opened a session"
    );
}

async fn a_dashboard_callback_with_another_state_is_refused(backend: Backend) {
    let gw = gateway(backend).await;
    let b = browser();
    let callback = callback_url(&gw, &b).await;
    let mut url = url::Url::parse(&callback).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" { "another".into() } else { v };
            (k.into_owned(), v.into_owned())
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let resp = b.get(url.as_str()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let page = b.get(format!("{}/ui/", gw.url)).send().await.unwrap();
    assert_eq!(
        page.status(),
        StatusCode::SEE_OTHER,
        "signed in by a mismatched callback"
    );
}

async fn dashboard_pages_allow_no_inline_script_and_no_other_origin(backend: Backend) {
    let gw = gateway(backend).await;
    let (b, _) = signed_in(&gw).await;
    for page in [
        "/ui/",
        "/ui/applications",
        "/ui/integrations",
        "/ui/traces",
        "/ui/sessions",
    ] {
        let resp = b.get(format!("{}{page}", gw.url)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{page}");
        let csp = resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.starts_with("default-src 'self'"), "{page}: {csp}");
        assert!(!csp.contains("unsafe"), "{page}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{page}: {csp}");
        let html = resp.text().await.unwrap();
        assert!(!html.contains("<script>"), "{page} has an inline script");
        assert!(!html.contains("style="), "{page} has an inline style");
        for foreign in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
            assert!(
                !html.contains(foreign),
                "{page} loads from another origin:\n{html}"
            );
        }
    }
}

async fn the_dashboard_session_cookie_is_http_only(backend: Backend) {
    let gw = gateway(backend).await;
    let b = browser();
    let callback = callback_url(&gw, &b).await;
    let resp = b.get(&callback).send().await.unwrap();
    let cookies: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("kg_ui="))
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax"),
        "{session}"
    );
    assert!(
        !session.contains("eyJ"),
        "the access token is in the cookie: {session}"
    );
}

async fn signing_out_needs_the_csrf_token_and_ends_the_session(backend: Backend) {
    let gw = gateway(backend).await;
    let (b, csrf) = signed_in(&gw).await;
    let logout = format!("{}/ui/logout", gw.url);
    let forged = b.post(&logout).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let page = b.get(format!("{}/ui/", gw.url)).send().await.unwrap();
    assert_eq!(
        page.status(),
        StatusCode::OK,
        "a forged sign-out ended the session"
    );
    let resp = b
        .post(&logout)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/ui/signed-out");
    let page = b.get(format!("{}/ui/", gw.url)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&page), "/ui/login");
}
