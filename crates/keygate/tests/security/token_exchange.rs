//! RFC 8693 token exchange at `/oauth2/token`. The red team exchanged a user's token, through a
//! *public* application client with no secret, for the organization's server token and for
//! users' upstream tokens; a member wired another application's `server_token` integration into
//! her own application and exchanged for it. Now only an application's authenticated
//! confidential client exchanges, the subject is a token that same application obtained for its
//! user, the integration is attached to that application, and only the user's own credential
//! comes back — never a server token.

use keygate_core::{ApplicationId, Secret};
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    public_client_cannot_exchange,
    confidential_client_must_present_its_secret,
    only_a_token_issued_to_this_application_is_a_subject,
    member_cannot_wire_an_integration_into_an_application_to_exchange_it,
    server_token_is_never_exchanged,
    exchange_releases_only_the_callers_own_credential,
);

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The subject type that once let a confidential client name any user.
const USER_ID: &str = "urn:keygate:params:oauth:token-type:user-id";
const SERVER_TOKEN: &str = "org-wide-server-token-0123456789";

/// `POST /oauth2/token` for a token exchange: with the secret as HTTP Basic, or (none) with
/// only `client_id` in the form, as a public client sends it.
async fn exchange(
    w: &McpWorld,
    client: (&str, Option<&str>),
    subject: &str,
    subject_type: &str,
    resource: &str,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", GRANT),
        ("subject_token", subject),
        ("subject_token_type", subject_type),
        ("resource", resource),
    ];
    let mut req = w.gw.http.post(format!("{}/oauth2/token", w.gw.url));
    match client.1 {
        Some(secret) => req = req.basic_auth(client.0, Some(secret)),
        None => form.push(("client_id", client.0)),
    }
    let resp = req.form(&form).send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// A `user_token` integration named `name`, attached to `app`, holding Alice's and Bob's own
/// keys (`alice-key`, `bob-key`): its id.
async fn personal_keys(w: &McpWorld, app: ApplicationId, name: &str) -> String {
    let (id, _) =
        w.gw.attach_integration(
            &w.admin,
            app,
            json!({"name": name, "url": "https://keys.example.com/", "category": "internal_mcp_credentials", "authMode": "user_token"}),
        )
        .await;
    for (user, key) in [(w.alice, "alice-key"), (w.bob, "bob-key")] {
        w.gw.store
            .put_user_token(w.gw.org, id, user, &Secret::new(key), None)
            .await
            .unwrap();
    }
    id.to_string()
}

/// A `server_token` integration attached to `app`: its id.
async fn org_server(w: &McpWorld, app: ApplicationId) -> String {
    let (id, _) =
        w.gw.attach_integration(
            &w.admin,
            app,
            json!({"name": "Org server", "url": "https://org.example.com/", "authMode": "server_token", "serverToken": SERVER_TOKEN}),
        )
        .await;
    id.to_string()
}

/// A second application with a confidential client: `(id, client_id, secret)`.
async fn other_confidential_app(w: &McpWorld) -> (ApplicationId, String, String) {
    let app =
        w.gw.create_application(&w.admin, "Other", AppClient::Confidential)
            .await;
    let id: ApplicationId = app["application"]["id"].as_str().unwrap().parse().unwrap();
    let secret = app["oauth"]["clientSecret"].as_str().unwrap().to_owned();
    (id, id.client_id(), secret)
}

fn assert_refused(status: u16, body: &Value, want: (u16, &str)) {
    assert_eq!(
        (status, body["error"].as_str()),
        (want.0, Some(want.1)),
        "{body}"
    );
    let text = body.to_string();
    for secret in ["alice-key", "bob-key", SERVER_TOKEN] {
        assert!(!text.contains(secret), "{text}");
    }
}

async fn public_client_cannot_exchange(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let keys = personal_keys(&w, w.app, "Keys").await;
    let server = org_server(&w, w.app).await;
    let alice = w.token(w.alice).await;
    let client = w.app.client_id();
    for resource in [&keys, &server] {
        let (status, body) = exchange(&w, (&client, None), &alice, ACCESS, resource).await;
        assert_refused(status, &body, (401, "invalid_client"));
        // A public client has no secret to offer either.
        let (status, body) = exchange(&w, (&client, Some("guess")), &alice, ACCESS, resource).await;
        assert_refused(status, &body, (401, "invalid_client"));
    }
}

async fn confidential_client_must_present_its_secret(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Confidential, |_| {}).await;
    let keys = personal_keys(&w, w.app, "Keys").await;
    let alice = w.token(w.alice).await;
    let client = w.app.client_id();
    let (_, _, other_secret) = other_confidential_app(&w).await;
    for secret in [None, Some("wrong"), Some(other_secret.as_str())] {
        let (status, body) = exchange(&w, (&client, secret), &alice, ACCESS, &keys).await;
        assert_refused(status, &body, (401, "invalid_client"));
    }
    let secret = w.app_secret.as_deref();
    let (status, body) = exchange(&w, (&client, secret), &alice, ACCESS, &keys).await;
    assert_eq!(
        (status, &body["access_token"]),
        (200, &json!("alice-key")),
        "{body}"
    );
}

async fn only_a_token_issued_to_this_application_is_a_subject(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Confidential, |_| {}).await;
    let keys = personal_keys(&w, w.app, "Keys").await;
    let (other, _, _) = other_confidential_app(&w).await;
    let client = (w.app.client_id(), w.app_secret.clone());
    let client = (client.0.as_str(), client.1.as_deref());
    // Alice signed in through the other application, not this one.
    let foreign =
        w.gw.user_token(w.alice, other, &format!("{}/apps/{other}/mcp", w.gw.url))
            .await;
    let (status, body) = exchange(&w, client, &foreign, ACCESS, &keys).await;
    assert_refused(status, &body, (400, "invalid_grant"));
    // Nor may the application simply name a user it holds no token of.
    let (status, body) = exchange(&w, client, &w.alice.to_string(), USER_ID, &keys).await;
    assert_refused(status, &body, (400, "invalid_request"));
}

async fn member_cannot_wire_an_integration_into_an_application_to_exchange_it(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Confidential, |_| {}).await;
    let (other, _, _) = other_confidential_app(&w).await;
    let server = org_server(&w, other).await;
    let keys = personal_keys(&w, other, "Keys").await;
    let mallory = w.gw.management_token(w.alice).await;
    // She may not create an application of her own…
    let body = json!({"name": "Mine", "oauth": {"type": "public", "redirectUris": ["http://127.0.0.1/cb"]}});
    let (status, _, answer) =
        w.gw.api(Method::POST, "/applications", &mallory, Some(body))
            .await;
    assert_eq!(
        (status, &answer["error"]),
        (403, &json!("forbidden")),
        "{answer}"
    );
    // …nor attach another application's integrations to one she can sign in to.
    for integration in [&server, &keys] {
        let path = format!("/applications/{}/integrations/{integration}", w.app);
        let (status, _, answer) = w.gw.api(Method::POST, &path, &mallory, None).await;
        assert_eq!(
            (status, &answer["error"]),
            (403, &json!("forbidden")),
            "{answer}"
        );
    }
    // So the exchange through this application finds them unattached.
    let client = (w.app.client_id(), w.app_secret.clone());
    let alice = w.token(w.alice).await;
    for integration in [&server, &keys] {
        let (status, body) = exchange(
            &w,
            (&client.0, client.1.as_deref()),
            &alice,
            ACCESS,
            integration,
        )
        .await;
        assert_refused(status, &body, (400, "invalid_target"));
        assert_eq!(body["failure_reason"], "not_attached_to_application");
    }
}

async fn server_token_is_never_exchanged(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Confidential, |_| {}).await;
    let server = org_server(&w, w.app).await;
    let alice = w.token(w.alice).await;
    let client = w.app.client_id();
    let secret = w.app_secret.as_deref();
    for resource in [server.as_str(), "https://org.example.com/", "org-server"] {
        let (status, body) = exchange(&w, (&client, secret), &alice, ACCESS, resource).await;
        assert_refused(status, &body, (400, "invalid_target"));
        assert_eq!(body["failure_reason"], "server_token_not_exchangeable");
    }
}

async fn exchange_releases_only_the_callers_own_credential(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Confidential, |_| {}).await;
    let keys = personal_keys(&w, w.app, "Keys").await;
    let client = w.app.client_id();
    let client = (client.as_str(), w.app_secret.as_deref());
    let alice = w.token(w.alice).await;
    let bob = w.token(w.bob).await;
    let (status, body) = exchange(&w, client, &alice, ACCESS, &keys).await;
    assert_eq!(
        (status, &body["access_token"]),
        (200, &json!("alice-key")),
        "{body}"
    );
    let (status, body) = exchange(&w, client, &bob, ACCESS, &keys).await;
    assert_eq!(
        (status, &body["access_token"]),
        (200, &json!("bob-key")),
        "{body}"
    );
    // Alice's token never yields Bob's key, however Bob is named.
    let (status, body) = exchange(&w, client, &w.bob.to_string(), USER_ID, &keys).await;
    assert_refused(status, &body, (400, "invalid_request"));
    // Without her own connection she is sent to connect, not handed someone else's.
    w.gw.store
        .delete_connection(w.gw.org, keys.parse().unwrap(), w.alice)
        .await
        .unwrap();
    let (status, body) = exchange(&w, client, &alice, ACCESS, &keys).await;
    assert_refused(status, &body, (400, "integration_required"));
    assert_eq!(body["failure_reason"], "not_connected");
}
