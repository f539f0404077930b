//! The dashboard's pages as a signed-in browser uses them: the access graph (drawn, with its
//! tables and the policy overlay), the policies page (problems at their line and column,
//! enable, disable, delete, try a decision), the application actions (detach, rotate with a
//! one-time reveal, OAuth settings), who is connected to an integration, what members are
//! offered, the authorization server's pages on the same templates, and each page's time with
//! a full store. Every body runs on SQLite and PostgreSQL.

use std::time::Duration;

use keygate_core::model::Role;
use keygate_test_support::dashboard::{PAGES, person, seed, sign_in, time_pages, unthrottled};
use keygate_test_support::world::AppClient;
use keygate_test_support::{Backend, TestGateway, both_backends};
use reqwest::{Method, StatusCode};
use serde_json::json;

both_backends!(
    the_access_graph_page_draws_and_tabulates_the_graph,
    members_are_not_offered_the_access_graph_or_policy_changes,
    a_policy_with_problems_is_shown_again_with_them_at_their_place,
    policies_are_created_switched_tried_and_deleted,
    application_actions_detach_rotate_and_edit_oauth,
    the_integrations_page_says_who_is_connected,
    every_page_answers_quickly_with_a_full_store,
    the_consent_page_says_who_asks_for_what_and_where_it_returns,
);

const OWNER: &str = "owner@example.com";
const MEMBER: &str = "member@example.com";

struct World {
    gw: TestGateway,
    admin: String,
    app: String,
    integration: String,
}

async fn world(backend: Backend) -> World {
    world_with(backend, |_| {}).await
}

async fn world_with(
    backend: Backend,
    tweak: impl FnOnce(&mut keygate_core::config::Config),
) -> World {
    let gw = TestGateway::start_with(backend, tweak).await;
    person(&gw, OWNER, Role::Owner).await;
    person(&gw, MEMBER, Role::Member).await;
    let admin = gw.admin_token().await;
    let created = gw
        .create_application(&admin, "Desk agent", AppClient::Confidential)
        .await;
    let app = created["application"]["id"].as_str().unwrap().to_owned();
    let (integration, _) = gw
        .attach_integration(
            &admin,
            app.parse().unwrap(),
            json!({"name": "Tickets", "url": "https://tickets.example.com/mcp"}),
        )
        .await;
    World {
        gw,
        admin,
        app,
        integration: integration.to_string(),
    }
}

async fn get(w: &World, b: &reqwest::Client, path: &str) -> (StatusCode, String) {
    let resp = b.get(format!("{}{path}", w.gw.url)).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn post(
    w: &World,
    b: &reqwest::Client,
    path: &str,
    form: &[(&str, &str)],
) -> (StatusCode, String, Option<String>) {
    let resp = b
        .post(format!("{}{path}", w.gw.url))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let to = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    (status, resp.text().await.unwrap(), to)
}

async fn the_access_graph_page_draws_and_tabulates_the_graph(backend: Backend) {
    let w = world(backend).await;
    let (b, _) = sign_in(&w.gw, OWNER).await;
    let (status, html) = get(&w, &b, "/ui/access-graph").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("<svg id=\"access-graph\""), "{html}");
    assert!(html.contains("role=\"img\""), "the drawing is described");
    assert!(
        html.contains(&format!(
            "data-from=\"{}\" data-to=\"{}\"",
            w.app, w.integration
        )),
        "the attachment is drawn: {html}"
    );
    assert!(html.contains("<caption>Applications and their attached integrations</caption>"));
    assert!(html.contains("No enabled"), "no policy: everything allowed");
    assert!(!html.contains("<script>") && !html.contains("style="));

    let (status, _, _) =
        w.gw.api(
            Method::POST,
            "/policies",
            &w.admin,
            Some(json!({"name": "read only", "text":
                "permit (principal, action, resource) when { resource.readOnlyHint };"})),
        )
        .await;
    assert_eq!(status, 201);
    let (_, html) = get(&w, &b, "/ui/access-graph").await;
    assert!(html.contains("edge policy policy-no_tools_known"), "{html}");
    assert!(html.contains("What the policies allow, per user and attached integration"));
    assert!(html.contains("tools not listed yet"));
}

async fn members_are_not_offered_the_access_graph_or_policy_changes(backend: Backend) {
    let w = world(backend).await;
    w.gw.api(
        Method::POST,
        "/policies",
        &w.admin,
        Some(json!({"name": "everyone", "text": "permit (principal, action, resource);"})),
    )
    .await;
    let (b, csrf) = sign_in(&w.gw, MEMBER).await;
    let (status, html) = get(&w, &b, "/ui/access-graph").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!html.contains("<svg"));
    let (status, html) = get(&w, &b, "/ui/policies").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !html.contains("href=\"/ui/access-graph\""),
        "not in the navigation"
    );
    assert!(html.contains("everyone"), "members read policies");
    assert!(!html.contains("action=\"/ui/policies\""), "no create form");
    assert!(!html.contains("/disable\""), "no switch");
    assert!(
        html.contains("action=\"/ui/policies/evaluate\""),
        "members may try decisions"
    );
    let (status, html, _) = post(
        &w,
        &b,
        "/ui/policies",
        &[
            ("csrf", &csrf),
            ("name", "mine"),
            ("text", "forbid (principal, action, resource);"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    let (_, _, listed) = w.gw.api(Method::GET, "/policies", &w.admin, None).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

async fn a_policy_with_problems_is_shown_again_with_them_at_their_place(backend: Backend) {
    let w = world(backend).await;
    let (b, csrf) = sign_in(&w.gw, OWNER).await;
    let text = "permit (principal, action, resource)\nwhen { resource.nmae == \"x\" };";
    let (status, html, _) = post(
        &w,
        &b,
        "/ui/policies",
        &[
            ("csrf", &csrf),
            ("name", "typo"),
            ("text", text),
            ("enabled", "on"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    assert!(
        html.contains("data-line=\"2\""),
        "the problem is on line 2: {html}"
    );
    assert!(html.contains("aria-invalid=\"true\""));
    assert!(html.contains("nmae"), "the text is kept as typed");
    assert!(
        html.contains("class=\"mark\""),
        "the problem is marked under its line"
    );
    let (_, _, listed) = w.gw.api(Method::GET, "/policies", &w.admin, None).await;
    assert!(
        listed["items"].as_array().unwrap().is_empty(),
        "nothing was saved"
    );
}

async fn policies_are_created_switched_tried_and_deleted(backend: Backend) {
    let w = world(backend).await;
    let (b, csrf) = sign_in(&w.gw, OWNER).await;
    let text = "permit (principal, action, resource) when { resource.readOnlyHint };";
    let (status, _, to) = post(
        &w,
        &b,
        "/ui/policies",
        &[
            ("csrf", &csrf),
            ("name", "read only"),
            ("text", text),
            ("enabled", "on"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(to.unwrap().starts_with("/ui/policies?done="));
    let (_, _, listed) = w.gw.api(Method::GET, "/policies", &w.admin, None).await;
    let id = listed["items"][0]["id"].as_str().unwrap().to_owned();

    let tried = |read_only: bool| {
        let mut form = vec![
            ("csrf", csrf.clone()),
            ("email", MEMBER.to_owned()),
            ("role", "member".to_owned()),
            ("action", "call_tool".to_owned()),
            ("tool", "search".to_owned()),
            ("integration", "tickets".to_owned()),
            ("application", w.app.clone()),
            ("arguments", "{}".to_owned()),
        ];
        if read_only {
            form.push(("read_only", "on".to_owned()));
        }
        form
    };
    let resp = b
        .post(format!("{}/ui/policies/evaluate", w.gw.url))
        .form(&tried(true))
        .send()
        .await
        .unwrap();
    let html = resp.text().await.unwrap();
    assert!(html.contains("decision-allow"), "{html}");
    assert!(html.contains("“read only”"), "the permit is named: {html}");
    let html = b
        .post(format!("{}/ui/policies/evaluate", w.gw.url))
        .form(&tried(false))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("decision-deny") && html.contains("no permit matched"),
        "{html}"
    );

    let (status, _, _) = post(
        &w,
        &b,
        &format!("/ui/policies/{id}/disable"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, p) =
        w.gw.api(Method::GET, &format!("/policies/{id}"), &w.admin, None)
            .await;
    assert_eq!(p["policy"]["enabled"], false);

    let (status, html) = get(&w, &b, &format!("/ui/policies/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("resource.readOnlyHint"), "{html}");
    let (status, _, _) = post(
        &w,
        &b,
        &format!("/ui/policies/{id}"),
        &[
            ("csrf", &csrf),
            ("name", "renamed"),
            ("text", text),
            ("enabled", "on"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, p) =
        w.gw.api(Method::GET, &format!("/policies/{id}"), &w.admin, None)
            .await;
    assert_eq!(p["policy"]["name"], "renamed");
    assert_eq!(p["policy"]["enabled"], true);

    let (status, _, _) = post(
        &w,
        &b,
        &format!("/ui/policies/{id}/delete"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) =
        w.gw.api(Method::GET, &format!("/policies/{id}"), &w.admin, None)
            .await;
    assert_eq!(status, 404);
    let (status, _, _) = post(
        &w,
        &b,
        &format!("/ui/policies/{id}/delete"),
        &[("csrf", "forged")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn application_actions_detach_rotate_and_edit_oauth(backend: Backend) {
    let w = world(backend).await;
    let (b, csrf) = sign_in(&w.gw, OWNER).await;
    let (_, html) = get(&w, &b, "/ui/applications").await;
    assert!(
        html.contains(&format!(
            "action=\"/ui/applications/{}/rotate-secret\"",
            w.app
        )),
        "{html}"
    );

    let (status, html, _) = post(
        &w,
        &b,
        &format!("/ui/applications/{}/rotate-secret", w.app),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let marker = format!(
        "id=\"secret-{}\" class=\"mcp-url\" readonly value=\"",
        w.app
    );
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no secret shown: {html}"));
    let secret = html[at + marker.len()..]
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert!(secret.len() > 20, "the new secret is shown: {html}");
    let (_, again) = get(&w, &b, "/ui/applications").await;
    assert!(!again.contains(&secret), "the secret is shown only once");

    let (status, _, _) = post(
        &w,
        &b,
        &format!("/ui/applications/{}/oauth", w.app),
        &[
            ("csrf", &csrf),
            (
                "redirect_uris",
                "https://agent.example.com/cb\nhttp://127.0.0.1/cb",
            ),
            ("scopes", "mcp profile"),
            ("allowed_resources", ""),
            ("pkce_required", "on"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, oauth) =
        w.gw.api(
            Method::GET,
            &format!("/applications/{}/oauth", w.app),
            &w.admin,
            None,
        )
        .await;
    assert_eq!(
        oauth["oauth"]["redirectUris"],
        json!(["https://agent.example.com/cb", "http://127.0.0.1/cb"])
    );
    assert_eq!(oauth["oauth"]["scopes"], json!(["mcp", "profile"]));

    let (status, _, _) = post(
        &w,
        &b,
        &format!("/ui/applications/{}/detach", w.app),
        &[("csrf", &csrf), ("integration", &w.integration)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, attached) =
        w.gw.api(
            Method::GET,
            &format!("/applications/{}/integrations", w.app),
            &w.admin,
            None,
        )
        .await;
    assert_eq!(
        attached["integrationIds"].as_array().map(Vec::len),
        Some(0),
        "{attached}"
    );
}

async fn the_integrations_page_says_who_is_connected(backend: Backend) {
    let w = world(backend).await;
    let (b, _) = sign_in(&w.gw, OWNER).await;
    let (_, html) = get(&w, &b, "/ui/integrations").await;
    assert!(
        html.contains("<th scope=\"col\">Connected users</th>"),
        "{html}"
    );
    assert!(
        html.contains("<td class=\"connected\">nobody</td>"),
        "{html}"
    );
    let (mb, _) = sign_in(&w.gw, MEMBER).await;
    let (_, html) = get(&w, &mb, "/ui/integrations").await;
    assert!(
        !html.contains("Connected users"),
        "members are not shown others' connections"
    );
}

/// Each page's server time with 200 applications and 10,000 trace events. The budget is
/// 50 ms in a release build (`cargo bench -p keygate-benches --bench dashboard`); a debug
/// build is several times slower, so this test allows 500 ms and prints what it measured.
async fn every_page_answers_quickly_with_a_full_store(backend: Backend) {
    let w = world_with(backend, unthrottled).await;
    seed(&w.gw, &w.admin, 200, 10_000).await;
    let (b, _) = sign_in(&w.gw, OWNER).await;
    let times = time_pages(&w.gw, &b, PAGES, 5).await;
    for (page, took) in &times {
        eprintln!("{page}: {took:?}");
    }
    for (page, took) in times {
        assert!(took < Duration::from_millis(500), "{page} took {took:?}");
    }
}

/// Follows `/oauth2/authorize` with `params` through the sign-in form; the consent page.
async fn consent_page(w: &World, params: &[(&str, &str)]) -> String {
    let b = keygate_test_support::browser::browser();
    let mut url = url::Url::parse(&format!("{}/oauth2/authorize", w.gw.url)).unwrap();
    url.query_pairs_mut().extend_pairs(params).extend_pairs([
        ("response_type", "code"),
        (
            "code_challenge",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ),
        ("code_challenge_method", "S256"),
    ]);
    let resp = b.get(url.as_str()).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "{}",
        resp.text().await.unwrap()
    );
    let login = keygate_test_support::browser::location(&resp);
    let html = b
        .get(format!("{}{login}", w.gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("href=\"/ui/assets/app.css\""),
        "the dashboard's style: {html}"
    );
    let field = keygate_test_support::browser::field;
    let resp = b
        .post(format!("{}/oauth2/login", w.gw.url))
        .form(&[
            ("csrf", field(&html, "csrf").as_str()),
            ("request", &field(&html, "request")),
            ("email", OWNER),
            ("password", keygate_test_support::dashboard::PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let consent = keygate_test_support::browser::location(&resp);
    let resp = b
        .get(format!("{}{consent}", w.gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("style-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    resp.text().await.unwrap()
}

async fn the_consent_page_says_who_asks_for_what_and_where_it_returns(backend: Backend) {
    let w = world(backend).await;
    let mcp_url = format!("{}/apps/{}/mcp", w.gw.url, w.app);
    let (status, _, _) =
        w.gw.api(
            Method::PATCH,
            &format!("/applications/{}/oauth", w.app),
            &w.admin,
            Some(json!({"redirectUris": ["https://desk.example.com/oauth/cb"]})),
        )
        .await;
    assert_eq!(status, 200);
    let html = consent_page(
        &w,
        &[
            ("client_id", &format!("app_{}", w.app)),
            ("redirect_uri", "https://desk.example.com/oauth/cb"),
            ("resource", &mcp_url),
            ("scope", "mcp offline_access"),
        ],
    )
    .await;
    assert!(html.contains("<strong>Desk agent</strong>"), "{html}");
    assert!(
        !html.contains("unverified"),
        "an admin's application is not: {html}"
    );
    assert!(
        html.contains(&format!("<code>{mcp_url}</code>")),
        "the resource: {html}"
    );
    assert!(html.contains("<code>mcp</code>") && html.contains("<code>offline_access</code>"));
    assert!(
        html.contains("<code>https://desk.example.com</code>"),
        "the redirect host: {html}"
    );

    let reg: serde_json::Value =
        w.gw.http
            .post(format!("{}/oauth2/register", w.gw.url))
            .json(&json!({
                "redirect_uris": ["http://localhost:3000/callback"],
                "token_endpoint_auth_method": "none",
                "client_name": "Official <Helper>",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let client_id = reg["client_id"].as_str().unwrap();
    let html = consent_page(
        &w,
        &[
            ("client_id", client_id),
            ("redirect_uri", "http://localhost:3000/callback"),
            ("resource", &mcp_url),
        ],
    )
    .await;
    assert!(
        html.contains("Official &#60;Helper&#62;") || html.contains("Official &lt;Helper&gt;"),
        "escaped: {html}"
    );
    assert!(
        html.contains("unverified"),
        "a self-registered name is marked: {html}"
    );
    assert!(
        html.contains("<code>http://localhost:3000</code>"),
        "{html}"
    );
}
