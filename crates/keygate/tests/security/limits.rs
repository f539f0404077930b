//! Endpoints an attacker could hammer are limited, and each limit shows: the attempt past it is
//! refused at once with 429 and `Retry-After` (a refused sign-in or client authentication is
//! refused even with the right secret, so no password or secret was checked). Limits are keyed
//! on the authenticated principal, or on the client address before authentication; requests
//! come from 127.0.0.1 and, for a second address, 127.0.0.2.

use std::net::{IpAddr, Ipv4Addr};

use keygate_core::config::Config;
use keygate_core::model::Role;
use keygate_test_support::browser::field;
use keygate_test_support::world::AppClient;
use keygate_test_support::{Backend, TestGateway, both_backends};
use reqwest::Method;
use serde_json::json;

both_backends!(
    registration_is_limited_per_address,
    registration_has_a_global_cap,
    wrong_passwords_are_throttled_per_account,
    wrong_passwords_are_throttled_per_address,
    wrong_client_secrets_are_throttled_per_client,
    wrong_client_secrets_are_throttled_per_address,
    fresh_tokens_share_their_principals_limit,
    garbage_bearers_count_against_the_address,
);

const PASSWORD: &str = "correct horse battery staple";
const SECOND: [u8; 4] = [127, 0, 0, 2];

/// A client whose requests come from `ip`, keeping cookies and not following redirects.
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn gateway(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestGateway {
    TestGateway::start_with(backend, tweak).await
}

fn assert_throttled(resp: &reqwest::Response) {
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
}

async fn register(gw: &TestGateway, from: [u8; 4]) -> reqwest::Response {
    client_from(from)
        .post(format!("{}/oauth2/register", gw.url))
        .json(&json!({"redirect_uris": ["http://127.0.0.1/cb"], "client_name": "flood"}))
        .send()
        .await
        .unwrap()
}

async fn registration_is_limited_per_address(backend: Backend) {
    let gw = gateway(backend, |c| {
        c.auth.registrations_per_ip_per_minute = Some(5)
    })
    .await;
    for _ in 0..5 {
        assert_eq!(register(&gw, [127, 0, 0, 1]).await.status(), 201);
    }
    assert_throttled(&register(&gw, [127, 0, 0, 1]).await);
    assert_eq!(register(&gw, SECOND).await.status(), 201);
}

async fn registration_has_a_global_cap(backend: Backend) {
    let gw = gateway(backend, |c| c.auth.registrations_per_minute = Some(5)).await;
    for i in 1..=5 {
        assert_eq!(register(&gw, [127, 0, 0, i]).await.status(), 201);
    }
    assert_throttled(&register(&gw, [127, 0, 0, 9]).await);
}

/// The sign-in page of a fresh authorization request, opened by `browser`: `(csrf, request)`.
async fn login_page(gw: &TestGateway, browser: &reqwest::Client) -> (String, String) {
    let admin = gw.admin_token().await;
    let app = gw
        .create_application(&admin, "Sign-in target", AppClient::Public)
        .await;
    let id = app["application"]["id"].as_str().unwrap();
    let mut url = url::Url::parse(&format!("{}/oauth2/authorize", gw.url)).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", &format!("app_{id}"))
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", "http://127.0.0.1/cb")
        .append_pair("code_challenge", &"a".repeat(43))
        .append_pair("code_challenge_method", "S256");
    let resp = browser.get(url.as_str()).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let login = resp.headers()["location"].to_str().unwrap().to_owned();
    let html = browser
        .get(format!("{}{login}", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (field(&html, "csrf"), field(&html, "request"))
}

async fn sign_in(
    gw: &TestGateway,
    browser: &reqwest::Client,
    page: &(String, String),
    email: &str,
    password: &str,
) -> reqwest::Response {
    browser
        .post(format!("{}/oauth2/login", gw.url))
        .form(&[
            ("csrf", page.0.as_str()),
            ("request", page.1.as_str()),
            ("email", email),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

async fn user(gw: &TestGateway, email: &str) {
    let hash = keygate_auth::secret::hash_password(PASSWORD).unwrap();
    gw.store
        .create_user(gw.org, email, Role::Member, Some(&hash))
        .await
        .unwrap();
}

/// The red team's 200 wrong passwords for one account: after the allowance, even the right
/// password is refused until the delay has passed; other accounts are not held up.
async fn wrong_passwords_are_throttled_per_account(backend: Backend) {
    let gw = gateway(backend, |c| c.auth.login_failures_per_account = Some(3)).await;
    user(&gw, "victim@example.com").await;
    user(&gw, "other@example.com").await;
    let b = client_from([127, 0, 0, 1]);
    let page = login_page(&gw, &b).await;
    for _ in 0..3 {
        let resp = sign_in(&gw, &b, &page, "victim@example.com", "guess").await;
        assert_eq!(resp.status(), 401);
    }
    assert_throttled(&sign_in(&gw, &b, &page, "VICTIM@example.com", PASSWORD).await);
    assert_eq!(
        sign_in(&gw, &b, &page, "other@example.com", PASSWORD)
            .await
            .status(),
        303
    );
}

/// Wrong passwords for many accounts from one address: that address waits, others do not.
async fn wrong_passwords_are_throttled_per_address(backend: Backend) {
    let gw = gateway(backend, |c| c.auth.login_failures_per_ip = Some(4)).await;
    user(&gw, "someone@example.com").await;
    let b = client_from([127, 0, 0, 1]);
    let page = login_page(&gw, &b).await;
    for i in 0..4 {
        let resp = sign_in(&gw, &b, &page, &format!("guess{i}@example.com"), "guess").await;
        assert_eq!(resp.status(), 401);
    }
    assert_throttled(&sign_in(&gw, &b, &page, "someone@example.com", PASSWORD).await);
    let elsewhere = client_from(SECOND);
    let page = login_page(&gw, &elsewhere).await;
    let resp = sign_in(&gw, &elsewhere, &page, "someone@example.com", PASSWORD).await;
    assert_eq!(resp.status(), 303);
}

async fn client_credentials(
    gw: &TestGateway,
    from: [u8; 4],
    id: &str,
    secret: &str,
) -> reqwest::Response {
    client_from(from)
        .post(format!("{}/oauth2/token", gw.url))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
}

/// The red team's wrong client secrets: after the allowance the client's next attempt is
/// refused, right secret or not; other clients go on.
async fn wrong_client_secrets_are_throttled_per_client(backend: Backend) {
    let gw = gateway(backend, |c| {
        c.auth.client_auth_failures_per_client = Some(3)
    })
    .await;
    let (id, secret) = gw.service_account_in(gw.org, "target").await;
    let (other, other_secret) = gw.service_account_in(gw.org, "other").await;
    for _ in 0..3 {
        let resp = client_credentials(&gw, [127, 0, 0, 1], &id, "ks_wrong").await;
        assert_eq!(resp.status(), 401);
    }
    assert_throttled(&client_credentials(&gw, SECOND, &id, &secret).await);
    let resp = client_credentials(&gw, [127, 0, 0, 1], &other, &other_secret).await;
    assert_eq!(resp.status(), 200);
}

async fn wrong_client_secrets_are_throttled_per_address(backend: Backend) {
    let gw = gateway(backend, |c| c.auth.client_auth_failures_per_ip = Some(4)).await;
    let (id, secret) = gw.service_account_in(gw.org, "target").await;
    for i in 0..4 {
        let resp = client_credentials(&gw, [127, 0, 0, 1], &format!("app_{i}"), "x").await;
        assert_eq!(resp.status(), 401);
    }
    assert_throttled(&client_credentials(&gw, [127, 0, 0, 1], &id, &secret).await);
    assert_eq!(
        client_credentials(&gw, SECOND, &id, &secret).await.status(),
        200
    );
}

/// Minting a fresh token for each request does not buy a fresh allowance: the limit is the
/// principal's.
async fn fresh_tokens_share_their_principals_limit(backend: Backend) {
    let gw = gateway(backend, |c| c.api.rate_limit_per_minute = Some(5)).await;
    let (id, secret) = gw.service_account_in(gw.org, "busy").await;
    let mut last = 0;
    for _ in 0..6 {
        let (status, body) = gw.client_credentials(&id, &secret).await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap();
        let (status, headers, _) = gw.api(Method::GET, "/applications", token, None).await;
        last = status;
        if status == 429 {
            assert!(headers.contains_key("retry-after"));
            break;
        }
        assert_eq!(status, 200);
    }
    assert_eq!(last, 429, "the sixth request of one principal is refused");
    // Another principal is not held up.
    let other = gw.admin_token().await;
    let (status, _, _) = gw.api(Method::GET, "/applications", &other, None).await;
    assert_eq!(status, 200);
}

/// Unique garbage bearers are not principals: they count against the address they come from,
/// and a real principal calling from that address is not held up.
async fn garbage_bearers_count_against_the_address(backend: Backend) {
    let gw = gateway(backend, |c| c.api.rate_limit_per_minute = Some(5)).await;
    let admin = gw.admin_token().await;
    let url = format!("{}/api/v1/applications", gw.url);
    let garbage = |i: usize| {
        client_from([127, 0, 0, 1])
            .get(&url)
            .bearer_auth(format!("garbage-{i}"))
            .send()
    };
    for i in 0..5 {
        assert_eq!(garbage(i).await.unwrap().status(), 401);
    }
    assert_throttled(&garbage(5).await.unwrap());
    let no_token = client_from([127, 0, 0, 1])
        .get(format!("{}/api/v1/applications", gw.url))
        .send()
        .await
        .unwrap();
    assert_throttled(&no_token);
    let (status, _, _) = gw.api(Method::GET, "/applications", &admin, None).await;
    assert_eq!(status, 200);
    let elsewhere = client_from(SECOND)
        .get(format!("{}/api/v1/applications", gw.url))
        .bearer_auth("garbage-elsewhere")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 401);
}
