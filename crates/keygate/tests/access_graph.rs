//! The access graph's policy overlay (`includePolicy=true`): per user and attached integration,
//! what the enabled policies decide for each tool the gateway has seen the integration list,
//! beside the graph's unchanged nodes and edges. Every body runs on SQLite and PostgreSQL.

use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    without_include_policy_the_graph_has_no_overlay,
    without_enabled_policies_everything_is_allowed,
    the_overlay_decides_each_listed_tool_per_user,
    an_argument_condition_depends_on_arguments,
    a_decision_that_differs_by_application_is_shown_per_application,
    members_cannot_read_the_overlay,
);

struct World {
    w: McpWorld,
    slug: String,
    integration: String,
    _up: keygate_test_support::fake_upstream::FakeUpstream,
}

async fn world(backend: Backend) -> World {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let up = keygate_test_support::fake_upstream::FakeUpstream::named("alpha").await;
    let (id, slug) = w.integration(json!({"name": "Alpha", "url": up.url})).await;
    World {
        w,
        slug,
        integration: id.to_string(),
        _up: up,
    }
}

impl World {
    async fn policy(&self, name: &str, text: &str) -> String {
        let body = json!({"name": name, "text": text});
        let (status, _, created) = self
            .w
            .gw
            .api(Method::POST, "/policies", &self.w.admin, Some(body))
            .await;
        assert_eq!(status, 201, "{created}");
        created["policy"]["id"].as_str().unwrap().to_owned()
    }

    async fn graph(&self, query: &str) -> Value {
        let path = format!("/applications/access-graph{query}");
        let (status, _, graph) = self.w.gw.api(Method::GET, &path, &self.w.admin, None).await;
        assert_eq!(status, 200, "{graph}");
        graph
    }

    /// Lists the integration's tools through the gateway as `user` (the gateway remembers them).
    async fn list_tools(&self, user: keygate_core::UserId) {
        let token = self.w.token(user).await;
        let status = self
            .w
            .gw
            .http
            .post(format!("{}/{}", self.w.app_url, self.slug))
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }

    /// The overlay entry of `user` and the integration.
    fn access<'a>(&self, graph: &'a Value, user: keygate_core::UserId) -> &'a Value {
        graph["policyAccess"]
            .as_array()
            .unwrap_or_else(|| panic!("no policyAccess in {graph}"))
            .iter()
            .find(|a| a["userId"] == user.to_string() && a["integrationId"] == self.integration)
            .unwrap_or_else(|| panic!("no entry for {user} in {graph}"))
    }
}

/// `tool`'s entry in an overlay entry.
fn tool<'a>(access: &'a Value, name: &str) -> &'a Value {
    access["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tool {name} in {access}"))
}

async fn without_include_policy_the_graph_has_no_overlay(backend: Backend) {
    let t = world(backend).await;
    let graph = t.graph("").await;
    let mut keys: Vec<&String> = graph.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["edges", "nodes"], "the wire shape stays as it was");
    let graph = t.graph("?includePolicy=false").await;
    assert!(graph.get("policyAccess").is_none(), "{graph}");
}

async fn without_enabled_policies_everything_is_allowed(backend: Backend) {
    let t = world(backend).await;
    let graph = t.graph("?includePolicy=true").await;
    let alice = t.access(&graph, t.w.alice);
    assert_eq!(alice["summary"], "all_allowed", "{alice}");
    assert!(
        graph["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "attached")
    );

    // A disabled policy changes nothing.
    let (status, _, _) = t
        .w
        .gw
        .api(
            Method::POST,
            "/policies",
            &t.w.admin,
            Some(json!({"name": "off", "enabled": false, "text": "forbid (principal, action, resource);"})),
        )
        .await;
    assert_eq!(status, 201);
    let graph = t.graph("?includePolicy=true").await;
    assert_eq!(t.access(&graph, t.w.bob)["summary"], "all_allowed");
}

async fn the_overlay_decides_each_listed_tool_per_user(backend: Backend) {
    let t = world(backend).await;
    let permit = t
        .policy(
            "members read only",
            r#"permit (principal, action, resource)
when { principal.role != "member" || resource.readOnlyHint };"#,
        )
        .await;
    let forbid = t
        .policy(
            "no ask for bob",
            &format!(
                r#"forbid (principal == User::"{}", action == Action::"call_tool", resource)
when {{ resource.name == "ask" }};"#,
                t.w.bob
            ),
        )
        .await;

    let graph = t.graph("?includePolicy=true").await;
    assert_eq!(
        t.access(&graph, t.w.alice)["summary"],
        "no_tools_known",
        "nothing was listed through the gateway yet: {graph}"
    );

    t.list_tools(t.w.alice).await;
    let graph = t.graph("?includePolicy=true").await;
    let alice = t.access(&graph, t.w.alice);
    assert_eq!(alice["summary"], "partial", "{alice}");
    assert_eq!(
        tool(alice, "echo")["decision"],
        "allow",
        "echo is read-only"
    );
    assert_eq!(tool(alice, "echo")["policyIds"], json!([permit]));
    assert_eq!(tool(alice, "slow")["decision"], "deny");
    assert_eq!(tool(alice, "ask")["decision"], "deny");

    let bob = t.access(&graph, t.w.bob);
    assert_eq!(tool(bob, "echo")["decision"], "allow");
    assert_eq!(tool(bob, "ask")["decision"], "deny");
    assert_eq!(tool(bob, "ask")["policyIds"], json!([forbid]));

    let admin =
        t.w.gw
            .store
            .create_user(
                t.w.gw.org,
                "carol@example.com",
                keygate_core::model::Role::Admin,
                None,
            )
            .await
            .unwrap();
    let graph = t.graph("?includePolicy=true").await;
    let carol = t.access(&graph, admin.id);
    assert_eq!(carol["summary"], "allowed", "{carol}");
    assert_eq!(carol["tools"].as_array().unwrap().len(), 3);
}

async fn an_argument_condition_depends_on_arguments(backend: Backend) {
    let t = world(backend).await;
    t.policy(
        "small amounts",
        r#"permit (principal, action, resource)
when { context.arguments has amount && context.arguments.amount < 100 };"#,
    )
    .await;
    t.list_tools(t.w.alice).await;
    let graph = t.graph("?includePolicy=true").await;
    let alice = t.access(&graph, t.w.alice);
    assert_eq!(
        tool(alice, "slow")["decision"],
        "depends_on_arguments",
        "{alice}"
    );
    assert_eq!(alice["summary"], "partial");
}

async fn a_decision_that_differs_by_application_is_shown_per_application(backend: Backend) {
    let t = world(backend).await;
    let other =
        t.w.gw
            .create_application(&t.w.admin, "Other", AppClient::Public)
            .await;
    let other_id = other["application"]["id"].as_str().unwrap().to_owned();
    let (status, _, body) =
        t.w.gw
            .api(
                Method::POST,
                &format!("/applications/{other_id}/integrations/{}", t.integration),
                &t.w.admin,
                None,
            )
            .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    t.policy(
        "only through Agents",
        &format!(
            r#"permit (principal, action, resource) when {{ resource.application == "{}" }};"#,
            t.w.app
        ),
    )
    .await;
    t.list_tools(t.w.alice).await;
    let graph = t.graph("?includePolicy=true").await;
    let echo = tool(t.access(&graph, t.w.alice), "echo");
    assert_eq!(echo["decision"], "varies_by_application", "{echo}");
    let per_app = echo["applications"].as_array().unwrap();
    let decision_of = |app: &str| {
        per_app
            .iter()
            .find(|d| d["applicationId"] == app)
            .map(|d| d["decision"].clone())
    };
    assert_eq!(decision_of(&t.w.app.to_string()), Some(json!("allow")));
    assert_eq!(decision_of(&other_id), Some(json!("deny")));
}

async fn members_cannot_read_the_overlay(backend: Backend) {
    let t = world(backend).await;
    let alice = t.w.gw.management_token(t.w.alice).await;
    let (status, _, _) =
        t.w.gw
            .api(
                Method::GET,
                "/applications/access-graph?includePolicy=true",
                &alice,
                None,
            )
            .await;
    assert_eq!(status, 403);
}
