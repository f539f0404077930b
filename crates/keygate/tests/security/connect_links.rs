//! Connect links (`/oauth/connect?session=…`) are not bearer capabilities: a link opens only for
//! the user it was minted for, after they sign in; anyone else is sent to sign in or refused;
//! completing a connection uses the link up; and it expires after `auth.connect_link_ttl_secs`.

use std::sync::Arc;
use std::time::Duration;

use keygate_core::{IntegrationId, Timestamp, UserId};
use keygate_test_support::browser::{field, location};
use keygate_test_support::fake_oauth::FakeOAuth;
use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use reqwest::cookie::{CookieStore, Jar};
use serde_json::{Value, json};

both_backends!(
    a_stranger_is_sent_to_sign_in_and_cannot_bind,
    another_signed_in_user_is_refused,
    the_right_user_connects_once,
    an_expired_link_is_refused,
    links_live_as_long_as_configured,
    an_oauth_connection_uses_the_link_up,
);

/// A cookie-keeping browser that does not follow redirects, with its cookie jar.
fn browser() -> (reqwest::Client, Arc<Jar>) {
    let jar = Arc::new(Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (client, jar)
}

/// A browser-held cookie's value.
fn cookie(jar: &Jar, url: &str, name: &str) -> String {
    let header = jar.cookies(&url.parse().unwrap()).expect("cookies");
    let prefix = format!("{name}=");
    header
        .to_str()
        .unwrap()
        .split("; ")
        .find_map(|c| c.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_owned()
}

/// A world with one `user_token` integration.
async fn world(backend: Backend, ttl: Option<u64>) -> (McpWorld, IntegrationId, FakeUpstream) {
    let w = McpWorld::start(backend, AppClient::Public, |c| {
        c.auth.connect_link_ttl_secs = ttl;
    })
    .await;
    let up = FakeUpstream::start().await;
    let (id, _) = w
        .integration(json!({"name": "Personal", "url": up.url, "authMode": "user_token"}))
        .await;
    (w, id, up)
}

/// A fresh connect link for `user`, as `POST /mcp/connect-session` hands it to their agent.
async fn link_for(w: &McpWorld, user: UserId) -> Value {
    let mcp = format!("{}/mcp", w.gw.url);
    let token = w.gw.user_token(user, w.app, &mcp).await;
    let resp =
        w.gw.http
            .post(format!("{mcp}/connect-session"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn connected(w: &McpWorld, integration: IntegrationId, user: UserId) -> bool {
    w.gw.store
        .get_connection(w.gw.org, integration, user)
        .await
        .is_ok_and(|c| c.connected)
}

/// Posts the connect page's token form.
async fn submit_token(
    w: &McpWorld,
    browser: &reqwest::Client,
    csrf: &str,
    session: &str,
    integration: IntegrationId,
    token: &str,
) -> reqwest::Response {
    browser
        .post(format!("{}/oauth/connect", w.gw.url))
        .form(&[
            ("csrf", csrf),
            ("session", session),
            ("integration", &integration.to_string()),
            ("token", token),
            ("connect", "1"),
        ])
        .send()
        .await
        .unwrap()
}

fn session_of(link: &str) -> &str {
    link.split_once("session=").unwrap().1
}

/// The red team's attack: a client with no cookies, never signed in, opens Bob's link and
/// submits its own token (with a CSRF cookie and field of its own choosing).
async fn a_stranger_is_sent_to_sign_in_and_cannot_bind(backend: Backend) {
    let (w, integration, _up) = world(backend, None).await;
    let link = link_for(&w, w.bob).await["connectUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let (stranger, _) = browser();
    let resp = stranger.get(&link).send().await.unwrap();
    assert_eq!(resp.status(), 303, "{}", resp.text().await.unwrap());
    assert!(
        location(&resp).starts_with("/oauth2/login?"),
        "{}",
        location(&resp)
    );

    let csrf = "c".repeat(43);
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = forged
        .post(format!("{}/oauth/connect", w.gw.url))
        .header("cookie", format!("kg_csrf={csrf}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("session", session_of(&link)),
            ("integration", &integration.to_string()),
            ("token", "stranger-token"),
            ("connect", "1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert!(location(&resp).starts_with("/oauth2/login?"));
    assert!(!connected(&w, integration, w.bob).await);
}

/// Alice, signed in, opens Bob's link: a page saying it is someone else's, and her form post
/// binds nothing.
async fn another_signed_in_user_is_refused(backend: Backend) {
    let (w, integration, _up) = world(backend, None).await;
    let link = link_for(&w, w.bob).await["connectUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let (alice, jar) = browser();
    let resp = w.open_connect_link(&alice, &link, w.alice).await;
    assert_eq!(resp.status(), 403);
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("another account") && !html.contains("name=\"token\""),
        "{html}"
    );
    let csrf = cookie(&jar, &w.gw.url, "kg_csrf");
    let resp = submit_token(
        &w,
        &alice,
        &csrf,
        session_of(&link),
        integration,
        "alice-token",
    )
    .await;
    assert_eq!(resp.status(), 403);
    assert!(!connected(&w, integration, w.bob).await);
    assert!(!connected(&w, integration, w.alice).await);
}

/// Bob signs in through the link, stores his token, and the link is used up: neither the page
/// nor the form works a second time.
async fn the_right_user_connects_once(backend: Backend) {
    let (w, integration, _up) = world(backend, None).await;
    let link = link_for(&w, w.bob).await["connectUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let (bob, _) = browser();
    let resp = w.open_connect_link(&bob, &link, w.bob).await;
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    // Viewing the page does not use the link up.
    let again = bob.get(&link).send().await.unwrap();
    assert_eq!(again.status(), 200);
    let (csrf, session) = (field(&html, "csrf"), field(&html, "session"));
    let resp = submit_token(&w, &bob, &csrf, &session, integration, "bob-token").await;
    assert_eq!(resp.status(), 200);
    let done = resp.text().await.unwrap();
    assert!(
        done.contains("connected") && !done.contains("bob-token"),
        "{done}"
    );
    assert!(connected(&w, integration, w.bob).await);

    let resp = bob.get(&link).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("already used"));
    let resp = submit_token(&w, &bob, &csrf, &session, integration, "replaced").await;
    assert_eq!(resp.status(), 400);
    let stored =
        w.gw.store
            .get_connection(w.gw.org, integration, w.bob)
            .await
            .unwrap();
    assert!(stored.connected);
    assert_eq!(
        w.gw.store
            .connection_credential(w.gw.org, integration, w.bob)
            .await
            .unwrap()
            .expose(),
        "bob-token"
    );
}

/// A link past its expiry opens nothing, even for its own signed-in user.
async fn an_expired_link_is_refused(backend: Backend) {
    let (w, integration, _up) = world(backend, None).await;
    let link = link_for(&w, w.bob).await["connectUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let (bob, _) = browser();
    let html = w
        .open_connect_link(&bob, &link, w.bob)
        .await
        .text()
        .await
        .unwrap();
    let (csrf, session) = (field(&html, "csrf"), field(&html, "session"));
    w.gw.raw_execute("UPDATE connect_sessions SET expires_at = 1")
        .await;
    let resp = bob.get(&link).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("expired"));
    let resp = submit_token(&w, &bob, &csrf, &session, integration, "late").await;
    assert_eq!(resp.status(), 400);
    assert!(!connected(&w, integration, w.bob).await);
}

/// `auth.connect_link_ttl_secs` sets how long a new link lives.
async fn links_live_as_long_as_configured(backend: Backend) {
    let (w, _, _up) = world(backend, Some(45)).await;
    let created = link_for(&w, w.bob).await;
    let expires = Timestamp::parse_iso(created["expiresAt"].as_str().unwrap())
        .unwrap()
        .seconds();
    let now = Timestamp::now().seconds();
    assert!((40..=47).contains(&(expires - now)), "{created}");
}

/// The OAuth button: a stranger cannot start the provider's flow for Bob; Bob can, and the
/// provider's callback uses the link up.
async fn an_oauth_connection_uses_the_link_up(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let provider = FakeOAuth::start(Duration::from_secs(600)).await;
    provider.register_client(
        "octo-client",
        Some("octo-secret-0123456789"),
        &format!("{}/oauth/connect/callback", w.gw.url),
    );
    let upstream = FakeUpstream::protected("octo", &provider).await;
    let (integration, _) = w
        .integration(json!({
            "name": "Octo", "url": upstream.url, "authMode": "oauth",
            "oauth": {
                "clientId": "octo-client", "clientSecret": "octo-secret-0123456789",
                "authorizationUrl": provider.url("/authorize"), "tokenUrl": provider.url("/token"),
            }
        }))
        .await;
    let link = link_for(&w, w.bob).await["connectUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let oauth_form = |csrf: &str, session: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("session", session.to_owned()),
            ("integration", integration.to_string()),
            ("oauth", "1".to_owned()),
        ]
    };

    let csrf = "c".repeat(43);
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = forged
        .post(format!("{}/oauth/connect", w.gw.url))
        .header("cookie", format!("kg_csrf={csrf}"))
        .form(&oauth_form(&csrf, session_of(&link)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert!(
        location(&resp).starts_with("/oauth2/login?"),
        "the stranger was sent to {}",
        location(&resp)
    );

    let (bob, _) = browser();
    let html = w
        .open_connect_link(&bob, &link, w.bob)
        .await
        .text()
        .await
        .unwrap();
    let resp = bob
        .post(format!("{}/oauth/connect", w.gw.url))
        .form(&oauth_form(&field(&html, "csrf"), &field(&html, "session")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let to_provider = location(&resp);
    assert!(to_provider.starts_with(&provider.url("/authorize")));
    let resp = bob.get(&to_provider).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let resp = bob.get(location(&resp)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("is connected"));
    assert!(connected(&w, integration, w.bob).await);
    assert_eq!(bob.get(&link).send().await.unwrap().status(), 400);
}
