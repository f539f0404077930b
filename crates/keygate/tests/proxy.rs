//! The pass-through MCP proxy against a fake upstream that echoes what it receives: credential
//! injection and isolation, streaming, and bad traffic. Every body runs on SQLite and
//! PostgreSQL.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keygate_core::{ApplicationId, IntegrationId, Secret, UserId};
use keygate_test_support::browser::{browser, field};
use keygate_test_support::fake_upstream::{FakeUpstream, SESSION_ID};
use keygate_test_support::mcp::{MODERN, initialize, modern_with, names, post, rpc, status_json};
use keygate_test_support::world::{AppClient, McpWorld as World};
use keygate_test_support::{Backend, both_backends};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    server_token_is_injected_and_agent_headers_stay_behind,
    routing_headers_of_2026_pass_untouched,
    user_token_is_each_users_own,
    user_without_a_token_is_asked_to_connect,
    integration_without_auth_gets_no_authorization,
    integration_answers_by_id_as_by_slug,
    an_integrations_new_url_takes_the_next_call,
    unauthenticated_call_gets_a_challenge_naming_the_resource,
    token_for_another_application_is_refused,
    token_for_one_integration_opens_only_that_one,
    detached_or_archived_integration_is_unreachable,
    proxied_call_marks_the_agent_session_live,
    responses_stream_event_by_event,
    upstream_reset_mid_stream_ends_with_an_error_for_the_request,
    oversized_body_gets_413,
    malformed_json_gets_the_upstreams_client_error,
    passthrough_to_a_down_upstream_gets_502,
    internal_address_off_the_allow_list_is_never_contacted,
    unknown_integration_gets_404,
    legacy_sse_endpoint_is_rewritten,
    legacy_messages_reach_the_upstream_and_answer_on_the_stream,
    forged_legacy_endpoint_cannot_leave_the_upstreams_origin,
    validation_performs_a_real_handshake,
    aggregated_session_opens_sealed_and_closes,
    aggregated_lists_namespace_every_reachable_upstream,
    aggregated_calls_route_by_prefix_with_each_upstreams_credential,
    aggregated_server_to_client_request_round_trips,
    aggregated_get_stream_merges_upstreams_with_their_own_credentials,
    aggregated_session_of_another_user_is_not_found,
    server_discover_describes_the_aggregate,
    tools_list_for_a_2026_client_is_complete_and_private,
    call_to_a_2026_upstream_carries_meta_and_mirrored_headers,
    calls_to_a_2025_upstream_share_one_gateway_session,
    resources_read_for_a_2026_client_routes_by_uri,
    aggregated_requests_breaking_the_protocol_get_its_errors,
    a_2025_session_discovers_a_2026_upstream_instead_of_initializing_it,
    initialized_notification_reaches_only_2025_upstreams,
    a_2025_sessions_calls_reach_a_2026_upstream_with_meta_from_its_initialize,
    a_2026_upstreams_error_reaches_a_2025_client_in_a_200,
    initialize_for_the_stateless_version_gets_a_2025_one,
    requests_needing_a_forgotten_upstream_session_send_the_client_to_initialize,
    get_stream_of_a_forgotten_upstream_session_is_not_found,
    a_call_to_an_upstream_that_kept_its_session_still_works,
    a_new_initialize_after_an_upstream_forgot_its_session_works,
    last_event_id_resumes_without_loss,
    aggregated_stream_resumes_every_upstream,
    hanging_upstream_gets_a_timeout,
    connect_link_opens_a_token_form_for_its_user,
    connect_form_without_csrf_is_forbidden,
    connected_token_is_carried_by_the_next_call,
    used_or_forged_connect_link_is_refused,
    runtime_endpoints_say_whether_the_user_is_connected,
    runtime_connect_session_opens_for_its_user_alone,
    passthrough_keeps_utf8_split_across_writes,
    aggregated_tools_list_keeps_utf8_split_across_writes,
    aggregated_tools_call_keeps_utf8_split_across_writes,
    passthrough_upstream_down_answers_with_the_request_id,
    passthrough_unknown_integration_answers_with_the_request_id,
    aggregated_upstream_down_answers_with_the_request_id,
    aggregated_unknown_tool_answers_with_the_request_id,
    aggregated_calls_without_connection_mint_no_connect_sessions,
    warm_aggregated_calls_write_nothing,
    aggregated_cancel_reaches_upstream,
    aggregated_cancel_drops_a_2026_upstream_request,
    dropped_2026_request_cancels_the_upstream_call,
    aggregated_cancel_of_an_unknown_request_reaches_every_upstream,
    aggregated_subscribe_reaches_the_resource_owner,
    aggregated_subscribe_to_an_unknown_uri_goes_to_the_only_upstream,
    aggregated_completion_routes_by_reference,
    aggregated_list_changes_are_coalesced,
    aggregated_capabilities_follow_the_upstreams,
    aggregated_answers_carry_no_other_era_fields,
    aggregated_gateway_errors_carry_the_request_id,
);

async fn world(backend: Backend) -> World {
    world_with(backend, |_| {}).await
}

async fn world_with(
    backend: Backend,
    tweak: impl FnOnce(&mut keygate_core::config::Config),
) -> World {
    World::start(backend, AppClient::Public, tweak).await
}

/// The requests these tests send through a [`World`]'s gateway.
trait Requests {
    fn aggregated(
        &self,
        token: &str,
        session: Option<&str>,
        body: &Value,
    ) -> reqwest::RequestBuilder;
    async fn call(&self, slug: &str, token: Option<&str>, body: Value) -> reqwest::Response;
}

impl Requests for World {
    /// A 2025 client's POST to the aggregated endpoint, within `session` once it has one.
    fn aggregated(
        &self,
        token: &str,
        session: Option<&str>,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        post(self, token, session, body)
    }

    /// A pass-through POST carrying headers that must be dropped and kept.
    async fn call(&self, slug: &str, token: Option<&str>, body: Value) -> reqwest::Response {
        let mut req = self
            .gw
            .http
            .post(format!("{}/{slug}", self.app_url))
            .header("accept", "application/json, text/event-stream")
            .header("cookie", "kg_session=browser-cookie")
            .header("x-custom", "not on the allow-list")
            .header("mcp-session-id", "client-held-session")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "dropped")
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }
}

/// The tools of two fake upstreams named alpha and beta, on the aggregated endpoint.
const ALPHA_BETA_TOOLS: [&str; 6] = [
    "alpha_ask",
    "alpha_echo",
    "alpha_slow",
    "beta_ask",
    "beta_echo",
    "beta_slow",
];

/// An integration named Server whose calls carry the server token `srv-secret`: its slug.
async fn server_token_integration(w: &World, up: &FakeUpstream) -> String {
    let server = json!({"name": "Server", "url": up.url, "authMode": "server_token",
        "serverToken": "srv-secret"});
    w.integration(server).await.1
}

/// An integration named Personal of per-user tokens, with Alice's `alice-personal-token`
/// stored (Bob has none): (id, slug).
async fn personal_integration(w: &World, up: &FakeUpstream) -> (IntegrationId, String) {
    let (id, slug) = w
        .integration(json!({"name": "Personal", "url": up.url, "authMode": "user_token"}))
        .await;
    let token = Secret::new("alice-personal-token");
    let stored =
        w.gw.store
            .put_user_token(w.gw.org, id, w.alice, &token, None);
    stored.await.unwrap();
    (id, slug)
}

/// The JSON answer to a pass-through `method` call of `slug` with `token`.
async fn answer(w: &World, slug: &str, token: &str, id: i64, method: &str) -> Value {
    let resp = w.call(slug, Some(token), rpc(id, method, json!({}))).await;
    resp.json().await.unwrap()
}

/// A pass-through call to a server-token integration reaches the upstream with that token,
/// the client's session id and nothing else of the agent's: not its token, its cookies, its
/// hop-by-hop headers nor any header off the allow-list; the answer comes back whole.
async fn server_token_is_injected_and_agent_headers_stay_behind(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let server = server_token_integration(&w, &up).await;
    let alice = w.token(w.alice).await;
    let resp = w
        .call(&server, Some(&alice), rpc(1, "ping", json!({})))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["mcp-session-id"], SESSION_ID);
    // The relayed body was read to its end: the connection stays open for the next request.
    assert!(
        resp.headers().get("connection").is_none(),
        "{:?}",
        resp.headers()
    );
    let body: Value = resp.json().await.unwrap();
    let seen = &body["result"]["headers"];
    assert_eq!(seen["authorization"], "Bearer srv-secret");
    assert_eq!(seen["mcp-session-id"], "client-held-session");
    for gone in ["cookie", "x-hop", "x-custom"] {
        assert!(seen.get(gone).is_none(), "{gone} was forwarded: {seen}");
    }
    assert!(
        !body.to_string().contains(&alice),
        "the agent's token reached the upstream"
    );
    assert_eq!(body["id"], 1);
    w.gw.stop().await;
}

/// The 2026-07-28 routing headers reach the upstream as the client sent them, the base64
/// sentinel of a non-ASCII `Mcp-Name` included.
async fn routing_headers_of_2026_pass_untouched(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let server = server_token_integration(&w, &up).await;
    let alice = w.token(w.alice).await;
    let routed = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "=?base64?w6ljaGVj?="),
        ("mcp-param-region", "us-west1"),
    ];
    let mut req =
        w.gw.http
            .post(format!("{}/{server}", w.app_url))
            .bearer_auth(&alice)
            .json(&rpc(10, "tools/call", json!({"name": "échec"})));
    for (k, v) in routed {
        req = req.header(k, v);
    }
    let body: Value = req.send().await.unwrap().json().await.unwrap();
    for (k, v) in routed {
        assert_eq!(body["result"]["headers"][k], v, "{k}: {body}");
    }
    w.gw.stop().await;
}

/// A user-token integration carries the calling user's own token.
async fn user_token_is_each_users_own(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (_, personal) = personal_integration(&w, &up).await;
    let alice = w.token(w.alice).await;
    let body = answer(&w, &personal, &alice, 2, "ping").await;
    assert_eq!(
        body["result"]["headers"]["authorization"],
        "Bearer alice-personal-token"
    );
    w.gw.stop().await;
}

/// A user without a token for a user-token integration gets `-32042` with a connect link
/// for that integration, and never another user's token.
async fn user_without_a_token_is_asked_to_connect(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (personal_id, personal) = personal_integration(&w, &up).await;
    let bob = w.token(w.bob).await;
    let body = answer(&w, &personal, &bob, 3, "tools/list").await;
    assert_eq!(body["id"], 3);
    assert_eq!(body["error"]["code"], -32042, "{body}");
    let connect = body["error"]["data"]["connectUrl"].as_str().unwrap();
    assert!(
        connect.starts_with(&format!("{}/oauth/connect?session=", w.gw.url)),
        "{connect}"
    );
    assert_eq!(
        body["error"]["data"]["integrationId"],
        personal_id.to_string()
    );
    assert_eq!(body["error"]["data"]["elicitations"][0]["mode"], "url");
    assert!(!body.to_string().contains("alice-personal-token"));
    w.gw.stop().await;
}

/// An integration without authentication gets no `Authorization` header at all.
async fn integration_without_auth_gets_no_authorization(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (_, open) = w.integration(json!({"name": "Open", "url": up.url})).await;
    let alice = w.token(w.alice).await;
    let body = answer(&w, &open, &alice, 4, "ping").await;
    assert!(
        body["result"]["headers"].get("authorization").is_none(),
        "{body}"
    );
    w.gw.stop().await;
}

/// An integration's pass-through path takes its id as well as its slug.
async fn integration_answers_by_id_as_by_slug(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (personal_id, _) = personal_integration(&w, &up).await;
    let alice = w.token(w.alice).await;
    let body = answer(&w, &personal_id.to_string(), &alice, 5, "ping").await;
    assert_eq!(
        body["result"]["headers"]["authorization"],
        "Bearer alice-personal-token"
    );
    w.gw.stop().await;
}

/// The gateway keeps integration URLs parsed; an edited URL is where the very next call goes.
async fn an_integrations_new_url_takes_the_next_call(backend: Backend) {
    let w = world(backend).await;
    let (old, new) = (FakeUpstream::start().await, FakeUpstream::start().await);
    let (id, slug) = w.integration(json!({"name": "Up", "url": old.url})).await;
    let alice = w.token(w.alice).await;
    answer(&w, &slug, &alice, 1, "ping").await;
    let path = format!("/integrations/{id}");
    let edit = Some(json!({"url": new.url}));
    let (s, _, b) = w.gw.api(Method::PATCH, &path, &w.admin, edit).await;
    assert_eq!(s, 200, "{b}");
    answer(&w, &slug, &alice, 2, "ping").await;
    assert_eq!((old.count("ping"), new.count("ping")), (1, 1));
    w.gw.stop().await;
}

/// A call without a token is refused with `401` and a challenge naming the integration's
/// protected-resource metadata, and never reaches the upstream.
async fn unauthenticated_call_gets_a_challenge_naming_the_resource(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let server = server_token_integration(&w, &up).await;
    let resp = w.call(&server, None, rpc(6, "ping", json!({}))).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(&format!(
            "/.well-known/oauth-protected-resource/apps/{}/mcp/{server}",
            w.app
        )),
        "{challenge}"
    );
    assert_eq!(up.hits(), Vec::<Value>::new(), "the upstream was reached");
    w.gw.stop().await;
}

/// A token issued for another application's endpoint is refused with `401`, and the call
/// never reaches the upstream.
async fn token_for_another_application_is_refused(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let server = server_token_integration(&w, &up).await;
    let elsewhere = format!("{}/apps/{}/mcp", w.gw.url, ApplicationId::new());
    let elsewhere = w.gw.user_token(w.alice, w.app, &elsewhere).await;
    let resp = w
        .call(&server, Some(&elsewhere), rpc(7, "ping", json!({})))
        .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(up.hits(), Vec::<Value>::new(), "the upstream was reached");
    w.gw.stop().await;
}

/// A token for one pass-through endpoint is refused at another integration's (`401`), while a
/// token for the application's aggregated endpoint opens both.
async fn token_for_one_integration_opens_only_that_one(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let server = server_token_integration(&w, &up).await;
    let (_, open) = w.integration(json!({"name": "Open", "url": up.url})).await;
    let own = format!("{}/{server}", w.app_url);
    let own = w.gw.user_token(w.alice, w.app, &own).await;
    let resp = w.call(&server, Some(&own), rpc(1, "ping", json!({}))).await;
    assert_eq!(resp.status(), 200, "its own endpoint");
    let resp = w.call(&open, Some(&own), rpc(2, "ping", json!({}))).await;
    assert_eq!(resp.status(), 401, "another integration's endpoint");
    let app = w.gw.user_token(w.alice, w.app, &w.app_url).await;
    for slug in [&server, &open] {
        let resp = w.call(slug, Some(&app), rpc(3, "ping", json!({}))).await;
        assert_eq!(resp.status(), 200, "{slug} with the application's token");
    }
    w.gw.stop().await;
}

/// An integration detached from the application, or archived, is no longer reachable
/// through it (`404`).
async fn detached_or_archived_integration_is_unreachable(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (personal_id, personal) = personal_integration(&w, &up).await;
    let (open_id, open) = w.integration(json!({"name": "Open", "url": up.url})).await;
    let alice = w.token(w.alice).await;
    let detach = format!("/applications/{}/integrations/{personal_id}", w.app);
    let (status, _, _) = w.gw.api(Method::DELETE, &detach, &w.admin, None).await;
    assert_eq!(status, 204);
    let resp = w.call(&personal, Some(&alice), rpc(8, "ping", json!({})));
    assert_eq!(resp.await.status(), 404, "detached");
    let archive = format!("/integrations/{open_id}");
    let (status, _, body) = w.gw.api(Method::DELETE, &archive, &w.admin, None).await;
    assert!((200..300).contains(&status), "{status}: {body}");
    let resp = w.call(&open, Some(&alice), rpc(9, "ping", json!({})));
    assert_eq!(resp.await.status(), 404, "archived");
    w.gw.stop().await;
}

/// A proxied call marks the agent session it was made in as connected (it was not before; its
/// `lastActiveAt` is set when its token is issued, so only `connectedAt` tells).
async fn proxied_call_marks_the_agent_session_live(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let server = server_token_integration(&w, &up).await;
    let alice = w.token(w.alice).await;
    let sessions = format!("/applications/{}/sessions", w.app);
    let live = || async {
        let (_, _, sessions) = w.gw.api(Method::GET, &sessions, &w.admin, None).await;
        let items = sessions["items"].as_array().unwrap().clone();
        let live = items
            .iter()
            .any(|s| s["connectedAt"].is_string() && s["lastActiveAt"].is_string());
        (live, sessions)
    };
    let (before, sessions) = live().await;
    assert!(!before, "live before any call: {sessions}");
    let resp = w.call(&server, Some(&alice), rpc(1, "ping", json!({})));
    assert_eq!(resp.await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while let (false, sessions) = live().await {
        let waited = Instant::now() < deadline;
        assert!(waited, "no session marked live: {sessions}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.gw.stop().await;
}

async fn responses_stream_event_by_event(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (_, slug) = w
        .integration(json!({"name": "Stream", "url": up.url}))
        .await;
    let alice = w.token(w.alice).await;
    let resp = w
        .call(
            &slug,
            Some(&alice),
            rpc(1, "tools/call", json!({"name": "slow"})),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let start = Instant::now();
    let mut stream = resp.bytes_stream();
    let mut arrivals = Vec::new();
    let mut buf = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            arrivals.push((start.elapsed(), event));
        }
    }
    assert_eq!(arrivals.len(), 3, "{arrivals:?}");
    // Sent 300 ms apart upstream; relayed as they came, not at the end.
    for pair in arrivals.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(200),
            "events were buffered: {arrivals:?}"
        );
    }
    assert!(arrivals[2].1.contains("\"done\""));

    // A GET stream delivers its first event while staying open.
    let resp =
        w.gw.http
            .get(format!("{}/{slug}", w.app_url))
            .bearer_auth(&alice)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("first event")
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.contains("notifications/message") && !text.contains(&alice),
        "{text}"
    );
    drop(stream); // an open stream would hold graceful shutdown for its full grace period
    w.gw.stop().await;
}

/// A gateway with one pass-through integration named Up over a fake upstream: the upstream,
/// its slug and Alice's token.
async fn plain_passthrough(w: &World) -> (FakeUpstream, String, String) {
    let up = FakeUpstream::start().await;
    let (_, slug) = w.integration(json!({"name": "Up", "url": up.url})).await;
    (up, slug, w.token(w.alice).await)
}

/// Checks that the gateway still answers its health check after bad traffic.
async fn assert_still_up(w: &World) {
    let health = w.gw.http.get(format!("{}/healthz", w.gw.url)).send();
    assert_eq!(health.await.unwrap().status(), 200);
}

/// Upstream reset mid-stream: the client gets what was sent, then a JSON-RPC error that
/// answers its request (a bare cut would leave it waiting), and a clean end.
async fn upstream_reset_mid_stream_ends_with_an_error_for_the_request(backend: Backend) {
    let w = world(backend).await;
    let (_up, slug, alice) = plain_passthrough(&w).await;
    let resp = w
        .call(
            &slug,
            Some(&alice),
            rpc(1, "tools/call", json!({"name": "reset"})),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("progress"));
    let mut rest = String::new();
    while let Some(next) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&next.expect("a clean end")));
    }
    assert!(
        rest.contains("\"id\":1") && rest.contains("\"error\""),
        "a reset upstream must not look like a clean end: {rest}"
    );
    assert_still_up(&w).await;
    w.gw.stop().await;
}

/// An oversized body is refused with `413` and an invalid-request error.
async fn oversized_body_gets_413(backend: Backend) {
    let w = world(backend).await;
    let (_up, slug, alice) = plain_passthrough(&w).await;
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"blob": "a".repeat(5 * 1024 * 1024)}});
    let resp =
        w.gw.http
            .post(format!("{}/{slug}", w.app_url))
            .bearer_auth(&alice)
            .json(&big)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32600);
    assert_still_up(&w).await;
    w.gw.stop().await;
}

/// Malformed JSON is the upstream's to judge, and its 4xx comes back as it was.
async fn malformed_json_gets_the_upstreams_client_error(backend: Backend) {
    let w = world(backend).await;
    let (_up, slug, alice) = plain_passthrough(&w).await;
    let resp =
        w.gw.http
            .post(format!("{}/{slug}", w.app_url))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    assert_still_up(&w).await;
    w.gw.stop().await;
}

/// A pass-through call to an upstream where nothing listens gets `502` and `-32002`.
async fn passthrough_to_a_down_upstream_gets_502(backend: Backend) {
    let w = world(backend).await;
    let (_up, _, alice) = plain_passthrough(&w).await;
    let (_, down) = w
        .integration(json!({"name": "Down", "url": dead_url().await}))
        .await;
    let resp = w.call(&down, Some(&alice), rpc(2, "ping", json!({}))).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], -32002);
    assert_still_up(&w).await;
    w.gw.stop().await;
}

/// The SSRF guard: an internal address that is not allow-listed is never contacted (`502`
/// before any connection attempt could time out), on the second call as on the first (the
/// route cache keeps only URLs the guard passed).
async fn internal_address_off_the_allow_list_is_never_contacted(backend: Backend) {
    let w = world(backend).await;
    let (_up, _, alice) = plain_passthrough(&w).await;
    let (_, internal) = w
        .integration(json!({"name": "Internal", "url": "http://10.255.255.1/mcp"}))
        .await;
    for attempt in 1..=2 {
        let started = Instant::now();
        let resp = w
            .call(&internal, Some(&alice), rpc(3, "ping", json!({})))
            .await;
        assert_eq!(resp.status(), 502, "call {attempt}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "call {attempt} refused before connecting"
        );
    }
    assert_still_up(&w).await;
    w.gw.stop().await;
}

/// A pass-through call to an integration the application does not have gets `404`.
async fn unknown_integration_gets_404(backend: Backend) {
    let w = world(backend).await;
    let (_up, _, alice) = plain_passthrough(&w).await;
    assert_eq!(
        w.call("nope", Some(&alice), rpc(4, "ping", json!({})))
            .await
            .status(),
        404
    );
    assert_still_up(&w).await;
    w.gw.stop().await;
}

/// The chunks of a legacy event stream.
type Events =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A legacy HTTP+SSE integration named Legacy whose calls carry the server token
/// `legacy-srv`: the upstream, the slug, and the two paths its stream opens at (the
/// integration's own and its `/sse`).
async fn legacy_passthrough(w: &World) -> (FakeUpstream, String, [String; 2]) {
    let up = FakeUpstream::start().await;
    let (_, slug) = w.integration(json!({"name": "Legacy", "url": up.sse_url, "authMode": "server_token", "serverToken": "legacy-srv"})).await;
    let paths = [
        format!("{}/{slug}", w.app_url),
        format!("{}/{slug}/sse", w.app_url),
    ];
    (up, slug, paths)
}

/// Reads `stream` until what came of it contains `needle` (5 s for each chunk at most).
async fn read_until_contains(stream: &mut Events, needle: &str) -> String {
    let mut buf = String::new();
    while !buf.contains(needle) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    buf
}

/// Opens the legacy stream at `path`: the stream, and its first event (the `endpoint` one).
async fn open_legacy_stream(w: &World, path: &str, token: &str) -> (Events, String) {
    let resp =
        w.gw.http
            .get(path)
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream: Events = Box::pin(resp.bytes_stream());
    let first = read_until_contains(&mut stream, "\n\n").await;
    (stream, first)
}

/// The `data:` of an `endpoint` event.
fn endpoint_of(event: &str) -> String {
    event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap()
        .to_owned()
}

/// Legacy HTTP+SSE, at either path: the upstream's `endpoint` event is rewritten to the
/// gateway's message endpoint, and the upstream's own endpoint is not exposed.
async fn legacy_sse_endpoint_is_rewritten(backend: Backend) {
    let w = world(backend).await;
    let (_up, slug, paths) = legacy_passthrough(&w).await;
    let alice = w.token(w.alice).await;
    for path in paths {
        let (_stream, buf) = open_legacy_stream(&w, &path, &alice).await;
        let endpoint = endpoint_of(&buf);
        let prefix = format!("{}/{slug}/message?ep=", w.app_url);
        assert!(endpoint.starts_with(&prefix), "{endpoint}");
        assert!(
            !buf.contains("sessionId"),
            "the upstream endpoint is not exposed: {buf}"
        );
    }
    w.gw.stop().await;
}

/// Legacy HTTP+SSE, at either path: messages posted to the announced endpoint are accepted,
/// reach the upstream with the injected credential and not the agent's, and the answers come
/// back on the stream.
async fn legacy_messages_reach_the_upstream_and_answer_on_the_stream(backend: Backend) {
    let w = world(backend).await;
    let (_up, _, paths) = legacy_passthrough(&w).await;
    let alice = w.token(w.alice).await;
    for path in paths {
        let (mut stream, buf) = open_legacy_stream(&w, &path, &alice).await;
        let resp =
            w.gw.http
                .post(endpoint_of(&buf))
                .bearer_auth(&alice)
                .json(&rpc(7, "tools/list", json!({})))
                .send()
                .await
                .unwrap();
        assert_eq!(resp.status(), 202);
        let buf = read_until_contains(&mut stream, "\"id\":7").await;
        assert!(buf.contains("Bearer legacy-srv"), "{buf}");
        assert!(!buf.contains(&alice));
    }
    w.gw.stop().await;
}

/// A forged legacy message endpoint cannot leave the upstream's origin (`400`).
async fn forged_legacy_endpoint_cannot_leave_the_upstreams_origin(backend: Backend) {
    let w = world(backend).await;
    let (_up, slug, _) = legacy_passthrough(&w).await;
    let alice = w.token(w.alice).await;
    let forged = format!("{}/{slug}/message?ep=Ly9ldmlsLmV4YW1wbGUveA", w.app_url); // "//evil.example/x"
    let resp =
        w.gw.http
            .post(&forged)
            .bearer_auth(&alice)
            .json(&rpc(8, "ping", json!({})))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 400);
    w.gw.stop().await;
}

/// `POST /integrations/:id/validate` does an MCP handshake through the guarded client.
async fn validation_performs_a_real_handshake(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let validate = |id: IntegrationId| {
        let w = &w;
        async move {
            let (status, _, v) =
                w.gw.api(
                    Method::POST,
                    &format!("/integrations/{id}/validate"),
                    &w.admin,
                    None,
                )
                .await;
            assert_eq!(status, 200, "{v}");
            (
                v["status"].as_str().unwrap().to_owned(),
                v["message"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    let (streamable, _) = w.integration(json!({"name": "Streamable", "url": up.url, "authMode": "server_token", "serverToken": "t"})).await;
    let (status, message) = validate(streamable).await;
    assert_eq!(status, "valid", "{message}");
    let (legacy, _) = w
        .integration(json!({"name": "Legacy", "url": up.sse_url}))
        .await;
    let (status, message) = validate(legacy).await;
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("valid", "MCP server (legacy HTTP+SSE transport)")
    );
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/mcp", dead.local_addr().unwrap());
    drop(dead);
    let (down, _) = w
        .integration(json!({"name": "Down", "url": dead_url}))
        .await;
    assert_eq!(validate(down).await.0, "invalid");
    let (_, _, i) =
        w.gw.api(
            Method::GET,
            &format!("/integrations/{streamable}"),
            &w.admin,
            None,
        )
        .await;
    assert_eq!(i["integration"]["validationStatus"], "valid");
    assert!(i["integration"]["lastValidatedAt"].is_string());
    w.gw.stop().await;
}

/// The aggregated endpoint's usual company: alpha and beta (fake upstreams) with their server
/// tokens `tok-a` and `tok-b`, Mine (a user-token integration no one has connected) and Down
/// (where nothing listens), all attached.
async fn fan_out(w: &World) -> (FakeUpstream, FakeUpstream) {
    let (a, b) = (
        FakeUpstream::named("alpha").await,
        FakeUpstream::named("beta").await,
    );
    for (name, url, token) in [("Alpha", &a.url, "tok-a"), ("Beta", &b.url, "tok-b")] {
        w.integration(
            json!({"name": name, "url": url, "authMode": "server_token", "serverToken": token}),
        )
        .await;
    }
    w.integration(json!({"name": "Mine", "url": a.url, "authMode": "user_token"}))
        .await;
    w.integration(json!({"name": "Down", "url": dead_url().await}))
        .await;
    (a, b)
}

/// Sends a request and reads its JSON answer.
async fn json_of(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// A 2025 client's `initialize` (with sampling) opens a session as `keygate`, whose sealed id
/// shows nothing of the upstreams' sessions and whose instructions say which upstreams are
/// left out and why (not connected by the user, unavailable); `notifications/initialized` is
/// accepted, and `DELETE` ends the session.
async fn aggregated_session_opens_sealed_and_closes(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = fan_out(&w).await;
    let alice = w.token(w.alice).await;
    let (session, init) = initialize(&w, &alice, json!({"sampling": {}})).await;
    assert!(
        !session.contains(SESSION_ID),
        "upstream session ids are sealed"
    );
    assert_eq!(init["result"]["serverInfo"]["name"], "keygate");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    let notes = init["result"]["instructions"].as_str().unwrap();
    assert!(
        notes.contains("mine: not connected") && notes.contains("down: unavailable"),
        "{notes}"
    );
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let resp = w.aggregated(&alice, Some(&session), &initialized).send();
    assert_eq!(resp.await.unwrap().status(), 202);
    let resp =
        w.gw.http
            .delete(&w.app_url)
            .bearer_auth(&alice)
            .header("mcp-session-id", &session)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    w.gw.stop().await;
}

/// Aggregated lists hold every reachable upstream's tools and prompts under namespaced names
/// (an unconnected or dead upstream is left out without failing them), and a resource is
/// read from the upstream that owns its URI.
async fn aggregated_lists_namespace_every_reachable_upstream(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = fan_out(&w).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let post = |body: Value| w.aggregated(&alice, Some(&session), &body);
    let tools = json_of(post(rpc(2, "tools/list", json!({})))).await;
    assert_eq!(names(&tools["result"]["tools"]), ALPHA_BETA_TOOLS);
    let prompts = json_of(post(rpc(3, "prompts/list", json!({})))).await;
    assert_eq!(prompts["result"]["prompts"].as_array().unwrap().len(), 2);
    let read = json_of(post(rpc(4, "resources/read", json!({"uri": "beta://doc"})))).await;
    assert_eq!(read["result"]["contents"][0]["text"], "the beta document");
    w.gw.stop().await;
}

/// An aggregated call goes, by its name's prefix, to its upstream under the upstream's own
/// name, with that upstream's credential and session; a prefix no upstream has is invalid
/// params.
async fn aggregated_calls_route_by_prefix_with_each_upstreams_credential(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = fan_out(&w).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let post = |body: Value| w.aggregated(&alice, Some(&session), &body);
    for (tool, token) in [
        ("alpha_echo", "Bearer tok-a"),
        ("beta_echo", "Bearer tok-b"),
    ] {
        let call = rpc(5, "tools/call", json!({"name": tool, "arguments": {}}));
        let r = json_of(post(call)).await;
        assert_eq!(r["id"], 5);
        assert_eq!(r["result"]["params"]["name"], "echo", "{r}");
        assert_eq!(r["result"]["headers"]["authorization"], token);
        assert_eq!(r["result"]["headers"]["mcp-session-id"], SESSION_ID);
    }
    let r = json_of(post(rpc(6, "tools/call", json!({"name": "gamma_echo"})))).await;
    assert_eq!(r["error"]["code"], -32602);
    w.gw.stop().await;
}

/// An upstream's request to the client inside a call reaches the client under a namespaced
/// id, and the client's answer is routed back so that the call completes.
async fn aggregated_server_to_client_request_round_trips(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = fan_out(&w).await;
    let alice = w.token(w.alice).await;
    let (session, _) = initialize(&w, &alice, json!({"sampling": {}})).await;
    let post = |body: Value| w.aggregated(&alice, Some(&session), &body).send();
    let resp = post(rpc(7, "tools/call", json!({"name": "beta_ask"})));
    let mut answer = Messages::new(resp.await.unwrap());
    let request = answer
        .until("sampling/createMessage", Duration::from_secs(5))
        .await
        .expect("the upstream's request");
    assert_eq!(request["id"], "beta~5", "{request}");
    let reply = json!({"jsonrpc": "2.0", "id": request["id"], "result": {"role": "assistant",
        "model": "m", "content": {"type": "text", "text": "four"}}});
    assert_eq!(post(reply).await.unwrap().status(), 202);
    let result = loop {
        let message = answer.next(Duration::from_secs(5)).await;
        let message = message.expect("the call's answer");
        if message["id"] == 7 {
            break message;
        }
    };
    assert!(result.to_string().contains("four"), "{result}");
    w.gw.stop().await;
}

/// The aggregated `GET` stream merges both upstreams' streams, each opened with its own
/// credential and never the agent's token.
async fn aggregated_get_stream_merges_upstreams_with_their_own_credentials(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = fan_out(&w).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let resp =
        w.gw.http
            .get(&w.app_url)
            .bearer_auth(&alice)
            .header("mcp-session-id", &session)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = Messages::new(resp);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = stream
            .until("notifications/message", Duration::from_secs(5))
            .await;
        seen.push(event.expect("an upstream's event").to_string());
    }
    let seen = seen.join("\n");
    assert!(
        seen.contains("Bearer tok-a") && seen.contains("Bearer tok-b"),
        "{seen}"
    );
    assert!(
        !seen.contains(&alice),
        "the agent's token reached an upstream"
    );
    w.gw.stop().await;
}

/// An aggregated session is sealed to its user: another user's token with it, like a session
/// id the gateway never issued, gets `404`.
async fn aggregated_session_of_another_user_is_not_found(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = fan_out(&w).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let bob = w.token(w.bob).await;
    let resp =
        w.gw.http
            .post(&w.app_url)
            .bearer_auth(&bob)
            .header("mcp-session-id", &session)
            .json(&rpc(8, "tools/list", json!({})))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 404);
    let list = rpc(9, "tools/list", json!({}));
    let resp = w.aggregated(&alice, Some("garbage"), &list).send().await;
    assert_eq!(resp.unwrap().status(), 404);
    w.gw.stop().await;
}

/// A 2026-07-28 request to the aggregated endpoint from a client that declares sampling.
fn modern(w: &World, token: &str, id: i64, method: &str, params: Value) -> reqwest::RequestBuilder {
    modern_with(w, token, id, method, params, json!({"sampling": {}}))
}

/// Checks that a fake 2026 upstream's echo of a call of its `echo` tool came as a 2026 request
/// on behalf of `client`: the mirrored headers with the upstream's own name, no session, and
/// `_meta`, which it returns.
fn seen_as_2026_echo<'a>(r: &'a Value, client: &str) -> &'a Value {
    let seen = &r["result"]["headers"];
    assert_eq!(seen["mcp-method"], "tools/call", "{r}");
    assert_eq!(seen["mcp-name"], "echo");
    assert_eq!(seen["mcp-protocol-version"], MODERN);
    assert!(seen.get("mcp-session-id").is_none(), "{seen}");
    let meta = &r["result"]["params"]["_meta"];
    assert_eq!(meta["io.modelcontextprotocol/protocolVersion"], MODERN);
    assert_eq!(meta["io.modelcontextprotocol/clientInfo"]["name"], client);
    meta
}

/// `server/discover` tells a 2026 client the versions it may speak (2026-07-28 among them),
/// the tools capability, the gateway's `serverInfo` and every upstream in its instructions.
async fn server_discover_describes_the_aggregate(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = alpha_beta(&w, [true, false]).await;
    let alice = w.token(w.alice).await;
    let (status, discover) = status_json(modern(&w, &alice, 1, "server/discover", json!({}))).await;
    assert_eq!(status, 200, "{discover}");
    let r = &discover["result"];
    assert_eq!(r["resultType"], "complete");
    assert!(
        r["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!(MODERN)),
        "{r}"
    );
    assert!(r["capabilities"]["tools"].is_object(), "{r}");
    assert_eq!(
        r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "keygate"
    );
    let notes = r["instructions"].as_str().unwrap();
    assert!(
        notes.contains("alpha: Alpha") && notes.contains("beta: Beta"),
        "{notes}"
    );
    w.gw.stop().await;
}

/// A 2026 client's sessionless `tools/list` holds both eras' upstreams' tools, namespaced,
/// marked complete and private to the user.
async fn tools_list_for_a_2026_client_is_complete_and_private(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = alpha_beta(&w, [true, false]).await;
    let alice = w.token(w.alice).await;
    let (status, tools) = status_json(modern(&w, &alice, 2, "tools/list", json!({}))).await;
    assert_eq!(status, 200, "{tools}");
    assert_eq!(tools["result"]["resultType"], "complete");
    assert_eq!(tools["result"]["cacheScope"], "private");
    assert_eq!(names(&tools["result"]["tools"]), ALPHA_BETA_TOOLS);
    w.gw.stop().await;
}

/// A 2026 client's call routed to a 2026 upstream carries `_meta` and the mirrored headers
/// (`Mcp-Name` renamed to the upstream's own tool, `Mcp-Param-*` passed on) and no session;
/// that upstream is never sent an `initialize`.
async fn call_to_a_2026_upstream_carries_meta_and_mirrored_headers(backend: Backend) {
    let w = world(backend).await;
    let (alpha, _beta) = alpha_beta(&w, [true, false]).await;
    let alice = w.token(w.alice).await;
    let call = modern(
        &w,
        &alice,
        3,
        "tools/call",
        json!({"name": "alpha_echo", "arguments": {}}),
    )
    .header("mcp-param-region", "us-west1");
    let (status, r) = status_json(call).await;
    assert_eq!(status, 200, "{r}");
    seen_as_2026_echo(&r, "client-2026");
    assert_eq!(r["result"]["headers"]["mcp-param-region"], "us-west1");
    assert_eq!(alpha.count("initialize"), 0);
    assert!(
        alpha
            .requests()
            .iter()
            .all(|q| q["headers"]["mcp-method"] == q["method"]
                && q["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == MODERN),
        "{:?}",
        alpha.requests()
    );
    w.gw.stop().await;
}

/// A 2026 client's calls to a 2025 upstream share one session the gateway opened with one
/// handshake (on the client's behalf, without capabilities it cannot carry across eras) and
/// opens again when the upstream forgets it; the upstream gets no 2026 `_meta`, and the
/// client gets results marked for its era.
async fn calls_to_a_2025_upstream_share_one_gateway_session(backend: Backend) {
    let w = world(backend).await;
    let (_alpha, beta) = alpha_beta(&w, [true, false]).await;
    let alice = w.token(w.alice).await;
    for id in 4..7 {
        let call = modern(&w, &alice, id, "tools/call", json!({"name": "beta_echo"}));
        let (status, r) = status_json(call).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["result"]["params"]["name"], "echo");
        assert_eq!(r["result"]["headers"]["mcp-session-id"], SESSION_ID);
        assert_eq!(
            r["result"]["resultType"], "complete",
            "results are marked for a 2026 client"
        );
        assert!(
            r["result"]["params"].get("_meta").is_none(),
            "no 2026 _meta to a 2025 upstream: {r}"
        );
    }
    let get = modern(&w, &alice, 7, "prompts/get", json!({"name": "beta_hello"}));
    let (_, prompt) = status_json(get).await;
    assert_eq!(prompt["result"]["params"]["name"], "hello", "{prompt}");
    assert_eq!(beta.count("initialize"), 1);
    assert_eq!(beta.count("notifications/initialized"), 1);
    let init = beta
        .requests()
        .into_iter()
        .find(|q| q["method"] == "initialize")
        .unwrap();
    assert_eq!(init["params"]["clientInfo"]["name"], "client-2026");
    assert!(
        init["params"]["capabilities"].get("sampling").is_none(),
        "{init}"
    );
    beta.forget_sessions();
    let call = modern(&w, &alice, 8, "tools/call", json!({"name": "beta_echo"}));
    let (status, r) = status_json(call).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["result"]["headers"]["mcp-session-id"],
        "upstream-session-2"
    );
    assert_eq!(beta.count("initialize"), 2);
    w.gw.stop().await;
}

/// A 2026 client's `resources/read` goes to the upstream owning the URI, its result marked
/// complete; a URI no upstream owns is invalid params.
async fn resources_read_for_a_2026_client_routes_by_uri(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = alpha_beta(&w, [true, false]).await;
    let alice = w.token(w.alice).await;
    let read = |id, uri: &str| modern(&w, &alice, id, "resources/read", json!({"uri": uri}));
    let (_, r) = status_json(read(9, "beta://doc")).await;
    assert_eq!(
        r["result"]["contents"][0]["text"], "the beta document",
        "{r}"
    );
    assert_eq!(r["result"]["resultType"], "complete");
    let (_, missing) = status_json(read(10, "x://y")).await;
    assert_eq!(missing["error"]["code"], -32602, "{missing}");
    w.gw.stop().await;
}

/// Requests the aggregated endpoint cannot serve are refused with the protocol's own status
/// and error: malformed JSON (`-32700`); a request with neither a session nor the 2026
/// version (the client must initialize); and from a 2026 client `ping`, which that era no
/// longer has (`-32601`, with the request's id), an `Mcp-Name` given twice or not matching
/// the body (`-32020`), a request without its `_meta` (`-32602`), a version the gateway does
/// not speak (`-32022`, naming those it does) and a `GET` stream.
async fn aggregated_requests_breaking_the_protocol_get_its_errors(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = alpha_beta(&w, [true, false]).await;
    let alice = w.token(w.alice).await;
    let post = || w.gw.http.post(&w.app_url).bearer_auth(&alice);
    let call = || modern(&w, &alice, 12, "tools/call", json!({"name": "alpha_echo"}));
    let mut wrong_name = call().build().unwrap();
    wrong_name
        .headers_mut()
        .insert("mcp-name", "beta_echo".parse().unwrap());
    let future = json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2099-01-01",
        "io.modelcontextprotocol/clientCapabilities": {}}});
    let cases = [
        (
            "malformed JSON",
            post()
                .header("content-type", "application/json")
                .body("{oops"),
            400,
            Some(-32700),
        ),
        (
            "no session, no 2026 version",
            w.aggregated(&alice, None, &rpc(15, "tools/list", json!({}))),
            400,
            None,
        ),
        (
            "2026 ping",
            modern(&w, &alice, 11, "ping", json!({})),
            404,
            Some(-32601),
        ),
        (
            "Mcp-Name twice",
            call().header("mcp-name", "beta_echo"),
            400,
            Some(-32020),
        ),
        (
            "Mcp-Name not the body's",
            reqwest::RequestBuilder::from_parts(w.gw.http.clone(), wrong_name),
            400,
            Some(-32020),
        ),
        (
            "2026 version without _meta",
            post()
                .header("mcp-protocol-version", MODERN)
                .header("mcp-method", "tools/list")
                .json(&rpc(13, "tools/list", json!({}))),
            400,
            Some(-32602),
        ),
        (
            "unsupported version",
            post()
                .header("mcp-protocol-version", "2099-01-01")
                .header("mcp-method", "tools/list")
                .json(&rpc(14, "tools/list", future)),
            400,
            Some(-32022),
        ),
        (
            "2026 GET stream",
            w.gw.http
                .get(&w.app_url)
                .bearer_auth(&alice)
                .header("mcp-protocol-version", MODERN),
            405,
            None,
        ),
    ];
    for (case, req, status, code) in cases {
        let (got, r) = status_json(req).await;
        assert_eq!(got, status, "{case}: {r}");
        if let Some(code) = code {
            assert_eq!(r["error"]["code"], code, "{case}: {r}");
        }
        match case {
            "2026 ping" => assert_eq!(r["id"], 11, "{case}: {r}"),
            "unsupported version" => assert!(
                r["error"]["data"]["supported"]
                    .as_array()
                    .is_some_and(|v| v.contains(&json!(MODERN))),
                "{case}: {r}"
            ),
            _ => {}
        }
    }
    w.gw.stop().await;
}

/// A 2026 upstream alpha (server token `tok-a`) and a 2025 upstream beta, both attached.
async fn modern_alpha_and_beta(w: &World) -> (FakeUpstream, FakeUpstream) {
    let (alpha, beta) = (
        FakeUpstream::modern("alpha").await,
        FakeUpstream::named("beta").await,
    );
    w.integration(json!({"name": "Alpha", "url": alpha.url, "authMode": "server_token", "serverToken": "tok-a"}))
        .await;
    w.integration(json!({"name": "Beta", "url": beta.url}))
        .await;
    (alpha, beta)
}

/// The `initialize` of a 2025 client named `client-2025` that declares sampling and an
/// experimental capability: its session id and the answer.
async fn client_2025_session(w: &World, token: &str) -> (String, Value) {
    let init = rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18",
        "capabilities": {"sampling": {}, "experimental": {"x": {}}}, "clientInfo": {"name": "client-2025", "version": "1"}}),
    );
    let resp = w.aggregated(token, None, &init).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    (session, resp.json().await.unwrap())
}

/// A 2025 client's session over a 2026 upstream: the gateway discovers the 2026 upstream
/// instead of initializing it, initializes the 2025 one, and names both in its answer.
async fn a_2025_session_discovers_a_2026_upstream_instead_of_initializing_it(backend: Backend) {
    let w = world(backend).await;
    let (alpha, beta) = modern_alpha_and_beta(&w).await;
    let alice = w.token(w.alice).await;
    let (_, init) = client_2025_session(&w, &alice).await;
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    let notes = init["result"]["instructions"].as_str().unwrap();
    assert!(
        notes.contains("alpha: Alpha") && notes.contains("beta: Beta"),
        "{notes}"
    );
    assert_eq!(
        (alpha.count("initialize"), alpha.count("server/discover")),
        (0, 1)
    );
    assert_eq!(beta.count("initialize"), 1);
    w.gw.stop().await;
}

/// `notifications/initialized` of a 2025 client is accepted and reaches its 2025 upstreams
/// only: a 2026 upstream takes no notifications.
async fn initialized_notification_reaches_only_2025_upstreams(backend: Backend) {
    let w = world(backend).await;
    let (alpha, beta) = modern_alpha_and_beta(&w).await;
    let alice = w.token(w.alice).await;
    let (session, _) = client_2025_session(&w, &alice).await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let resp = w.aggregated(&alice, Some(&session), &initialized).send();
    assert_eq!(resp.await.unwrap().status(), 202);
    assert_eq!(
        alpha.count("notifications/initialized"),
        0,
        "a 2026 upstream takes no notifications"
    );
    assert_eq!(beta.count("notifications/initialized"), 1);
    w.gw.stop().await;
}

/// Every request a 2025 session relays to a 2026 upstream carries `_meta` built from the
/// client's `initialize` (kept in the sealed session) and the mirrored headers, with the
/// upstream's credential; lists merge both eras' upstreams.
async fn a_2025_sessions_calls_reach_a_2026_upstream_with_meta_from_its_initialize(
    backend: Backend,
) {
    let w = world(backend).await;
    let _upstreams = modern_alpha_and_beta(&w).await;
    let alice = w.token(w.alice).await;
    let (session, _) = client_2025_session(&w, &alice).await;
    let post = |body: Value| w.aggregated(&alice, Some(&session), &body);
    let (_, tools) = status_json(post(rpc(2, "tools/list", json!({})))).await;
    assert_eq!(
        names(&tools["result"]["tools"]),
        ALPHA_BETA_TOOLS,
        "{tools}"
    );
    let (status, r) = status_json(post(rpc(3, "tools/call", json!({"name": "alpha_echo"})))).await;
    assert_eq!(status, 200, "{r}");
    let meta = seen_as_2026_echo(&r, "client-2025");
    assert_eq!(r["result"]["headers"]["authorization"], "Bearer tok-a");
    assert_eq!(
        meta["io.modelcontextprotocol/clientCapabilities"],
        json!({"experimental": {"x": {}}}),
        "the client's capabilities, without what the gateway cannot carry across eras"
    );
    w.gw.stop().await;
}

/// A JSON-RPC error a 2026 upstream sends with a 400 reaches a 2025 client in a 200.
async fn a_2026_upstreams_error_reaches_a_2025_client_in_a_200(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = modern_alpha_and_beta(&w).await;
    let alice = w.token(w.alice).await;
    let (session, _) = client_2025_session(&w, &alice).await;
    let call = rpc(4, "tools/call", json!({"name": "alpha_invalid"}));
    let (status, r) = status_json(w.aggregated(&alice, Some(&session), &call)).await;
    assert_eq!(
        (status, r["error"]["code"].clone()),
        (200, json!(-32602)),
        "{r}"
    );
    w.gw.stop().await;
}

/// An `initialize` asking for the stateless version gets (and offers its 2025 upstreams) a
/// 2025 one; the 2026 upstream is not initialized.
async fn initialize_for_the_stateless_version_gets_a_2025_one(backend: Backend) {
    let w = world(backend).await;
    let (alpha, beta) = modern_alpha_and_beta(&w).await;
    let alice = w.token(w.alice).await;
    let init = rpc(
        5,
        "initialize",
        json!({"protocolVersion": MODERN, "capabilities": {}}),
    );
    let (_, r) = status_json(w.aggregated(&alice, None, &init)).await;
    assert_eq!(r["result"]["protocolVersion"], "2025-11-25", "{r}");
    let offered = beta
        .requests()
        .into_iter()
        .rfind(|q| q["method"] == "initialize");
    assert_eq!(offered.unwrap()["params"]["protocolVersion"], "2025-11-25");
    assert_eq!(alpha.count("initialize"), 0);
    w.gw.stop().await;
}

/// Alpha and beta attached, a 2025 session of Alice's that has listed tools through both, and
/// then beta forgetting its sessions (it restarted): the upstreams, Alice's token and the
/// session id.
async fn session_beta_forgot(w: &World) -> (FakeUpstream, FakeUpstream, String, String) {
    let (a, b) = (
        FakeUpstream::named("alpha").await,
        FakeUpstream::named("beta").await,
    );
    w.integration(json!({"name": "Alpha", "url": a.url})).await;
    w.integration(json!({"name": "Beta", "url": b.url})).await;
    let alice = w.token(w.alice).await;
    let session = initialized(w, &alice).await;
    let list = rpc(2, "tools/list", json!({}));
    let (status, _) = status_json(w.aggregated(&alice, Some(&session), &list)).await;
    assert_eq!(status, 200);
    b.forget_sessions();
    (a, b, alice, session)
}

/// An upstream that forgets a 2025 client's session: every request that needs it answers
/// `404` with `-32001`, so the client initializes again (the sealed session id cannot change
/// under it) — lists, reads, `logging/setLevel`, notifications, answers to server-to-client
/// requests and routed calls.
async fn requests_needing_a_forgotten_upstream_session_send_the_client_to_initialize(
    backend: Backend,
) {
    let w = world(backend).await;
    let (_a, _b, alice, session) = session_beta_forgot(&w).await;
    let expired = [
        rpc(3, "tools/list", json!({})),
        rpc(4, "prompts/list", json!({})),
        rpc(5, "resources/read", json!({"uri": "alpha://doc"})),
        rpc(6, "logging/setLevel", json!({"level": "info"})),
        rpc(7, "tools/call", json!({"name": "beta_echo"})),
        json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}),
        json!({"jsonrpc": "2.0", "id": "beta~5", "result": {}}),
    ];
    for message in expired {
        let (status, r) = status_json(w.aggregated(&alice, Some(&session), &message)).await;
        assert_eq!(
            (status, r["error"]["code"].clone()),
            (404, json!(-32001)),
            "{message} → {r}"
        );
    }
    w.gw.stop().await;
}

/// The GET stream of a session an upstream forgot is not found (`404`).
async fn get_stream_of_a_forgotten_upstream_session_is_not_found(backend: Backend) {
    let w = world(backend).await;
    let (_a, _b, alice, session) = session_beta_forgot(&w).await;
    let get =
        w.gw.http
            .get(&w.app_url)
            .bearer_auth(&alice)
            .header("mcp-session-id", &session)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
    assert_eq!(get.status(), 404);
    w.gw.stop().await;
}

/// A call routed to an upstream that still knows its session works while another upstream of
/// the same client session has forgotten its own.
async fn a_call_to_an_upstream_that_kept_its_session_still_works(backend: Backend) {
    let w = world(backend).await;
    let (_a, _b, alice, session) = session_beta_forgot(&w).await;
    let call = rpc(8, "tools/call", json!({"name": "alpha_echo"}));
    let (status, r) = status_json(w.aggregated(&alice, Some(&session), &call)).await;
    assert_eq!(status, 200, "{r}");
    w.gw.stop().await;
}

/// After an upstream forgot its session, a new `initialize` opens a new session with it, and
/// calls and lists work again.
async fn a_new_initialize_after_an_upstream_forgot_its_session_works(backend: Backend) {
    let w = world(backend).await;
    let (_a, _b, alice, _) = session_beta_forgot(&w).await;
    let session = initialized(&w, &alice).await;
    let post = |body: Value| w.aggregated(&alice, Some(&session), &body);
    let (status, r) = status_json(post(rpc(9, "tools/call", json!({"name": "beta_echo"})))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["result"]["headers"]["mcp-session-id"],
        "upstream-session-2"
    );
    let (status, tools) = status_json(post(rpc(10, "tools/list", json!({})))).await;
    assert_eq!(status, 200, "{tools}");
    assert_eq!(names(&tools["result"]["tools"]), ALPHA_BETA_TOOLS);
    w.gw.stop().await;
}

/// A client that reconnects with `Last-Event-ID` gets what it missed, once.
async fn last_event_id_resumes_without_loss(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (_, slug) = w
        .integration(json!({"name": "Stream", "url": up.url}))
        .await;
    let alice = w.token(w.alice).await;
    let open = |last: Option<&str>| {
        let mut req =
            w.gw.http
                .get(format!("{}/{slug}", w.app_url))
                .bearer_auth(&alice)
                .header("accept", "text/event-stream");
        if let Some(id) = last {
            req = req.header("last-event-id", id);
        }
        req.send()
    };
    let seqs = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["params"]["seq"].as_u64())
            .collect()
    };
    // Read event 1, then lose the connection.
    let mut stream = open(None).await.unwrap().bytes_stream();
    let mut buf = String::new();
    while seqs(&buf).is_empty() {
        buf.push_str(&String::from_utf8_lossy(
            &tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        ));
    }
    assert_eq!(seqs(&buf), [1]);
    assert!(buf.contains("id: 1"), "event ids pass through: {buf}");
    drop(stream);
    // Reconnect after event 1: events 2 and 3, nothing lost, nothing repeated.
    let mut stream = open(Some("1")).await.unwrap().bytes_stream();
    let mut buf = String::new();
    while seqs(&buf).len() < 2 {
        buf.push_str(&String::from_utf8_lossy(
            &tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        ));
    }
    assert_eq!(seqs(&buf), [2, 3]);
    assert!(
        buf.contains("\"last-event-id\":\"1\""),
        "the upstream saw Last-Event-ID: {buf}"
    );
    drop(stream);
    w.gw.stop().await;
}

/// The aggregated `GET` stream merges two upstreams' streams; its event ids are cursors over
/// both, so a reconnect resumes each upstream after its own last event: nothing lost, nothing
/// repeated.
async fn aggregated_stream_resumes_every_upstream(backend: Backend) {
    let w = world(backend).await;
    let (a, b) = (
        FakeUpstream::named("alpha").await,
        FakeUpstream::named("beta").await,
    );
    for (name, url, token) in [("Alpha", &a.url, "tok-a"), ("Beta", &b.url, "tok-b")] {
        w.integration(
            json!({"name": name, "url": url, "authMode": "server_token", "serverToken": token}),
        )
        .await;
    }
    let alice = w.token(w.alice).await;
    let init = rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}),
    );
    let resp = w.aggregated(&alice, None, &init).send().await.unwrap();
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let open = |last: Option<&str>| {
        let mut req =
            w.gw.http
                .get(&w.app_url)
                .bearer_auth(&alice)
                .header("accept", "text/event-stream")
                .header("mcp-session-id", &session);
        if let Some(id) = last {
            req = req.header("last-event-id", id);
        }
        req.send()
    };
    // (upstream token, seq) of each event received.
    let mut seen: Vec<(String, u64)> = Vec::new();
    // Three events, then the connection is lost.
    let last_id = merged_events(open(None).await.unwrap(), &mut seen, 3).await;
    let before = seen.len();
    merged_events(open(Some(&last_id)).await.unwrap(), &mut seen, 6).await;
    assert!(before < 6, "the reconnect had something to resume");
    seen.sort();
    let want: Vec<(String, u64)> = ["Bearer tok-a", "Bearer tok-b"]
        .iter()
        .flat_map(|t| (1..=3).map(|n| (t.to_string(), n)))
        .collect();
    assert_eq!(seen, want, "each upstream's events 1–3, exactly once");
    w.gw.stop().await;
}

/// Reads the merged stream of fake upstreams until `seen` holds `upto` events, each as (the
/// upstream's `Authorization`, its seq); returns the last event id.
async fn merged_events(
    resp: reqwest::Response,
    seen: &mut Vec<(String, u64)>,
    upto: usize,
) -> String {
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let (mut buf, mut last_id) = (String::new(), String::new());
    while seen.len() < upto {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the next event in time")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let v: Value = serde_json::from_str(data).unwrap();
            let id = event.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
            assert!(
                id.parse::<u64>().is_err(),
                "ids are cursors, not upstream ids: {id}"
            );
            last_id = id.to_owned();
            let token = v["params"]["headers"]["authorization"].as_str().unwrap();
            seen.push((token.to_owned(), v["params"]["seq"].as_u64().unwrap()));
        }
    }
    last_id
}

/// An upstream that never answers gets the client a clean 504 after the header timeout, and
/// the gateway stays up.
async fn hanging_upstream_gets_a_timeout(backend: Backend) {
    let w = world_with(backend, |c| c.proxy.upstream_header_timeout_secs = Some(1)).await;
    let up = FakeUpstream::start().await;
    let (_, slug) = w.integration(json!({"name": "Hangs", "url": up.url})).await;
    let alice = w.token(w.alice).await;
    let started = Instant::now();
    let resp = w
        .call(
            &slug,
            Some(&alice),
            rpc(1, "tools/call", json!({"name": "hang"})),
        )
        .await;
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], -32002);
    assert_eq!(
        w.call(&slug, Some(&alice), rpc(2, "ping", json!({})))
            .await
            .status(),
        200
    );
    w.gw.stop().await;
}

/// Two gateways on one PostgreSQL database: an aggregated session initialized on one
/// continues on the other (its sealed Mcp-Session-Id carries everything needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_session_continues_on_another_replica() {
    let w = world(Backend::Postgres).await;
    let up = FakeUpstream::named("alpha").await;
    w.integration(
        json!({"name": "Alpha", "url": up.url, "authMode": "server_token", "serverToken": "tok-a"}),
    )
    .await;
    let replica = w.gw.replica().await;
    let alice = w.token(w.alice).await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let resp =
        w.gw.http
            .post(&w.app_url)
            .bearer_auth(&alice)
            .json(&init)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let on_replica = format!("{}/apps/{}/mcp", replica.url, w.app);
    let r: Value = replica
        .http
        .post(&on_replica)
        .bearer_auth(&alice)
        .header("mcp-session-id", &session)
        .json(&rpc(2, "tools/call", json!({"name": "alpha_echo"})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["result"]["headers"]["authorization"], "Bearer tok-a",
        "{r}"
    );
    assert_eq!(r["result"]["headers"]["mcp-session-id"], SESSION_ID);
    replica.stop().await;
    w.gw.stop().await;
}

/// A user-token integration named Personal, attached, that no one has connected: (id, slug).
async fn unconnected_integration(w: &World, up: &FakeUpstream) -> (IntegrationId, String) {
    w.integration(json!({"name": "Personal", "url": up.url, "authMode": "user_token"}))
        .await
}

/// The connect link of Bob's `-32042` answer to a call of `slug`.
async fn bobs_connect_link(w: &World, slug: &str) -> String {
    let bob = w.token(w.bob).await;
    let body = answer(w, slug, &bob, 1, "ping").await;
    assert_eq!(body["error"]["code"], -32042, "{body}");
    let link = body["error"]["data"]["connectUrl"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{}/oauth/connect?session=", w.gw.url)),
        "{link}"
    );
    link.to_owned()
}

/// Bob's connect page for `slug`, opened in `browser` (signed in as Bob on the way): the
/// link, and the page's form fields `csrf`, `session` and `integration`.
async fn bobs_connect_form(
    w: &World,
    browser: &reqwest::Client,
    slug: &str,
) -> (String, [String; 3]) {
    let link = bobs_connect_link(w, slug).await;
    let resp = w.open_connect_link(browser, &link, w.bob).await;
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    let fields = ["csrf", "session", "integration"].map(|name| field(&html, name));
    (link, fields)
}

/// Posts the connect form with `token` (`csrf`: whether to send the form's CSRF token).
async fn post_connect_form(
    w: &World,
    browser: &reqwest::Client,
    [csrf, session, integration]: &[String; 3],
    token: &str,
    with_csrf: bool,
) -> reqwest::Response {
    let mut form = vec![
        ("session", session.as_str()),
        ("integration", integration.as_str()),
        ("token", token),
        ("connect", "1"),
    ];
    if with_csrf {
        form.push(("csrf", csrf.as_str()));
    }
    let post = browser.post(format!("{}/oauth/connect", w.gw.url));
    post.form(&form).send().await.unwrap()
}

/// The `-32042` link opens, for the user it was minted for once signed in, a page that asks
/// for a token for that integration and may not be framed.
async fn connect_link_opens_a_token_form_for_its_user(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (personal_id, personal) = unconnected_integration(&w, &up).await;
    let link = bobs_connect_link(&w, &personal).await;
    let resp = w.open_connect_link(&browser(), &link, w.bob).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("name=\"token\"") && html.contains("name=\"connect\""),
        "{html}"
    );
    assert_eq!(field(&html, "integration"), personal_id.to_string());
    w.gw.stop().await;
}

/// The connect form without its CSRF token is refused (`403`).
async fn connect_form_without_csrf_is_forbidden(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (_, personal) = unconnected_integration(&w, &up).await;
    let browser = browser();
    let (_, form) = bobs_connect_form(&w, &browser, &personal).await;
    let resp = post_connect_form(&w, &browser, &form, "bob-token", false).await;
    assert_eq!(resp.status(), 403);
    w.gw.stop().await;
}

/// A token stored on the connect page (and never shown back) is carried by the user's next
/// call.
async fn connected_token_is_carried_by_the_next_call(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (_, personal) = unconnected_integration(&w, &up).await;
    let browser = browser();
    let (_, form) = bobs_connect_form(&w, &browser, &personal).await;
    let resp = post_connect_form(&w, &browser, &form, "bob-token", true).await;
    assert_eq!(resp.status(), 200);
    let after = resp.text().await.unwrap();
    assert!(
        after.contains("connected") && !after.contains("bob-token"),
        "{after}"
    );
    let bob = w.token(w.bob).await;
    let body = answer(&w, &personal, &bob, 2, "ping").await;
    assert_eq!(
        body["result"]["headers"]["authorization"], "Bearer bob-token",
        "{body}"
    );
    w.gw.stop().await;
}

/// A connect link is used up by connecting, and one the gateway never minted is refused
/// (`400` both).
async fn used_or_forged_connect_link_is_refused(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (_, personal) = unconnected_integration(&w, &up).await;
    let browser = browser();
    let (link, form) = bobs_connect_form(&w, &browser, &personal).await;
    let resp = post_connect_form(&w, &browser, &form, "bob-token", true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(browser.get(&link).send().await.unwrap().status(), 400);
    let forged = format!("{}/oauth/connect?session=forged", w.gw.url);
    assert_eq!(browser.get(forged).send().await.unwrap().status(), 400);
    w.gw.stop().await;
}

/// `user`'s token for the `/mcp` runtime endpoints, issued to the application's client.
async fn runtime_token(w: &World, user: UserId) -> String {
    w.gw.user_token(user, w.app, &format!("{}/mcp", w.gw.url))
        .await
}

/// `/mcp/integrations` lists the application's integrations with their auth mode and whether
/// the user has connected them, as `/mcp/integrations/:slug/oauth/connection` says for one;
/// without a token they are refused (`401`).
async fn runtime_endpoints_say_whether_the_user_is_connected(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    let (personal_id, personal) = unconnected_integration(&w, &up).await;
    let token = Secret::new("bob-token");
    let stored =
        w.gw.store
            .put_user_token(w.gw.org, personal_id, w.bob, &token, None);
    stored.await.unwrap();
    let integrations = format!("{}/mcp/integrations", w.gw.url);
    let alice = runtime_token(&w, w.alice).await;
    let list = json_of(w.gw.http.get(&integrations).bearer_auth(&alice)).await;
    let entry = list["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["slug"] == personal.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (entry["authMode"].as_str(), entry["connected"].as_bool()),
        (Some("user_token"), Some(false))
    );
    let bob = runtime_token(&w, w.bob).await;
    let url = format!("{integrations}/{personal}/oauth/connection");
    let status = json_of(w.gw.http.get(url).bearer_auth(&bob)).await;
    assert_eq!(status["connected"], true, "{status}");
    let resp = w.gw.http.get(&integrations).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    w.gw.stop().await;
}

/// `/mcp/connect-session` mints a connect link that expires and opens for its user alone.
async fn runtime_connect_session_opens_for_its_user_alone(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::start().await;
    unconnected_integration(&w, &up).await;
    let alice = runtime_token(&w, w.alice).await;
    let mint = w.gw.http.post(format!("{}/mcp/connect-session", w.gw.url));
    let created = json_of(mint.bearer_auth(&alice)).await;
    assert!(
        created["sessionId"].is_string() && created["expiresAt"].is_string(),
        "{created}"
    );
    let link = created["connectUrl"].as_str().unwrap();
    let resp = w.open_connect_link(&browser(), link, w.bob).await;
    assert_eq!(resp.status(), 403);
    let resp = w.open_connect_link(&browser(), link, w.alice).await;
    assert_eq!(resp.status(), 200);
    w.gw.stop().await;
}

/// A 2025 client's `initialize` on the aggregated endpoint: its session id.
async fn initialized(w: &World, token: &str) -> String {
    initialize(w, token, json!({})).await.0
}

/// How many connect links have been minted.
async fn connect_sessions(w: &World) -> usize {
    w.gw.rows().await["connect_sessions"].len()
}

/// An integration the user has not connected is left out of aggregated lists and calls without
/// a connect link minted each time; the `-32042` answer that is sent mints one, which works.
async fn aggregated_calls_without_connection_mint_no_connect_sessions(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::named("alpha").await;
    w.integration(json!({"name": "Alpha", "url": up.url})).await;
    let (_, mine) = w
        .integration(json!({"name": "Mine", "url": up.url, "authMode": "user_token"}))
        .await;
    let bob = w.token(w.bob).await;
    let session = initialized(&w, &bob).await;
    let minted = connect_sessions(&w).await;
    for id in 1..=10 {
        let post = |body: Value| w.aggregated(&bob, Some(&session), &body);
        let (_, tools) = status_json(post(rpc(id, "tools/list", json!({})))).await;
        assert_eq!(
            names(&tools["result"]["tools"]),
            ["alpha_ask", "alpha_echo", "alpha_slow"]
        );
        let call = rpc(id, "tools/call", json!({"name": "alpha_echo"}));
        let (_, answer) = status_json(post(call)).await;
        assert!(answer["result"].is_object(), "{answer}");
    }
    assert_eq!(
        connect_sessions(&w).await,
        minted,
        "20 calls minted no link"
    );

    let body: Value = w
        .call(&mine, Some(&bob), rpc(1, "ping", json!({})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"]["code"], -32042, "{body}");
    assert_eq!(connect_sessions(&w).await, minted + 1);
    let link = body["error"]["data"]["connectUrl"].as_str().unwrap();
    let resp = w.open_connect_link(&browser(), link, w.bob).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("name=\"token\""));
    w.gw.stop().await;
}

/// Once an aggregated client is warm (initialized, listed, called), its `tools/list` and
/// `tools/call` — in both eras, over upstreams with no, a server's, a connected and an
/// unconnected user's credential — write nothing to the store but trace events.
async fn warm_aggregated_calls_write_nothing(backend: Backend) {
    let w = world(backend).await;
    let (a, b) = (
        FakeUpstream::named("alpha").await,
        FakeUpstream::modern("beta").await,
    );
    w.integration(json!({"name": "Alpha", "url": a.url})).await;
    w.integration(
        json!({"name": "Beta", "url": b.url, "authMode": "server_token", "serverToken": "tok-b"}),
    )
    .await;
    let (personal, _) = w
        .integration(json!({"name": "Personal", "url": a.url, "authMode": "user_token"}))
        .await;
    w.integration(json!({"name": "Mine", "url": b.url, "authMode": "user_token"}))
        .await;
    w.gw.store
        .put_user_token(w.gw.org, personal, w.alice, &Secret::new("alice-key"), None)
        .await
        .unwrap();
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let calls = |id: i64| {
        let list = rpc(id, "tools/list", json!({}));
        let call = rpc(id, "tools/call", json!({"name": "personal_echo"}));
        [
            w.aggregated(&alice, Some(&session), &list),
            w.aggregated(&alice, Some(&session), &call),
            modern(&w, &alice, id, "tools/list", json!({})),
            modern(&w, &alice, id, "tools/call", json!({"name": "beta_echo"})),
        ]
    };
    for req in calls(1) {
        let (status, answer) = status_json(req).await;
        assert_eq!(status, 200, "{answer}");
    }
    // The agent session's activity is recorded at most every 10 s; wait until the first one
    // is in. `last_active_at` is set when the token is issued, so only `connected_at`, which
    // the first MCP activity writes, tells that it has landed.
    let recorded = || async {
        let sessions = w.gw.store.all_agent_sessions(w.gw.org, w.app).await;
        sessions.unwrap().iter().all(|s| s.connected_at.is_some())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !recorded().await {
        assert!(
            Instant::now() < deadline,
            "the session's activity is never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written = || async {
        let mut rows = w.gw.rows().await;
        rows.remove("trace_events");
        rows.remove("trace_contexts");
        rows
    };
    let before = written().await;
    for id in 2..=6 {
        for req in calls(id) {
            let (status, answer) = status_json(req).await;
            assert_eq!(status, 200, "{answer}");
            assert!(answer["result"].is_object(), "{answer}");
        }
    }
    assert_eq!(written().await, before);
    w.gw.stop().await;
}

/// The line ends an upstream may end its SSE lines with.
const LINE_ENDS: [&str; 3] = ["\n", "\r\n", "\r"];

/// An upstream named `split`, attached, that can send its results in two writes cut inside
/// `é` ([`FakeUpstream::split_writes`]).
async fn split_upstream(w: &World) -> (FakeUpstream, String) {
    let up = FakeUpstream::named("split").await;
    let (_, slug) = w.integration(json!({"name": "Split", "url": up.url})).await;
    (up, slug)
}

/// A body as text; it must be UTF-8 (a character broken on the way shows as U+FFFD).
async fn utf8(resp: reqwest::Response) -> String {
    String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap()
}

/// `tools/call` of the fake's echo tool (as `name`) with a multi-byte argument.
fn order(name: &str) -> Value {
    json!({"name": name, "arguments": {"order": "café crème"}})
}

/// A URL where nothing listens.
async fn dead_url() -> String {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}/mcp", dead.local_addr().unwrap())
}

async fn passthrough_keeps_utf8_split_across_writes(backend: Backend) {
    let w = world(backend).await;
    let (up, slug) = split_upstream(&w).await;
    let alice = w.token(w.alice).await;
    for line_end in LINE_ENDS {
        up.split_writes(line_end);
        let list = w.call(&slug, Some(&alice), rpc(1, "tools/list", json!({})));
        let list = utf8(list.await).await;
        assert!(list.contains("\"café crème\""), "{line_end:?}: {list}");
        let call = w.call(&slug, Some(&alice), rpc(2, "tools/call", order("echo")));
        let call = utf8(call.await).await;
        assert!(call.contains("\"café crème\""), "{line_end:?}: {call}");
    }
    w.gw.stop().await;
}

async fn aggregated_tools_list_keeps_utf8_split_across_writes(backend: Backend) {
    let w = world(backend).await;
    let (up, _) = split_upstream(&w).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    for line_end in LINE_ENDS {
        up.split_writes(line_end);
        let list = rpc(1, "tools/list", json!({}));
        let resp = w.aggregated(&alice, Some(&session), &list).send().await;
        let tools: Value = resp.unwrap().json().await.unwrap();
        let menu = tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "split_menu");
        assert_eq!(
            menu.map(|t| &t["description"]),
            Some(&json!("café crème")),
            "{line_end:?}: {tools}"
        );
    }
    w.gw.stop().await;
}

async fn aggregated_tools_call_keeps_utf8_split_across_writes(backend: Backend) {
    let w = world(backend).await;
    let (up, _) = split_upstream(&w).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    for line_end in LINE_ENDS {
        up.split_writes(line_end);
        let call = rpc(2, "tools/call", order("split_echo"));
        let resp = w.aggregated(&alice, Some(&session), &call).send().await;
        let resp = resp.unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let text = utf8(resp).await;
        assert!(text.contains("\"café crème\""), "{line_end:?}: {text}");
    }
    w.gw.stop().await;
}

/// The ids a client may give its requests: numbers and strings, each answered as it was sent.
fn ids() -> [Value; 2] {
    [json!(7), json!("7")]
}

async fn passthrough_upstream_down_answers_with_the_request_id(backend: Backend) {
    let w = world(backend).await;
    let (_, down) = w
        .integration(json!({"name": "Down", "url": dead_url().await}))
        .await;
    let alice = w.token(w.alice).await;
    for id in ids() {
        let ping = json!({"jsonrpc": "2.0", "id": id, "method": "ping"});
        let resp = w.call(&down, Some(&alice), ping).await;
        assert_eq!(resp.status(), 502);
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["error"]["code"], -32002);
        assert_eq!(answer["id"], id, "{answer}");
    }
    w.gw.stop().await;
}

async fn passthrough_unknown_integration_answers_with_the_request_id(backend: Backend) {
    let w = world(backend).await;
    let alice = w.token(w.alice).await;
    for id in ids() {
        let ping = json!({"jsonrpc": "2.0", "id": id, "method": "ping"});
        let resp = w.call("nope", Some(&alice), ping).await;
        assert_eq!(resp.status(), 404);
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["id"], id, "{answer}");
    }
    w.gw.stop().await;
}

async fn aggregated_upstream_down_answers_with_the_request_id(backend: Backend) {
    let w = world(backend).await;
    w.integration(json!({"name": "Down", "url": dead_url().await}))
        .await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    for id in ids() {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": order("down_echo")});
        let resp = w.aggregated(&alice, Some(&session), &call).send().await;
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 502);
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["error"]["code"], -32002);
        assert_eq!(answer["id"], id, "{answer}");
    }
    w.gw.stop().await;
}

async fn aggregated_unknown_tool_answers_with_the_request_id(backend: Backend) {
    let w = world(backend).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    for id in ids() {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": order("nope_echo")});
        let resp = w.aggregated(&alice, Some(&session), &call).send().await;
        let answer: Value = resp.unwrap().json().await.unwrap();
        assert_eq!(answer["error"]["code"], -32602);
        assert_eq!(answer["id"], id, "{answer}");
    }
    w.gw.stop().await;
}

/// The JSON messages of an SSE answer, one at a time.
struct Messages {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Messages {
    fn new(resp: reqwest::Response) -> Self {
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Self {
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next message that comes within `wait`: `None` if the stream ends or none comes.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if let Ok(message) = serde_json::from_str(&data.join("\n")) {
                    return Some(message);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next()).await;
            match chunk {
                Ok(Some(Ok(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next message whose `method` is `method`, skipping others, within `wait`.
    async fn until(&mut self, method: &str, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self.next(left).await?;
            if message["method"] == method {
                return Some(message);
            }
        }
    }
}

/// Two fake upstreams named alpha and beta (`modern`: of the 2026 era), attached.
async fn alpha_beta(w: &World, modern: [bool; 2]) -> (FakeUpstream, FakeUpstream) {
    let mut ups = Vec::new();
    for (name, modern) in [("alpha", modern[0]), ("beta", modern[1])] {
        let up = if modern {
            FakeUpstream::modern(name).await
        } else {
            FakeUpstream::named(name).await
        };
        let title = if name == "alpha" { "Alpha" } else { "Beta" };
        w.integration(json!({"name": title, "url": up.url})).await;
        ups.push(up);
    }
    let beta = ups.pop().unwrap();
    (ups.pop().unwrap(), beta)
}

/// `notifications/cancelled` for request `id`.
fn cancelled(id: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": id, "reason": "no longer needed"}})
}

/// The `notifications/cancelled` an upstream received: their request ids.
fn cancels(up: &FakeUpstream) -> Vec<Value> {
    up.requests()
        .into_iter()
        .filter(|r| r["method"] == "notifications/cancelled")
        .map(|r| r["params"]["requestId"].clone())
        .collect()
}

/// Waits up to `wait` for `check` to hold.
async fn eventually(wait: Duration, check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// A 2025 client cancels a call: the upstream handling it (and no other) gets the
/// notification within a second and ends its answer.
async fn aggregated_cancel_reaches_upstream(backend: Backend) {
    let w = world(backend).await;
    let (alpha, beta) = alpha_beta(&w, [false, false]).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let call = rpc(41, "tools/call", json!({"name": "beta_long"}));
    let resp = w.aggregated(&alice, Some(&session), &call).send().await;
    let mut answer = Messages::new(resp.unwrap());
    assert!(
        answer
            .until("notifications/progress", Duration::from_secs(2))
            .await
            .is_some()
    );
    let cancel = w.aggregated(&alice, Some(&session), &cancelled(json!(41)));
    assert_eq!(cancel.send().await.unwrap().status(), 202);
    assert!(
        eventually(Duration::from_secs(1), || cancels(&beta) == [json!(41)]).await,
        "beta got {:?}",
        cancels(&beta)
    );
    // The upstream stopped: the answer ends without a result.
    while let Some(message) = answer.next(Duration::from_secs(1)).await {
        assert!(message.get("result").is_none(), "{message}");
    }
    assert_eq!(
        cancels(&alpha),
        Vec::<Value>::new(),
        "only to the upstream handling it"
    );
    w.gw.stop().await;
}

/// A 2025 client cancels a call a 2026 upstream handles: the gateway drops the upstream
/// request (that era's cancellation) within a second — whether it has started answering (SSE)
/// or not (a JSON answer still to come) — and sends it no notification.
async fn aggregated_cancel_drops_a_2026_upstream_request(backend: Backend) {
    let w = world(backend).await;
    let (alpha, _beta) = alpha_beta(&w, [true, false]).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let cancel = |id: i64| w.aggregated(&alice, Some(&session), &cancelled(json!(id)));
    let call = rpc(42, "tools/call", json!({"name": "alpha_long"}));
    let resp = w.aggregated(&alice, Some(&session), &call).send().await;
    let mut answer = Messages::new(resp.unwrap());
    assert!(
        answer
            .until("notifications/progress", Duration::from_secs(2))
            .await
            .is_some()
    );
    assert_eq!(cancel(42).send().await.unwrap().status(), 202);
    assert!(
        eventually(Duration::from_secs(1), || alpha.dropped() == [json!(42)]).await,
        "alpha's dropped calls: {:?}",
        alpha.dropped()
    );
    assert_eq!(
        answer.next(Duration::from_secs(1)).await,
        None,
        "the answer ends"
    );

    let call = rpc(43, "tools/call", json!({"name": "alpha_wait"}));
    let waiting = tokio::spawn(w.aggregated(&alice, Some(&session), &call).send());
    assert!(eventually(Duration::from_secs(2), || alpha.count("tools/call") == 2).await);
    assert_eq!(cancel(43).send().await.unwrap().status(), 202);
    let dropped = || alpha.dropped() == [json!(42), json!(43)];
    assert!(
        eventually(Duration::from_secs(1), dropped).await,
        "alpha's dropped calls: {:?}",
        alpha.dropped()
    );
    let answer = tokio::time::timeout(Duration::from_secs(1), waiting).await;
    let answer = answer
        .expect("the call is answered at once")
        .unwrap()
        .unwrap();
    assert_eq!(
        answer.text().await.unwrap(),
        "",
        "a cancelled request gets no answer"
    );
    assert_eq!(alpha.count("notifications/cancelled"), 0);
    w.gw.stop().await;
}

/// A 2026 client cancels by dropping its request: a 2026 upstream's request is dropped, a 2025
/// upstream is sent `notifications/cancelled`, each within a second — whether the upstream has
/// started answering (SSE) or not (a JSON answer still to come).
async fn dropped_2026_request_cancels_the_upstream_call(backend: Backend) {
    let w = world(backend).await;
    let (alpha, beta) = alpha_beta(&w, [true, false]).await;
    let alice = w.token(w.alice).await;
    for (id, tool) in [(43, "alpha_long"), (44, "beta_long")] {
        let resp = modern(&w, &alice, id, "tools/call", json!({"name": tool}));
        let mut answer = Messages::new(resp.send().await.unwrap());
        assert!(
            answer
                .until("notifications/progress", Duration::from_secs(2))
                .await
                .is_some()
        );
        drop(answer);
    }
    for (id, tool) in [(45, "alpha_wait"), (46, "beta_wait")] {
        let call = modern(&w, &alice, id, "tools/call", json!({"name": tool})).send();
        let gave_up = tokio::time::timeout(Duration::from_millis(500), call).await;
        assert!(gave_up.is_err(), "no answer before the client gives up");
    }
    let alpha_stopped = || alpha.dropped() == [json!(43), json!(45)];
    let alpha_stopped = eventually(Duration::from_secs(1), alpha_stopped).await;
    assert!(
        alpha_stopped,
        "alpha's dropped calls: {:?}",
        alpha.dropped()
    );
    let beta_told = || cancels(&beta) == [json!(44), json!(46)];
    assert!(
        eventually(Duration::from_secs(1), beta_told).await,
        "beta got {:?}",
        cancels(&beta)
    );
    w.gw.stop().await;
}

/// A cancellation of a request this replica does not relay (another replica does, or it is
/// over) goes to every 2025 upstream of the session, which ignore ids they do not know.
async fn aggregated_cancel_of_an_unknown_request_reaches_every_upstream(backend: Backend) {
    let w = world(backend).await;
    let (alpha, beta) = alpha_beta(&w, [false, false]).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let cancel = w.aggregated(&alice, Some(&session), &cancelled(json!("elsewhere")));
    assert_eq!(cancel.send().await.unwrap().status(), 202);
    assert_eq!(cancels(&alpha), [json!("elsewhere")]);
    assert_eq!(cancels(&beta), [json!("elsewhere")]);
    w.gw.stop().await;
}

/// The merged `GET` stream of a 2025 session, its first six events (three of each fake) read.
async fn merged_stream_after_replay(w: &World, token: &str, session: &str) -> Messages {
    let resp =
        w.gw.http
            .get(&w.app_url)
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", session)
            .send()
            .await
            .unwrap();
    let mut stream = Messages::new(resp);
    for _ in 0..6 {
        let m = stream
            .until("notifications/message", Duration::from_secs(5))
            .await;
        assert!(m.is_some(), "the upstreams' first events");
    }
    stream
}

/// `resources/subscribe` and `unsubscribe` go to the upstream that owns the URI alone, and
/// its `notifications/resources/updated` reach the client on the merged stream, URI unchanged.
async fn aggregated_subscribe_reaches_the_resource_owner(backend: Backend) {
    let w = world(backend).await;
    let (alpha, beta) = alpha_beta(&w, [false, false]).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let mut stream = merged_stream_after_replay(&w, &alice, &session).await;
    let post = |body: Value| w.aggregated(&alice, Some(&session), &body);
    let (_, r) = status_json(post(rpc(
        5,
        "resources/subscribe",
        json!({"uri": "beta://doc"}),
    )))
    .await;
    assert_eq!(
        (r["id"].clone(), r["result"].clone()),
        (json!(5), json!({})),
        "{r}"
    );
    let updated = stream
        .until("notifications/resources/updated", Duration::from_secs(5))
        .await;
    assert_eq!(updated.unwrap()["params"]["uri"], "beta://doc");
    let (_, r) = status_json(post(rpc(
        6,
        "resources/unsubscribe",
        json!({"uri": "beta://doc"}),
    )))
    .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let seen = |up: &FakeUpstream, method: &str| {
        let requests = up.requests().into_iter();
        requests
            .filter(|q| q["method"] == method)
            .map(|q| q["params"]["uri"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(seen(&beta, "resources/subscribe"), [json!("beta://doc")]);
    assert_eq!(seen(&beta, "resources/unsubscribe"), [json!("beta://doc")]);
    assert_eq!(
        alpha.count("resources/subscribe") + alpha.count("resources/unsubscribe"),
        0
    );
    let (_, r) = status_json(post(rpc(7, "resources/subscribe", json!({"uri": "x://y"})))).await;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(7), json!(-32002)),
        "{r}"
    );
    w.gw.stop().await;
}

/// A URI no upstream can read yet (a client watching for it to appear) belongs to the only
/// upstream there is, as it would directly.
async fn aggregated_subscribe_to_an_unknown_uri_goes_to_the_only_upstream(backend: Backend) {
    let w = world(backend).await;
    let only = FakeUpstream::named("only").await;
    w.integration(json!({"name": "Only", "url": only.url}))
        .await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let body = rpc(5, "resources/subscribe", json!({"uri": "watch://later"}));
    let (_, r) = status_json(w.aggregated(&alice, Some(&session), &body)).await;
    assert_eq!(
        (r["id"].clone(), r["result"].clone()),
        (json!(5), json!({})),
        "{r}"
    );
    assert_eq!(only.count("resources/subscribe"), 1);
    w.gw.stop().await;
}

/// `completion/complete` goes to the upstream its `ref` names: a prompt by its aggregated
/// name (sent under the upstream's own), a resource template by its URI.
async fn aggregated_completion_routes_by_reference(backend: Backend) {
    let w = world(backend).await;
    let (alpha, beta) = alpha_beta(&w, [false, false]).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let post = |body: Value| w.aggregated(&alice, Some(&session), &body);
    let argument = json!({"name": "q", "value": "a"});
    let prompt = json!({"ref": {"type": "ref/prompt", "name": "beta_hello"}, "argument": argument});
    let (_, r) = status_json(post(rpc(1, "completion/complete", prompt))).await;
    assert_eq!(r["result"]["params"]["ref"]["name"], "hello", "{r}");
    let template = json!({"ref": {"type": "ref/resource", "uri": "alpha://items/{id}"},
        "argument": {"name": "id", "value": "1"}});
    let (_, r) = status_json(post(rpc(2, "completion/complete", template))).await;
    assert_eq!(
        r["result"]["params"]["ref"]["uri"], "alpha://items/{id}",
        "{r}"
    );
    assert_eq!(
        (
            alpha.count("completion/complete"),
            beta.count("completion/complete")
        ),
        (1, 1)
    );
    let nowhere =
        json!({"ref": {"type": "ref/prompt", "name": "gamma_hello"}, "argument": argument});
    let (_, r) = status_json(post(rpc(3, "completion/complete", nowhere))).await;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(3), json!(-32602)),
        "{r}"
    );
    w.gw.stop().await;
}

/// List changes of several upstreams at once reach a 2025 client as one notification, which
/// its `initialize` said it would get (`listChanged`).
async fn aggregated_list_changes_are_coalesced(backend: Backend) {
    let w = world(backend).await;
    let (alpha, beta) = alpha_beta(&w, [false, false]).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let mut stream = merged_stream_after_replay(&w, &alice, &session).await;
    let changed = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
    alpha.push(changed.clone());
    beta.push(changed);
    let first = stream.next(Duration::from_secs(1)).await;
    assert_eq!(first.unwrap()["method"], "notifications/tools/list_changed");
    assert_eq!(
        stream.next(Duration::from_millis(600)).await,
        None,
        "one notification"
    );
    w.gw.stop().await;
}

/// `initialize` declares list changes, resource subscriptions and completions when an upstream
/// does; `server/discover` declares no notifications (the gateway offers no
/// `subscriptions/listen`).
async fn aggregated_capabilities_follow_the_upstreams(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = alpha_beta(&w, [true, false]).await;
    let alice = w.token(w.alice).await;
    let init = rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}}),
    );
    let (_, r) = status_json(w.aggregated(&alice, None, &init)).await;
    let caps = &r["result"]["capabilities"];
    assert_eq!(caps["tools"], json!({"listChanged": true}), "{r}");
    assert_eq!(
        caps["resources"],
        json!({"listChanged": true, "subscribe": true})
    );
    assert!(caps["completions"].is_object(), "{caps}");
    let (_, r) = status_json(modern(&w, &alice, 2, "server/discover", json!({}))).await;
    let caps = &r["result"]["capabilities"];
    assert_eq!(
        (caps["tools"].clone(), caps["resources"].clone()),
        (json!({}), json!({})),
        "{caps}"
    );
    w.gw.stop().await;
}

/// A 2025 client's answers from a 2026 upstream carry nothing of 2026: no
/// `io.modelcontextprotocol/*` `_meta` keys (the upstream's `serverInfo`), no `resultType`.
async fn aggregated_answers_carry_no_other_era_fields(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = alpha_beta(&w, [true, false]).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    let post = |body: Value| w.aggregated(&alice, Some(&session), &body);
    for request in [
        rpc(1, "prompts/get", json!({"name": "alpha_hello"})),
        rpc(2, "tools/call", json!({"name": "alpha_echo"})),
        rpc(3, "resources/read", json!({"uri": "alpha://doc"})),
        rpc(
            4,
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "alpha_hello"},
            "argument": {"name": "q", "value": ""}}),
        ),
    ] {
        let (status, r) = status_json(post(request)).await;
        assert_eq!(status, 200, "{r}");
        let result = r["result"].as_object().unwrap();
        assert!(!result.contains_key("resultType"), "{r}");
        let meta = result.get("_meta").and_then(Value::as_object);
        let reserved = meta
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("io.modelcontextprotocol/"));
        assert_eq!(reserved.count(), 0, "{r}");
    }
    w.gw.stop().await;
}

/// Errors the aggregated endpoint makes itself name the request's id, whichever kind it is.
async fn aggregated_gateway_errors_carry_the_request_id(backend: Backend) {
    let w = world(backend).await;
    let _upstreams = alpha_beta(&w, [false, false]).await;
    let alice = w.token(w.alice).await;
    let session = initialized(&w, &alice).await;
    for id in ids() {
        let request = |method: &str, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let refused = [
            w.aggregated(
                &alice,
                Some(&session),
                &request("prompts/get", json!({"name": "nope_x"})),
            ),
            w.aggregated(
                &alice,
                Some(&session),
                &request("resources/read", json!({"uri": "x://y"})),
            ),
            w.aggregated(
                &alice,
                Some(&session),
                &request("resources/subscribe", json!({"uri": "x://y"})),
            ),
            w.aggregated(
                &alice,
                Some(&session),
                &request(
                    "completion/complete",
                    json!({"ref": {"type": "ref/unknown"}}),
                ),
            ),
            w.aggregated(
                &alice,
                Some(&session),
                &request("no/such/method", json!({})),
            ),
            w.aggregated(
                &alice,
                Some("not-a-session"),
                &request("tools/list", json!({})),
            ),
            w.aggregated(&alice, None, &request("tools/list", json!({}))),
            modern(
                &w,
                &alice,
                0,
                "resources/subscribe",
                json!({"uri": "x://y"}),
            )
            .json(&request(
                "resources/subscribe",
                json!({"uri": "x://y", "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MODERN,
                    "io.modelcontextprotocol/clientCapabilities": {}}}),
            )),
        ];
        for req in refused {
            let (status, answer) = status_json(req).await;
            assert!(answer["error"]["code"].is_i64(), "{status}: {answer}");
            assert_eq!(answer["id"], id, "{status}: {answer}");
        }
    }
    w.gw.stop().await;
}
