//! Tool policies: Cedar policies stored through `/api/v1/policies` govern listing and calling
//! on the pass-through and the aggregated endpoint, before anything reaches the upstream; the
//! API's validation, dry run and roles. Every body runs on SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use keygate_core::model::Role;
use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    without_policies_everything_is_listed_and_callable,
    a_forbid_hides_and_refuses_a_tool_on_both_routes,
    an_sse_list_answer_is_filtered_event_by_event,
    a_batch_cannot_carry_a_denied_call_upstream,
    an_argument_condition_decides_each_call,
    members_only_use_read_only_tools,
    a_failing_condition_denies_and_is_traced,
    a_disabled_or_deleted_policy_stops_applying,
    evaluate_agrees_with_the_gateway,
    members_cannot_change_policies,
    an_admin_user_changes_policies,
    the_schema_and_the_openapi_document_publish_the_policy_routes,
    bad_policy_text_is_refused_with_its_place,
    an_approved_call_goes_through_on_both_routes,
    a_declined_call_never_reaches_the_upstream,
    another_user_cannot_answer_an_approval,
    a_client_without_elicitation_is_told_approval_is_required,
    evaluate_says_when_approval_is_required,
    an_aggregated_call_goes_upstream_as_the_client_wrote_it,
    an_aggregated_call_goes_upstream_as_it_was_judged,
);

/// A world with one fake upstream attached as `alpha`.
struct World {
    w: McpWorld,
    up: FakeUpstream,
    slug: String,
}

async fn world(backend: Backend) -> World {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let up = FakeUpstream::named("alpha").await;
    let (_, slug) = w.integration(json!({"name": "Alpha", "url": up.url})).await;
    World { w, up, slug }
}

fn rpc(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

impl World {
    /// Stores an enabled policy as the organization's admin; its id.
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

    /// A pass-through request's JSON answer (JSON or one SSE event).
    async fn passthrough(&self, token: &str, body: Value) -> Value {
        let resp = self
            .w
            .gw
            .http
            .post(format!("{}/{}", self.w.app_url, self.slug))
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        answer(resp).await
    }

    /// An aggregated request of a 2025 client: initialize, then `body` in that session.
    async fn aggregated(&self, token: &str, body: Value) -> Value {
        self.aggregated_text(token, body.to_string()).await
    }

    /// [`World::aggregated`] with the message's text as it is to be sent.
    async fn aggregated_text(&self, token: &str, body: String) -> Value {
        let http = &self.w.gw.http;
        let init = rpc(
            0,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"}}),
        );
        let resp = http
            .post(&self.w.app_url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&init)
            .send()
            .await
            .unwrap();
        let session = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let resp = http
            .post(&self.w.app_url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        answer(resp).await
    }

    fn upstream_calls(&self) -> usize {
        self.up.count("tools/call")
    }

    /// The text of the last `tools/call` the upstream received.
    fn last_call_text(&self) -> String {
        let requests = self.up.requests();
        let call = requests.iter().rev().find(|r| r["method"] == "tools/call");
        call.expect("a call reached the upstream")["body"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// The JSON-RPC message of an answer: its JSON body, or the data of its last SSE event.
async fn answer(resp: reqwest::Response) -> Value {
    let text = resp.text().await.unwrap();
    if let Ok(v) = serde_json::from_str(&text) {
        return v;
    }
    let data = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .next_back()
        .unwrap_or_else(|| panic!("no JSON in {text}"));
    serde_json::from_str(data.trim()).unwrap()
}

/// The sorted names of a list answer's tools.
fn tools(answer: &Value) -> Vec<String> {
    let mut names: Vec<String> = answer["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {answer}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn call(id: i64, tool: &str, arguments: Value) -> Value {
    rpc(
        id,
        "tools/call",
        json!({"name": tool, "arguments": arguments}),
    )
}

const PERMIT_ALL: &str = "permit (principal, action, resource);";

async fn without_policies_everything_is_listed_and_callable(backend: Backend) {
    let t = world(backend).await;
    let alice = t.w.token(t.w.alice).await;
    let listed = t.passthrough(&alice, rpc(1, "tools/list", json!({}))).await;
    assert_eq!(tools(&listed), ["ask", "echo", "slow"]);
    let called = t.passthrough(&alice, call(2, "echo", json!({}))).await;
    assert!(called["result"].is_object(), "{called}");
    let merged = t.aggregated(&alice, rpc(3, "tools/list", json!({}))).await;
    assert_eq!(tools(&merged), ["alpha_ask", "alpha_echo", "alpha_slow"]);
    assert_eq!(t.upstream_calls(), 1);
}

async fn a_forbid_hides_and_refuses_a_tool_on_both_routes(backend: Backend) {
    let t = world(backend).await;
    t.policy("everyone", PERMIT_ALL).await;
    let forbid = format!(
        r#"forbid (principal == User::"{}", action == Action::"call_tool", resource)
when {{ resource.name == "echo" }};"#,
        t.w.bob
    );
    let id = t.policy("no echo for bob", &forbid).await;
    let (alice, bob) = (t.w.token(t.w.alice).await, t.w.token(t.w.bob).await);

    let listed = t.passthrough(&bob, rpc(1, "tools/list", json!({}))).await;
    assert_eq!(tools(&listed), ["ask", "slow"]);
    let merged = t.aggregated(&bob, rpc(2, "tools/list", json!({}))).await;
    assert_eq!(tools(&merged), ["alpha_ask", "alpha_slow"]);

    let refused = t.passthrough(&bob, call(3, "echo", json!({}))).await;
    assert_eq!(refused["id"], 3, "{refused}");
    assert_eq!(refused["error"]["code"], -32043, "{refused}");
    assert_eq!(refused["error"]["data"]["policyIds"], json!([id]));
    let refused = t.aggregated(&bob, call(4, "alpha_echo", json!({}))).await;
    assert_eq!(refused["id"], 4, "{refused}");
    assert_eq!(refused["error"]["code"], -32043, "{refused}");
    assert_eq!(refused["error"]["data"]["policyIds"], json!([id]));
    assert_eq!(
        t.upstream_calls(),
        0,
        "a denied call never reaches the upstream"
    );

    let listed = t.passthrough(&alice, rpc(5, "tools/list", json!({}))).await;
    assert_eq!(tools(&listed), ["ask", "echo", "slow"]);
    let called = t.aggregated(&alice, call(6, "alpha_echo", json!({}))).await;
    assert!(called["result"].is_object(), "{called}");
    assert_eq!(t.upstream_calls(), 1);
}

async fn an_sse_list_answer_is_filtered_event_by_event(backend: Backend) {
    let t = world(backend).await;
    t.up.split_writes("\n");
    t.policy("everyone", PERMIT_ALL).await;
    t.policy(
        "no slow",
        r#"forbid (principal, action, resource) when { resource.name == "slow" };"#,
    )
    .await;
    let alice = t.w.token(t.w.alice).await;
    let resp =
        t.w.gw
            .http
            .post(format!("{}/{}", t.w.app_url, t.slug))
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(&alice)
            .json(&rpc(1, "tools/list", json!({})))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let listed = answer(resp).await;
    assert_eq!(tools(&listed), ["ask", "echo", "menu"]);
}

async fn a_batch_cannot_carry_a_denied_call_upstream(backend: Backend) {
    let t = world(backend).await;
    t.policy("everyone", PERMIT_ALL).await;
    t.policy(
        "no slow",
        r#"forbid (principal, action, resource) when { resource.name == "slow" };"#,
    )
    .await;
    let alice = t.w.token(t.w.alice).await;
    let batch = json!([call(1, "echo", json!({})), call(2, "slow", json!({}))]);
    let refused = t.passthrough(&alice, batch).await;
    assert_eq!(refused["error"]["code"], -32043, "{refused}");
    assert_eq!(t.upstream_calls(), 0);
}

async fn an_argument_condition_decides_each_call(backend: Backend) {
    let t = world(backend).await;
    t.policy("small transfers", SMALL_TRANSFERS).await;
    let alice = t.w.token(t.w.alice).await;
    let listed = t.passthrough(&alice, rpc(1, "tools/list", json!({}))).await;
    assert_eq!(
        tools(&listed),
        ["ask", "echo", "slow"],
        "some call may be permitted"
    );
    let small = t
        .passthrough(&alice, call(2, "echo", json!({"amount": 99})))
        .await;
    assert!(small["result"].is_object(), "{small}");
    let large = t
        .passthrough(&alice, call(3, "echo", json!({"amount": 100})))
        .await;
    assert_eq!(large["error"]["code"], -32043, "{large}");
    let large = t
        .aggregated(&alice, call(4, "alpha_echo", json!({"amount": 500})))
        .await;
    assert_eq!(large["error"]["code"], -32043, "{large}");
    let small = t
        .aggregated(&alice, call(5, "alpha_echo", json!({"amount": 5})))
        .await;
    assert!(small["result"].is_object(), "{small}");
    assert_eq!(t.upstream_calls(), 2);
}

async fn members_only_use_read_only_tools(backend: Backend) {
    let t = world(backend).await;
    t.policy(
        "members read only",
        r#"permit (principal, action, resource)
when { principal.role != "member" || resource.readOnlyHint };"#,
    )
    .await;
    let alice = t.w.token(t.w.alice).await;
    let listed = t.passthrough(&alice, rpc(1, "tools/list", json!({}))).await;
    assert_eq!(tools(&listed), ["echo"], "only echo is annotated read-only");
    let merged = t.aggregated(&alice, rpc(2, "tools/list", json!({}))).await;
    assert_eq!(tools(&merged), ["alpha_echo"]);
    let read = t.passthrough(&alice, call(3, "echo", json!({}))).await;
    assert!(read["result"].is_object(), "{read}");
    let write = t.aggregated(&alice, call(4, "alpha_slow", json!({}))).await;
    assert_eq!(write["error"]["code"], -32043, "{write}");
    assert_eq!(t.upstream_calls(), 1);

    let admin =
        t.w.gw
            .store
            .create_user(t.w.gw.org, "carol@example.com", Role::Admin, None)
            .await
            .unwrap();
    let carol = t.w.token(admin.id).await;
    let listed = t.passthrough(&carol, rpc(5, "tools/list", json!({}))).await;
    assert_eq!(tools(&listed), ["ask", "echo", "slow"]);
}

async fn a_failing_condition_denies_and_is_traced(backend: Backend) {
    let t = world(backend).await;
    t.policy("everyone", PERMIT_ALL).await;
    let id = t
        .policy(
            "large transfers",
            r#"forbid (principal, action, resource) when { context.arguments.amount >= 100 };"#,
        )
        .await;
    let alice = t.w.token(t.w.alice).await;
    // No `amount`: the forbid cannot be evaluated, and an error denies even in a forbid.
    let refused = t.passthrough(&alice, call(1, "echo", json!({}))).await;
    assert_eq!(refused["error"]["code"], -32043, "{refused}");
    assert_eq!(refused["error"]["data"]["policyIds"], json!([id]));
    assert_eq!(t.upstream_calls(), 0);

    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let (status, _, body) =
            t.w.gw
                .api(Method::GET, "/events?status=denied", &t.w.admin, None)
                .await;
        assert_eq!(status, 200, "{body}");
        if let Some(event) = body["items"].as_array().unwrap().first() {
            break event.clone();
        }
        assert!(Instant::now() < deadline, "no denied event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["toolName"], "echo", "{event}");
    assert!(
        event["errorMessage"].as_str().unwrap().contains(&id),
        "{event}"
    );
}

async fn a_disabled_or_deleted_policy_stops_applying(backend: Backend) {
    let t = world(backend).await;
    t.policy("everyone", PERMIT_ALL).await;
    let id = t
        .policy(
            "no echo",
            r#"forbid (principal, action, resource) when { resource.name == "echo" };"#,
        )
        .await;
    let replica = match backend {
        Backend::Postgres => Some(t.w.gw.replica().await),
        Backend::Sqlite => None,
    };
    // On PostgreSQL the second gateway answers; it learns of each change through the store.
    let gateway_url = replica
        .as_ref()
        .map_or(t.w.gw.url.clone(), |r| r.url.clone());
    let app_url = format!("{gateway_url}/apps/{}/mcp/{}", t.w.app, t.slug);
    let alice = t.w.token(t.w.alice).await;
    let echo_allowed = || async {
        let resp =
            t.w.gw
                .http
                .post(&app_url)
                .header("accept", "application/json, text/event-stream")
                .bearer_auth(&alice)
                .json(&call(1, "echo", json!({})))
                .send()
                .await
                .unwrap();
        answer(resp).await["result"].is_object()
    };
    let within_a_second = |want: bool| {
        let echo_allowed = &echo_allowed;
        async move {
            let deadline = Instant::now() + Duration::from_secs(1);
            while echo_allowed().await != want {
                assert!(Instant::now() < deadline, "not {want} within a second");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    within_a_second(false).await;
    let path = format!("/policies/{id}");
    let admin = &t.w.admin;
    let (status, _, _) =
        t.w.gw
            .api(Method::PATCH, &path, admin, Some(json!({"enabled": false})))
            .await;
    assert_eq!(status, 200);
    within_a_second(true).await;
    let (status, _, _) =
        t.w.gw
            .api(Method::PATCH, &path, admin, Some(json!({"enabled": true})))
            .await;
    assert_eq!(status, 200);
    within_a_second(false).await;
    let (status, _, _) = t.w.gw.api(Method::DELETE, &path, admin, None).await;
    assert_eq!(status, 204);
    within_a_second(true).await;
}

async fn evaluate_agrees_with_the_gateway(backend: Backend) {
    let t = world(backend).await;
    t.policy("small transfers", SMALL_TRANSFERS).await;
    let alice = t.w.token(t.w.alice).await;
    let host = reqwest::Url::parse(&t.up.url)
        .unwrap()
        .host_str()
        .unwrap()
        .to_owned();
    for amount in [5, 500] {
        let dry_run = json!({
            "principal": {"id": t.w.alice.to_string(), "email": t.w.email(t.w.alice), "role": "member"},
            "action": "call_tool",
            "resource": {"name": "echo", "integration": {"slug": t.slug, "host": host},
                "application": t.w.app.to_string()},
            "context": {"arguments": {"amount": amount}},
        });
        let (status, _, decided) =
            t.w.gw
                .api(
                    Method::POST,
                    "/policies/evaluate",
                    &t.w.admin,
                    Some(dry_run),
                )
                .await;
        assert_eq!(status, 200, "{decided}");
        let gateway = t
            .passthrough(&alice, call(1, "echo", json!({"amount": amount})))
            .await;
        let allowed = gateway["result"].is_object();
        assert_eq!(
            decided["decision"] == "allow",
            allowed,
            "{decided} vs {gateway}"
        );
    }
}

async fn members_cannot_change_policies(backend: Backend) {
    let t = world(backend).await;
    let member = t.w.gw.management_token(t.w.alice).await;
    let body = json!({"name": "p", "text": PERMIT_ALL});
    let (status, _, refused) =
        t.w.gw
            .api(Method::POST, "/policies", &member, Some(body.clone()))
            .await;
    assert_eq!(status, 403, "{refused}");
    let id = t.policy("p", PERMIT_ALL).await;
    let path = format!("/policies/{id}");
    let disable = json!({"enabled": false});
    let (status, _, _) =
        t.w.gw
            .api(Method::PATCH, &path, &member, Some(disable))
            .await;
    assert_eq!(status, 403);
    let (status, _, _) = t.w.gw.api(Method::DELETE, &path, &member, None).await;
    assert_eq!(status, 403);
    let (status, _, listed) = t.w.gw.api(Method::GET, "/policies", &member, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"][0]["id"], id.as_str());
}

async fn an_admin_user_changes_policies(backend: Backend) {
    let t = world(backend).await;
    let carol =
        t.w.gw
            .store
            .create_user(t.w.gw.org, "carol@example.com", Role::Admin, None)
            .await
            .unwrap();
    let admin = t.w.gw.management_token(carol.id).await;
    let body = json!({"name": "p", "text": PERMIT_ALL, "enabled": false});
    let (status, _, created) =
        t.w.gw
            .api(Method::POST, "/policies", &admin, Some(body))
            .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["policy"]["enabled"], false);
    let path = format!("/policies/{}", created["policy"]["id"].as_str().unwrap());
    let (status, _, _) = t.w.gw.api(Method::DELETE, &path, &admin, None).await;
    assert_eq!(status, 204);
}

async fn the_schema_and_the_openapi_document_publish_the_policy_routes(backend: Backend) {
    let t = world(backend).await;
    let member = t.w.gw.management_token(t.w.alice).await;
    let (status, _, schema) =
        t.w.gw
            .api(Method::GET, "/policies/schema", &member, None)
            .await;
    assert_eq!(status, 200, "{schema}");
    let text = schema["schema"].as_str().unwrap();
    assert!(
        text.contains("entity Tool") && text.contains("readOnlyHint"),
        "{text}"
    );
    assert_eq!(
        schema["actions"],
        json!(["call_tool", "get_prompt", "read_resource"])
    );
    let doc: Value =
        t.w.gw
            .http
            .get(format!("{}/api/openapi.json", t.w.gw.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    for path in [
        "/policies",
        "/policies/{id}",
        "/policies/validate",
        "/policies/evaluate",
        "/policies/schema",
    ] {
        assert!(
            doc["paths"][format!("/api/v1{path}")].is_object(),
            "{path} missing"
        );
    }
}

async fn bad_policy_text_is_refused_with_its_place(backend: Backend) {
    let t = world(backend).await;
    let admin = &t.w.admin;
    let create = |text: String| json!({"name": "bad", "text": text});

    let broken = "permit (principal, action, resource);\nforbid (principal,".to_owned();
    let (status, _, refused) =
        t.w.gw
            .api(
                Method::POST,
                "/policies",
                admin,
                Some(create(broken.clone())),
            )
            .await;
    assert_eq!(status, 400, "{refused}");
    let first = &refused["validationErrors"][0];
    assert_eq!(first["field"], "text");
    assert_eq!(first["line"], 2, "{refused}");

    let unknown = "permit (principal, action, resource)\nwhen { principal.team == \"x\" };";
    let (status, _, refused) =
        t.w.gw
            .api(
                Method::POST,
                "/policies",
                admin,
                Some(create(unknown.into())),
            )
            .await;
    assert_eq!(status, 400, "{refused}");
    let first = &refused["validationErrors"][0];
    assert_eq!(
        (first["line"].clone(), first["column"].clone()),
        (json!(2), json!(8))
    );

    let huge = format!("{PERMIT_ALL}\n// {}", "x".repeat(70 * 1024));
    let (status, _, refused) =
        t.w.gw
            .api(Method::POST, "/policies", admin, Some(create(huge)))
            .await;
    assert_eq!(status, 400, "{refused}");

    let (status, _, checked) =
        t.w.gw
            .api(
                Method::POST,
                "/policies/validate",
                admin,
                Some(json!({"text": broken})),
            )
            .await;
    assert_eq!(status, 200);
    assert_eq!(checked["valid"], false, "{checked}");
    assert_eq!(checked["errors"][0]["line"], 2, "{checked}");

    let (status, _, listed) = t.w.gw.api(Method::GET, "/policies", admin, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"], json!([]), "nothing invalid was stored");
}

/// Echo needs the user's approval; everything else is allowed.
const APPROVE_ECHO: &str = r#"@approval("user")
permit (principal, action == Action::"call_tool", resource) when { resource.name == "echo" };
permit (principal, action, resource) when { resource.name != "echo" };"#;

/// Which endpoint a test speaks to.
#[derive(Clone, Copy, Debug)]
enum Route {
    Passthrough,
    Aggregated,
}

impl World {
    fn url(&self, route: Route) -> String {
        match route {
            Route::Passthrough => format!("{}/{}", self.w.app_url, self.slug),
            Route::Aggregated => self.w.app_url.clone(),
        }
    }

    /// The tool `echo` as `route` names it.
    fn echo(&self, route: Route) -> String {
        match route {
            Route::Passthrough => "echo".into(),
            Route::Aggregated => format!("{}_echo", self.slug),
        }
    }

    /// A 2025 session on `route` whose client declares `capabilities`: its id.
    async fn session(&self, route: Route, token: &str, capabilities: Value) -> String {
        let init = rpc(
            0,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": capabilities,
                "clientInfo": {"name": "t", "version": "1"}}),
        );
        let resp = self.post(route, token, None, &init).await;
        assert_eq!(resp.status(), 200);
        resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned()
    }

    async fn post(
        &self,
        route: Route,
        token: &str,
        session: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut req = self
            .w
            .gw
            .http
            .post(self.url(route))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.send().await.unwrap()
    }
}

/// Reads an SSE answer event by event.
struct Events {
    resp: reqwest::Response,
    buffer: String,
}

impl Events {
    fn new(resp: reqwest::Response) -> Self {
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            resp,
            buffer: String::new(),
        }
    }

    /// The next event's JSON data (comments and keep-alives skipped).
    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if !data.is_empty() {
                    return serde_json::from_str(&data.join("\n")).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .expect("the stream ended before the event");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// Calls echo on `route` in a session that declared elicitation, and answers the gateway's
/// question with `action`: the question and the call's final answer.
async fn call_and_answer(t: &World, route: Route, action: &str) -> (Value, Value) {
    let alice = t.w.token(t.w.alice).await;
    let session = t.session(route, &alice, json!({"elicitation": {}})).await;
    let called = call(7, &t.echo(route), json!({"text": "hi"}));
    let before = t.upstream_calls();
    let resp = t.post(route, &alice, Some(&session), &called).await;
    assert_eq!(resp.status(), 200);
    let mut events = Events::new(resp);
    let question = events.next().await;
    assert_eq!(question["method"], "elicitation/create", "{question}");
    assert_eq!(
        t.upstream_calls(),
        before,
        "nothing reaches the upstream before the user answers"
    );
    let answer = json!({"jsonrpc": "2.0", "id": question["id"],
        "result": {"action": action, "content": {}}});
    let taken = t.post(route, &alice, Some(&session), &answer).await;
    assert_eq!(taken.status(), 202);
    (question, events.next().await)
}

async fn an_approved_call_goes_through_on_both_routes(backend: Backend) {
    let t = world(backend).await;
    t.policy("approve echo", APPROVE_ECHO).await;
    for (n, route) in [Route::Passthrough, Route::Aggregated]
        .into_iter()
        .enumerate()
    {
        let (question, answer) = call_and_answer(&t, route, "accept").await;
        let id = question["id"].as_str().unwrap();
        assert!(id.starts_with("keygate-approval-"), "{question}");
        let message = question["params"]["message"].as_str().unwrap();
        for shown in ["echo", "Alpha", &t.slug, r#""text":"hi""#] {
            assert!(message.contains(shown), "{shown} in {message}");
        }
        assert_eq!(question["params"]["requestedSchema"]["type"], "object");
        assert_eq!(answer["id"], 7, "{route:?}: {answer}");
        assert!(answer["result"].is_object(), "{route:?}: {answer}");
        assert_eq!(t.upstream_calls(), n + 1, "{route:?}");
        // The answer to the question never went upstream.
        assert!(
            t.up.requests().iter().all(|r| r["id"] != question["id"]),
            "{route:?}"
        );
    }
    // Tools that need no approval are answered as usual.
    let alice = t.w.token(t.w.alice).await;
    let listed = t.passthrough(&alice, rpc(1, "tools/list", json!({}))).await;
    assert_eq!(tools(&listed), ["ask", "echo", "slow"]);
    let approvals = approval_events(&t, "ok", 2).await;
    assert!(
        approvals[0]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("accepted"),
        "{approvals:?}"
    );
}

async fn a_declined_call_never_reaches_the_upstream(backend: Backend) {
    let t = world(backend).await;
    let id = t.policy("approve echo", APPROVE_ECHO).await;
    for route in [Route::Passthrough, Route::Aggregated] {
        let (_, answer) = call_and_answer(&t, route, "decline").await;
        assert_eq!(answer["id"], 7, "{route:?}: {answer}");
        assert_eq!(answer["error"]["code"], -32043, "{route:?}: {answer}");
        assert_eq!(answer["error"]["data"]["policyIds"], json!([id]));
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("declined"), "{message}");
    }
    assert_eq!(t.upstream_calls(), 0);
    let approvals = approval_events(&t, "denied", 2).await;
    assert!(
        approvals[0]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("declined"),
        "{approvals:?}"
    );
}

/// A question the gateway asked Alice is hers: Bob, holding its id, cannot accept it from his own
/// session, and the call stays waiting for her answer.
async fn another_user_cannot_answer_an_approval(backend: Backend) {
    let t = world(backend).await;
    t.policy("approve echo", APPROVE_ECHO).await;
    let (alice, bob) = (t.w.token(t.w.alice).await, t.w.token(t.w.bob).await);
    for route in [Route::Passthrough, Route::Aggregated] {
        let hers = t.session(route, &alice, json!({"elicitation": {}})).await;
        let his = t.session(route, &bob, json!({"elicitation": {}})).await;
        let called = call(7, &t.echo(route), json!({"text": "hi"}));
        let mut events = Events::new(t.post(route, &alice, Some(&hers), &called).await);
        let question = events.next().await;
        let reply = |action: &str| json!({"jsonrpc": "2.0", "id": question["id"], "result": {"action": action, "content": {}}});
        t.post(route, &bob, Some(&his), &reply("accept")).await;
        assert_eq!(
            t.upstream_calls(),
            0,
            "{route:?}: Bob's accept ran the call"
        );
        t.post(route, &alice, Some(&hers), &reply("decline")).await;
        let answer = events.next().await;
        assert_eq!(answer["error"]["code"], -32043, "{route:?}: {answer}");
    }
    assert_eq!(t.upstream_calls(), 0);
}

async fn a_client_without_elicitation_is_told_approval_is_required(backend: Backend) {
    let t = world(backend).await;
    let id = t.policy("approve echo", APPROVE_ECHO).await;
    let alice = t.w.token(t.w.alice).await;
    for route in [Route::Passthrough, Route::Aggregated] {
        let session = t.session(route, &alice, json!({"sampling": {}})).await;
        let called = call(3, &t.echo(route), json!({}));
        let refused = answer(t.post(route, &alice, Some(&session), &called).await).await;
        assert_eq!(refused["id"], 3, "{route:?}: {refused}");
        assert_eq!(refused["error"]["code"], -32043, "{route:?}: {refused}");
        assert_eq!(refused["error"]["data"]["policyIds"], json!([id]));
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("approval") && message.contains("elicitation"),
            "{message}"
        );
    }
    assert_eq!(t.upstream_calls(), 0);
}

async fn evaluate_says_when_approval_is_required(backend: Backend) {
    let t = world(backend).await;
    let id = t.policy("approve echo", APPROVE_ECHO).await;
    for (tool, approval) in [("echo", true), ("slow", false)] {
        let dry_run = json!({
            "principal": {"id": t.w.alice.to_string(), "email": t.w.email(t.w.alice), "role": "member"},
            "action": "call_tool",
            "resource": {"name": tool, "integration": {"slug": t.slug, "host": "127.0.0.1"},
                "application": t.w.app.to_string()},
        });
        let (status, _, decision) =
            t.w.gw
                .api(
                    Method::POST,
                    "/policies/evaluate",
                    &t.w.admin,
                    Some(dry_run),
                )
                .await;
        assert_eq!(status, 200, "{decision}");
        assert_eq!(decision["decision"], "allow", "{decision}");
        assert_eq!(decision["approvalRequired"], approval, "{decision}");
        assert_eq!(decision["policyIds"], json!([id]), "{decision}");
    }
    // An approver the gateway does not know, or an approved forbid, is refused when stored.
    for text in [
        r#"@approval("admin") permit (principal, action, resource);"#,
        r#"@approval("user") forbid (principal, action, resource);"#,
    ] {
        let body = json!({"name": "bad", "text": text});
        let (status, _, refused) =
            t.w.gw
                .api(Method::POST, "/policies", &t.w.admin, Some(body))
                .await;
        assert_eq!(status, 400, "{refused}");
        assert!(refused.to_string().contains("approval"), "{refused}");
    }
}

/// The approval trace events of `status`, once there are `n`.
async fn approval_events(t: &World, status: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let path = format!("/events?status={status}");
        let (code, _, body) = t.w.gw.api(Method::GET, &path, &t.w.admin, None).await;
        assert_eq!(code, 200, "{body}");
        let found: Vec<Value> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["eventType"] == "approval")
            .cloned()
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(Instant::now() < deadline, "{n} {status} approvals: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_aggregated_call_goes_upstream_as_the_client_wrote_it(backend: Backend) {
    let t = world(backend).await;
    let alice = t.w.token(t.w.alice).await;
    let written = r#"{"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "alpha_echo", "arguments": {"n": 1.50}, "_meta": {"progressToken": "p"}}}"#;
    let answer = t.aggregated_text(&alice, written.to_owned()).await;
    assert!(answer["result"].is_object(), "{answer}");
    assert_eq!(t.last_call_text(), written.replace("alpha_echo", "echo"));
}

const SMALL_TRANSFERS: &str = r#"permit (principal, action == Action::"call_tool", resource)
when { context.arguments has amount && context.arguments.amount < 100 };"#;

async fn an_aggregated_call_goes_upstream_as_it_was_judged(backend: Backend) {
    let t = world(backend).await;
    t.policy("small transfers", SMALL_TRANSFERS).await;
    let alice = t.w.token(t.w.alice).await;
    // Given twice, `arguments` is judged by its last value; another parser could take the first.
    let twice = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"alpha_echo","arguments":{"amount":500},"arguments":{"amount":5}}}"#;
    let answer = t.aggregated_text(&alice, twice.to_owned()).await;
    assert!(answer["result"].is_object(), "{answer}");
    let sent = t.last_call_text();
    assert_eq!(sent.matches("amount").count(), 1, "{sent}");
    assert!(sent.contains(r#""amount":5"#), "{sent}");
}
