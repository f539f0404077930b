//! Roles on the management API. The red team's member created her own application and attached
//! another application's `server_token` integration to it. Owners, admins and service accounts
//! manage the organization; a member sees the applications and integrations available to her
//! and manages only her own connections and agent sessions: a forbidden action is `403
//! forbidden`, something she may not see is `404 not_found`. README.md ("Roles") has the matrix
//! that the last test walks route by route.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_core::model::{ClientType, OAuthClient, Role};
use keygate_core::{ApplicationId, UserId};
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    member_cannot_create_applications,
    member_cannot_change_attachments,
    member_sees_only_her_own_agent_sessions,
    member_revokes_only_her_own_agent_sessions,
    every_management_route_follows_the_role_matrix,
);

async fn user(w: &McpWorld, email: &str, role: Role) -> UserId {
    w.gw.store
        .create_user(w.gw.org, email, role, None)
        .await
        .unwrap()
        .id
}

/// The agent session a token was issued in.
fn sid(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["sid"].as_str().unwrap().to_owned()
}

/// `user`'s token through `app`, as an agent obtains it: its agent session.
async fn agent_session(w: &McpWorld, user: UserId, app: ApplicationId) -> String {
    let resource = format!("{}/apps/{app}/mcp", w.gw.url);
    sid(&w.gw.user_token(user, app, &resource).await)
}

async fn member_cannot_create_applications(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let body = json!({"name": "Mine", "oauth": {"type": "public", "redirectUris": ["http://127.0.0.1/cb"]}});
    let alice = w.gw.management_token(w.alice).await;
    let (status, _, answer) =
        w.gw.api(Method::POST, "/applications", &alice, Some(body.clone()))
            .await;
    assert_eq!(
        (status, &answer["error"]),
        (403, &json!("forbidden")),
        "{answer}"
    );
    for (email, role) in [
        ("admin@example.com", Role::Admin),
        ("owner@example.com", Role::Owner),
    ] {
        let token = w.gw.management_token(user(&w, email, role).await).await;
        let (status, _, answer) =
            w.gw.api(Method::POST, "/applications", &token, Some(body.clone()))
                .await;
        assert_eq!(status, 201, "{answer}");
    }
}

async fn member_cannot_change_attachments(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let (attached, _) = w
        .integration(
            json!({"name": "Attached", "url": "https://a.example.com/", "authMode": "user_token"}),
        )
        .await;
    let (_, _, spare) =
        w.gw.api(Method::POST, "/integrations", &w.admin, Some(json!({"name": "Spare", "url": "https://s.example.com/", "authMode": "server_token", "serverToken": "org-secret"})))
            .await;
    let spare = spare["integration"]["id"].as_str().unwrap().to_owned();
    // An application Alice owns (created before members lost that right) and an admin's.
    let own =
        w.gw.store
            .create_application(
                w.gw.org,
                keygate_store::NewApplication {
                    name: "Alice's".into(),
                    owner_user_id: Some(w.alice),
                    oauth: OAuthClient {
                        client_type: ClientType::Public,
                        redirect_uris: vec!["http://127.0.0.1/cb".into()],
                        pkce_required: true,
                        scopes: vec![],
                        allowed_resources: vec![],
                    },
                    client_secret_hash: None,
                },
            )
            .await
            .unwrap()
            .id;
    w.gw.store
        .attach_integrations(w.gw.org, own, &[attached], false)
        .await
        .unwrap();
    let alice = w.gw.management_token(w.alice).await;
    for app in [own, w.app] {
        let changes = [
            (
                Method::POST,
                format!("/applications/{app}/integrations/{spare}"),
                None,
            ),
            (
                Method::DELETE,
                format!("/applications/{app}/integrations/{attached}"),
                None,
            ),
            (
                Method::PUT,
                format!("/applications/{app}/integrations"),
                Some(json!({"integrationIds": [spare]})),
            ),
        ];
        for (method, path, body) in changes {
            let (status, _, answer) = w.gw.api(method.clone(), &path, &alice, body).await;
            assert_eq!(
                (status, &answer["error"]),
                (403, &json!("forbidden")),
                "{method} {path}: {answer}"
            );
        }
        let path = format!("/applications/{app}/integrations");
        let (_, _, ids) = w.gw.api(Method::GET, &path, &w.admin, None).await;
        assert_eq!(ids["integrationIds"], json!([attached.to_string()]));
    }
}

async fn member_sees_only_her_own_agent_sessions(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let mine = agent_session(&w, w.alice, w.app).await;
    let bobs = agent_session(&w, w.bob, w.app).await;
    let alice = w.gw.management_token(w.alice).await;
    let path = format!("/applications/{}/sessions", w.app);
    let (status, _, list) = w.gw.api(Method::GET, &path, &alice, None).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine.as_str()]);
    let (status, _, answer) =
        w.gw.api(Method::GET, &format!("{path}/{bobs}"), &alice, None)
            .await;
    assert_eq!(
        (status, &answer["error"]),
        (404, &json!("not_found")),
        "{answer}"
    );
    // An admin sees both.
    let (_, _, list) = w.gw.api(Method::GET, &path, &w.admin, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
}

async fn member_revokes_only_her_own_agent_sessions(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let mine = agent_session(&w, w.alice, w.app).await;
    let bobs = agent_session(&w, w.bob, w.app).await;
    let alice = w.gw.management_token(w.alice).await;
    let path = format!("/applications/{}/sessions", w.app);
    let (status, _, answer) = w.gw.api(Method::DELETE, &path, &alice, None).await;
    assert_eq!(
        (status, &answer["disconnectedCount"]),
        (200, &json!(1)),
        "{answer}"
    );
    for (session, want) in [(mine, "disconnected"), (bobs, "active")] {
        let (_, _, s) =
            w.gw.api(Method::GET, &format!("{path}/{session}"), &w.admin, None)
                .await;
        assert_eq!(s["session"]["derivedStatus"], want, "{s}");
    }
}

/// One management route and the status each kind of caller gets.
struct Route {
    method: Method,
    path: String,
    body: Option<Value>,
    member: u16,
    /// Owners and admins.
    admin: u16,
    /// A service account without an acting user.
    service_account: u16,
}

fn route(method: Method, path: String, body: Option<Value>, codes: [u16; 3]) -> Route {
    let [member, admin, service_account] = codes;
    Route {
        method,
        path,
        body,
        member,
        admin,
        service_account,
    }
}

/// Every management route over a fresh application (with an attached `user_token` integration
/// and Alice's and Bob's agent sessions), a spare `oauth` integration and a service account;
/// destructive routes last.
async fn routes(w: &McpWorld, label: &str) -> Vec<Route> {
    use Method as M;
    let app =
        w.gw.create_application(&w.admin, &format!("App {label}"), AppClient::Confidential)
            .await;
    let app: ApplicationId = app["application"]["id"].as_str().unwrap().parse().unwrap();
    // Validation probes a closed loopback port: a quick, recorded failure.
    let (keys, _) = w
        .gw
        .attach_integration(&w.admin, app, json!({"name": format!("Keys {label}"), "url": "http://127.0.0.1:9/mcp", "authMode": "user_token"}))
        .await;
    let oauth = json!({"clientId": "kg", "authorizationUrl": "https://idp.example.com/authorize", "tokenUrl": "https://idp.example.com/token"});
    let (_, _, spare) =
        w.gw.api(M::POST, "/integrations", &w.admin, Some(json!({"name": format!("Spare {label}"), "url": "https://spare.example.com/", "authMode": "oauth", "oauth": oauth})))
            .await;
    let spare = spare["integration"]["id"].as_str().unwrap().to_owned();
    let (_, _, sa) =
        w.gw.api(
            M::POST,
            "/service-accounts",
            &w.admin,
            Some(json!({"name": format!("robot {label}")})),
        )
        .await;
    let sa = sa["serviceAccount"]["id"].as_str().unwrap().to_owned();
    agent_session(w, w.alice, app).await;
    let bobs = agent_session(w, w.bob, app).await;
    let new_app = json!({"name": format!("New {label}"), "oauth": {"type": "public", "redirectUris": ["http://127.0.0.1/cb"]}});
    let new_integration = json!({"name": format!("New {label}"), "url": "https://new.example.com/", "authMode": "none"});
    let a = format!("/applications/{app}");
    let i = format!("/integrations/{keys}");
    let s = format!("/service-accounts/{sa}");
    let bob = w.bob;
    vec![
        route(M::GET, "/applications".into(), None, [200, 200, 200]),
        route(
            M::GET,
            "/applications?all=true".into(),
            None,
            [403, 200, 200],
        ),
        route(
            M::POST,
            "/applications".into(),
            Some(new_app),
            [403, 201, 201],
        ),
        route(
            M::GET,
            "/applications/access-graph".into(),
            None,
            [403, 200, 200],
        ),
        route(M::GET, a.clone(), None, [200, 200, 200]),
        route(
            M::PATCH,
            a.clone(),
            Some(json!({"name": "Renamed"})),
            [403, 200, 200],
        ),
        route(M::GET, format!("{a}/oauth"), None, [200, 200, 200]),
        route(
            M::PATCH,
            format!("{a}/oauth"),
            Some(json!({"scopes": ["read"]})),
            [403, 200, 200],
        ),
        route(M::POST, format!("{a}/rotate-secret"), None, [403, 200, 200]),
        route(M::GET, format!("{a}/integrations"), None, [200, 200, 200]),
        route(
            M::PUT,
            format!("{a}/integrations"),
            Some(json!({"integrationIds": [keys, spare]})),
            [403, 200, 200],
        ),
        route(
            M::DELETE,
            format!("{a}/integrations/{spare}"),
            None,
            [403, 204, 204],
        ),
        route(
            M::POST,
            format!("{a}/integrations/{spare}"),
            None,
            [403, 204, 204],
        ),
        route(M::GET, format!("{a}/sessions"), None, [200, 200, 200]),
        route(
            M::GET,
            format!("{a}/sessions/{bobs}"),
            None,
            [404, 200, 200],
        ),
        route(M::GET, "/integrations".into(), None, [200, 200, 200]),
        route(
            M::POST,
            "/integrations".into(),
            Some(new_integration),
            [403, 201, 201],
        ),
        route(M::GET, i.clone(), None, [200, 200, 200]),
        route(
            M::PATCH,
            i.clone(),
            Some(json!({"name": format!("Keys {label}!")})),
            [403, 200, 200],
        ),
        route(M::POST, format!("{i}/validate"), None, [403, 200, 200]),
        route(
            M::GET,
            format!("/integrations/{spare}/oauth"),
            None,
            [403, 200, 200],
        ),
        route(
            M::PUT,
            format!("/integrations/{spare}/oauth"),
            Some(oauth_body()),
            [403, 200, 200],
        ),
        route(M::DELETE, format!("{i}/oauth"), None, [403, 204, 204]),
        route(
            M::POST,
            format!("{i}/connection"),
            Some(json!({"token": "personal"})),
            [200, 200, 403],
        ),
        route(M::GET, format!("{i}/connection"), None, [200, 200, 403]),
        route(M::DELETE, format!("{i}/connection"), None, [204, 204, 403]),
        route(M::GET, "/service-accounts".into(), None, [403, 200, 200]),
        route(
            M::POST,
            "/service-accounts".into(),
            Some(json!({"name": format!("new {label}")})),
            [403, 201, 201],
        ),
        route(M::GET, s.clone(), None, [403, 200, 200]),
        route(M::POST, format!("{s}/rotate-secret"), None, [403, 200, 200]),
        route(M::DELETE, s.clone(), None, [403, 204, 204]),
        route(M::GET, "/traces".into(), None, [200, 200, 200]),
        route(
            M::GET,
            format!("/traces?userId={bob}"),
            None,
            [403, 200, 200],
        ),
        route(M::GET, "/traces/stats".into(), None, [200, 200, 200]),
        route(M::GET, "/events".into(), None, [200, 200, 200]),
        route(M::GET, "/mcp-events".into(), None, [200, 200, 403]),
        route(M::DELETE, format!("{a}/sessions"), None, [200, 200, 200]),
        route(
            M::DELETE,
            format!("/integrations/{spare}"),
            None,
            [403, 204, 204],
        ),
        route(M::DELETE, a, None, [403, 204, 204]),
    ]
}

fn oauth_body() -> Value {
    json!({"clientId": "kg2", "scopes": ["read"], "authorizationUrl": "https://idp.example.com/authorize", "tokenUrl": "https://idp.example.com/token"})
}

async fn every_management_route_follows_the_role_matrix(backend: Backend) {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let admin = user(&w, "admin@example.com", Role::Admin).await;
    let owner = user(&w, "owner@example.com", Role::Owner).await;
    let callers = [
        ("member", w.gw.management_token(w.alice).await),
        ("admin", w.gw.management_token(admin).await),
        ("owner", w.gw.management_token(owner).await),
        ("service account", w.admin.clone()),
    ];
    let mut wrong = Vec::new();
    for (who, token) in &callers {
        for r in routes(&w, who).await {
            let want = match *who {
                "member" => r.member,
                "service account" => r.service_account,
                _ => r.admin,
            };
            let (status, _, body) = w.gw.api(r.method.clone(), &r.path, token, r.body).await;
            let code_ok = match want {
                403 => body["error"] == "forbidden",
                404 => body["error"] == "not_found",
                _ => true,
            };
            if status != want || !code_ok {
                wrong.push(format!(
                    "{who}: {} {} → {status} (want {want}) {body}",
                    r.method, r.path
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
