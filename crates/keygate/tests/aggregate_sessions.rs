//! The aggregated endpoint's session lifecycle against fake upstreams: a session its client
//! ended stays ended on every replica, an upstream that restarted and forgot its session
//! (answering `404`, or `400` as server-everything does) sends the client to initialize again
//! rather than answering an empty list or its own error, and upstreams of the legacy HTTP+SSE
//! transport take part like any other. Every body runs on SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::mcp::{initialize, modern, names, post, post_at, rpc, status_json};
use keygate_test_support::world::{AppClient, McpWorld as World};
use keygate_test_support::{Backend, both_backends};
use serde_json::{Value, json};

both_backends!(
    an_ended_session_is_refused_with_404,
    an_ended_session_leaves_new_sessions_working,
    an_upstream_that_forgot_its_session_with_400_sends_the_client_to_initialize,
    an_upstream_that_forgot_its_session_with_404_sends_the_client_to_initialize,
    a_400_in_a_live_upstream_session_keeps_the_session,
    a_session_the_gateway_holds_is_replaced_after_a_400,
    legacy_sse_upstreams_are_listed_and_called,
    legacy_sse_upstreams_serve_2026_clients,
    a_legacy_sse_upstream_that_restarted_is_reopened,
);

async fn world(backend: Backend) -> World {
    World::start(backend, AppClient::Public, |_| {}).await
}

/// Asserts the gateway's "initialize again" answer to the request with `id`.
fn assert_initialize_again(answer: (u16, Value), id: i64) {
    let (status, body) = answer;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], -32001, "{body}");
    assert_eq!(body["id"], id, "{body}");
}

/// `DELETE` of a session: every later request in it — POSTs of every kind, the GET stream, a
/// second DELETE — is answered 404 (with the request's id where it has one).
async fn an_ended_session_is_refused_with_404(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::named("alpha").await;
    w.integration(json!({"name": "Alpha", "url": up.url})).await;
    let alice = w.token(w.alice).await;
    let (session, _) = initialize(&w, &alice, json!({})).await;
    let (status, _) =
        status_json(post(&w, &alice, Some(&session), &rpc(1, "ping", json!({})))).await;
    assert_eq!(status, 200);

    let delete = || {
        w.gw.http
            .delete(&w.app_url)
            .bearer_auth(&alice)
            .header("mcp-session-id", &session)
            .send()
    };
    assert_eq!(delete().await.unwrap().status(), 200);
    for (id, method, params) in [
        (2, "ping", json!({})),
        (3, "tools/list", json!({})),
        (4, "tools/call", json!({"name": "alpha_echo"})),
        (5, "resources/read", json!({"uri": "alpha://doc"})),
    ] {
        let answer = status_json(post(&w, &alice, Some(&session), &rpc(id, method, params))).await;
        assert_initialize_again(answer, id);
    }
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
    assert_eq!(delete().await.unwrap().status(), 404);
    w.gw.stop().await;
}

/// Ending one session ends only that one: another session of the same user, and a new one,
/// keep working.
async fn an_ended_session_leaves_new_sessions_working(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::named("alpha").await;
    w.integration(json!({"name": "Alpha", "url": up.url})).await;
    let alice = w.token(w.alice).await;
    let (ended, _) = initialize(&w, &alice, json!({})).await;
    let (other, _) = initialize(&w, &alice, json!({})).await;
    let resp =
        w.gw.http
            .delete(&w.app_url)
            .bearer_auth(&alice)
            .header("mcp-session-id", &ended)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let (fresh, _) = initialize(&w, &alice, json!({})).await;
    for session in [&other, &fresh] {
        let (status, r) = status_json(post(
            &w,
            &alice,
            Some(session),
            &rpc(1, "tools/list", json!({})),
        ))
        .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            names(&r["result"]["tools"]),
            ["alpha_ask", "alpha_echo", "alpha_slow"]
        );
    }
    w.gw.stop().await;
}

/// Two gateways on one PostgreSQL database: a session ended on one is refused on the other,
/// which had already served it (and remembered that it was live).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_is_refused_on_every_replica() {
    let w = world(Backend::Postgres).await;
    let up = FakeUpstream::named("alpha").await;
    w.integration(json!({"name": "Alpha", "url": up.url})).await;
    let replica = w.gw.replica().await;
    let on_replica = format!("{}/apps/{}/mcp", replica.url, w.app);
    let alice = w.token(w.alice).await;
    let (session, _) = initialize(&w, &alice, json!({})).await;
    let (status, r) = status_json(post_at(
        &w,
        &on_replica,
        &alice,
        Some(&session),
        &rpc(1, "tools/list", json!({})),
    ))
    .await;
    assert_eq!(status, 200, "{r}");

    let resp =
        w.gw.http
            .delete(&w.app_url)
            .bearer_auth(&alice)
            .header("mcp-session-id", &session)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    // The other replica hears of it through the database's notification, within moments.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = status_json(post_at(
            &w,
            &on_replica,
            &alice,
            Some(&session),
            &rpc(2, "ping", json!({})),
        ))
        .await;
        if answer.0 == 404 {
            assert_initialize_again(answer, 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica still serves the ended session: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replica.stop().await;
    w.gw.stop().await;
}

/// Two upstreams, alpha and beta; beta forgets its sessions (it restarted) and answers them
/// `400` (`forgot_with_400`) or `404`. Every request of the client's session that needs beta —
/// a list, a call routed there — is answered `404` + `-32001` with its id, never a list
/// without beta's tools or beta's own error; a new session works.
async fn beta_forgets(backend: Backend, forgot_with_400: bool) {
    let w = world(backend).await;
    let (a, b) = (
        FakeUpstream::named("alpha").await,
        FakeUpstream::named("beta").await,
    );
    w.integration(json!({"name": "Alpha", "url": a.url})).await;
    w.integration(json!({"name": "Beta", "url": b.url})).await;
    let alice = w.token(w.alice).await;
    let (session, _) = initialize(&w, &alice, json!({})).await;
    let list = |id| {
        post(
            &w,
            &alice,
            Some(&session),
            &rpc(id, "tools/list", json!({})),
        )
    };
    let (status, r) = status_json(list(1)).await;
    assert_eq!(
        (status, names(&r["result"]["tools"]).len()),
        (200, 6),
        "{r}"
    );

    if forgot_with_400 {
        b.refuse_unknown_sessions_with_400();
    }
    b.forget_sessions();
    assert_initialize_again(status_json(list(2)).await, 2);
    let call = rpc(3, "tools/call", json!({"name": "beta_echo"}));
    assert_initialize_again(
        status_json(post(&w, &alice, Some(&session), &call)).await,
        3,
    );

    let (fresh, _) = initialize(&w, &alice, json!({})).await;
    let (status, r) = status_json(post(
        &w,
        &alice,
        Some(&fresh),
        &rpc(4, "tools/list", json!({})),
    ))
    .await;
    assert_eq!(
        (status, names(&r["result"]["tools"]).len()),
        (200, 6),
        "{r}"
    );
    w.gw.stop().await;
}

async fn an_upstream_that_forgot_its_session_with_400_sends_the_client_to_initialize(
    backend: Backend,
) {
    beta_forgets(backend, true).await;
}

async fn an_upstream_that_forgot_its_session_with_404_sends_the_client_to_initialize(
    backend: Backend,
) {
    beta_forgets(backend, false).await;
}

/// An upstream's `400` to one request in a session it still knows is its answer to that
/// request, relayed as it is; the session goes on.
async fn a_400_in_a_live_upstream_session_keeps_the_session(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::named("beta").await;
    up.refuse_unknown_sessions_with_400();
    w.integration(json!({"name": "Beta", "url": up.url})).await;
    let alice = w.token(w.alice).await;
    let (session, _) = initialize(&w, &alice, json!({})).await;
    let call = rpc(1, "tools/call", json!({"name": "beta_refuse"}));
    let (status, r) = status_json(post(&w, &alice, Some(&session), &call)).await;
    assert_eq!((status, &r["error"]["code"]), (400, &json!(-32600)), "{r}");
    let (status, r) = status_json(post(
        &w,
        &alice,
        Some(&session),
        &rpc(2, "tools/list", json!({})),
    ))
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        names(&r["result"]["tools"]),
        ["beta_ask", "beta_echo", "beta_slow"]
    );
    w.gw.stop().await;
}

/// For a 2026 client the gateway holds the 2025 upstream's session; when the upstream answers
/// it `400` after a restart, the gateway opens a new one and the call succeeds.
async fn a_session_the_gateway_holds_is_replaced_after_a_400(backend: Backend) {
    let w = world(backend).await;
    let up = FakeUpstream::named("beta").await;
    up.refuse_unknown_sessions_with_400();
    w.integration(json!({"name": "Beta", "url": up.url})).await;
    let alice = w.token(w.alice).await;
    let call = |id| modern(&w, &alice, id, "tools/call", json!({"name": "beta_echo"}));
    let (status, r) = status_json(call(1)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["result"]["headers"]["mcp-session-id"],
        "upstream-session-1"
    );
    up.forget_sessions();
    let (status, r) = status_json(call(2)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["id"], 2);
    assert_eq!(
        r["result"]["headers"]["mcp-session-id"],
        "upstream-session-2"
    );
    w.gw.stop().await;
}

/// An upstream of the legacy HTTP+SSE transport (2024-11-05) next to a Streamable HTTP one: a
/// 2025 client's `initialize` names it available, its tools are listed with its prefix, and a
/// call reaches it with its credential and comes back with the client's id.
async fn legacy_sse_upstreams_are_listed_and_called(backend: Backend) {
    let w = world(backend).await;
    let (old, alpha) = (
        FakeUpstream::named("old").await,
        FakeUpstream::named("alpha").await,
    );
    w.integration(json!({"name": "Old", "url": old.sse_url, "authMode": "server_token", "serverToken": "old-srv"}))
        .await;
    w.integration(json!({"name": "Alpha", "url": alpha.url}))
        .await;
    let alice = w.token(w.alice).await;
    let (session, init) = initialize(&w, &alice, json!({})).await;
    let instructions = init["result"]["instructions"].as_str().unwrap();
    assert!(instructions.contains("old: Old"), "{instructions}");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );

    let (status, r) = status_json(post(
        &w,
        &alice,
        Some(&session),
        &rpc(1, "tools/list", json!({})),
    ))
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        names(&r["result"]["tools"]),
        [
            "alpha_ask",
            "alpha_echo",
            "alpha_slow",
            "old_ask",
            "old_echo",
            "old_slow"
        ]
    );
    let call = rpc(
        2,
        "tools/call",
        json!({"name": "old_echo", "arguments": {"x": 1}}),
    );
    let (status, r) = status_json(post(&w, &alice, Some(&session), &call)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["id"], 2, "{r}");
    assert_eq!(r["result"]["params"]["name"], "echo", "{r}");
    assert_eq!(
        r["result"]["headers"]["authorization"], "Bearer old-srv",
        "{r}"
    );
    w.gw.stop().await;
}

/// A 2026 client reaches an HTTP+SSE upstream too: its tools listed, a call answered as a
/// 2026 result (`resultType`), without the 2026 `_meta` reaching the upstream.
async fn legacy_sse_upstreams_serve_2026_clients(backend: Backend) {
    let w = world(backend).await;
    let old = FakeUpstream::named("old").await;
    w.integration(json!({"name": "Old", "url": old.sse_url}))
        .await;
    let alice = w.token(w.alice).await;
    let (status, r) = status_json(modern(&w, &alice, 1, "tools/list", json!({}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        names(&r["result"]["tools"]),
        ["old_ask", "old_echo", "old_slow"]
    );
    let (status, r) = status_json(modern(
        &w,
        &alice,
        2,
        "tools/call",
        json!({"name": "old_echo"}),
    ))
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["id"], 2, "{r}");
    assert_eq!(r["result"]["resultType"], "complete", "{r}");
    assert!(r["result"]["params"].get("_meta").is_none(), "{r}");
    w.gw.stop().await;
}

/// The stream the gateway holds with an HTTP+SSE upstream ends (the upstream restarted): the
/// next request opens a new one, and the tools are listed as before.
async fn a_legacy_sse_upstream_that_restarted_is_reopened(backend: Backend) {
    let w = world(backend).await;
    let old = FakeUpstream::named("old").await;
    w.integration(json!({"name": "Old", "url": old.sse_url}))
        .await;
    let alice = w.token(w.alice).await;
    let (session, _) = initialize(&w, &alice, json!({})).await;
    let list = |id| {
        post(
            &w,
            &alice,
            Some(&session),
            &rpc(id, "tools/list", json!({})),
        )
    };
    let (_, r) = status_json(list(1)).await;
    assert_eq!(names(&r["result"]["tools"]).len(), 3, "{r}");
    let streams = || old.hits().iter().filter(|h| h["path"] == "/sse").count();
    let opened = streams();
    old.end_legacy_streams();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, r) = status_json(list(2)).await;
        assert_eq!(status, 200, "{r}");
        if names(&r["result"]["tools"]).len() == 3 && streams() > opened {
            break;
        }
        assert!(Instant::now() < deadline, "no new stream was opened: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.gw.stop().await;
}
