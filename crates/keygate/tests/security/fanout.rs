//! One upstream that stops answering must not stall the aggregated endpoint. Every fan-out
//! gives each upstream `proxy.fanout_timeout_secs` (1 s here) for its whole part — connect,
//! headers and body — and leaves out one that misses it; a routed call never waits for
//! another upstream. The hung upstream is a fake that accepts requests and never answers, or
//! answers with SSE headers and then nothing. No storage is involved: SQLite only.

use std::future::Future;
use std::time::{Duration, Instant};

use keygate_test_support::Backend;
use keygate_test_support::fake_upstream::{FakeUpstream, Stall};
use keygate_test_support::mcp::{initialize, modern, post, rpc, status_json};
use keygate_test_support::world::{AppClient, McpWorld};
use serde_json::{Value, json};

/// The fan-out deadline these tests configure.
const DEADLINE: Duration = Duration::from_secs(1);
/// How long a fan-out may take with one member hung: the deadline plus slack for a busy
/// machine (without the deadline it takes the 60 s header timeout, or forever).
const PROMPT: Duration = Duration::from_millis(3000);

/// A gateway with a 1 s fan-out deadline over two upstreams, alpha and beta.
struct World {
    w: McpWorld,
    alpha: FakeUpstream,
    beta: FakeUpstream,
    token: String,
}

async fn world() -> World {
    let w = McpWorld::start(Backend::Sqlite, AppClient::Public, |c| {
        c.proxy.fanout_timeout_secs = Some(DEADLINE.as_secs());
    })
    .await;
    let (alpha, beta) = (
        FakeUpstream::named("alpha").await,
        FakeUpstream::named("beta").await,
    );
    for (name, up) in [("Alpha", &alpha), ("Beta", &beta)] {
        w.integration(json!({"name": name, "url": up.url})).await;
    }
    let token = w.token(w.alice).await;
    World {
        w,
        alpha,
        beta,
        token,
    }
}

/// Runs `f`, failing the test if it takes longer than `limit`; returns its output.
async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(limit + Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer at all"));
    let took = started.elapsed();
    assert!(took < limit, "{what} took {took:?}");
    out
}

impl World {
    /// A 2025 client's POST, inside `session` once it has one; the status and JSON body.
    async fn post(&self, session: Option<&str>, body: Value) -> (u16, Value) {
        status_json(post(&self.w, &self.token, session, &body)).await
    }

    /// A 2025 `initialize`: the session id and the result.
    async fn initialize(&self) -> (String, Value) {
        let (session, body) = initialize(&self.w, &self.token, json!({})).await;
        (session, body["result"].clone())
    }

    /// A 2026-07-28 request: the status and JSON body.
    async fn modern(&self, id: i64, method: &str, params: Value) -> (u16, Value) {
        status_json(modern(&self.w, &self.token, id, method, params)).await
    }
}

/// The names (or URIs) of a list result's items, sorted.
fn names(result: &Value, key: &str) -> Vec<String> {
    let mut names: Vec<String> = result[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {result}"))
        .iter()
        .map(|t| t["uri"].as_str().or(t["name"].as_str()).unwrap().to_owned())
        .collect();
    names.sort_unstable();
    names
}

async fn initialize_leaves_out(stall: Stall) {
    let w = world().await;
    w.beta.stall(stall);
    let (_, result) = within(PROMPT, "initialize", w.initialize()).await;
    assert!(result["capabilities"]["tools"].is_object(), "{result}");
    let notes = result["instructions"].as_str().unwrap();
    assert!(
        notes.contains("alpha: Alpha") && notes.contains("beta: unavailable"),
        "{notes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_leaves_out_an_upstream_that_never_answers() {
    initialize_leaves_out(Stall::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_leaves_out_an_upstream_that_sends_only_headers() {
    initialize_leaves_out(Stall::AfterHeaders).await;
}

/// `server/discover` probes beta's era and runs the gateway's own handshake with it: both
/// within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_leaves_out_a_hung_upstream() {
    let w = world().await;
    w.beta.stall(Stall::Silent);
    let (status, body) = within(
        PROMPT,
        "server/discover",
        w.modern(1, "server/discover", json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let notes = body["result"]["instructions"].as_str().unwrap();
    assert!(notes.contains("beta: unavailable"), "{notes}");
    assert!(
        body["result"]["capabilities"]["tools"].is_object(),
        "{body}"
    );
}

/// Every list of a session beta joined leaves beta out while it hangs, and has its items
/// again once it answers: a miss is not remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_leave_out_a_hung_upstream_and_ask_it_again() {
    let w = world().await;
    let (session, _) = w.initialize().await;
    let session = Some(session.as_str());
    w.beta.stall(Stall::AfterHeaders);
    for (method, key, alpha_only) in [
        (
            "tools/list",
            "tools",
            vec!["alpha_ask", "alpha_echo", "alpha_slow"],
        ),
        ("prompts/list", "prompts", vec!["alpha_hello"]),
        ("resources/list", "resources", vec!["alpha://doc"]),
    ] {
        let (status, body) =
            within(PROMPT, method, w.post(session, rpc(2, method, json!({})))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(names(&body["result"], key), alpha_only, "{method}");
    }
    let templates = rpc(3, "resources/templates/list", json!({}));
    let (status, _) = within(
        PROMPT,
        "resources/templates/list",
        w.post(session, templates),
    )
    .await;
    assert_eq!(status, 200);
    let read = rpc(4, "resources/read", json!({"uri": "alpha://doc"}));
    let (_, body) = within(PROMPT, "resources/read", w.post(session, read)).await;
    assert_eq!(
        body["result"]["contents"][0]["text"], "the alpha document",
        "{body}"
    );

    w.beta.stall(Stall::No);
    let (_, body) = w.post(session, rpc(5, "tools/list", json!({}))).await;
    let tools = names(&body["result"], "tools");
    assert!(tools.iter().any(|t| t == "beta_echo"), "{tools:?}");
}

/// A 2025 client initialized while beta hung: its session lacks beta, yet once beta answers,
/// beta's tools are listed and its tools can be called within that session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_missed_initialize_rejoins_the_session() {
    let w = world().await;
    w.beta.stall(Stall::Silent);
    let (session, _) = within(PROMPT, "initialize", w.initialize()).await;
    let session = Some(session.as_str());
    let (_, body) = within(
        PROMPT,
        "tools/list",
        w.post(session, rpc(2, "tools/list", json!({}))),
    )
    .await;
    assert_eq!(
        names(&body["result"], "tools"),
        ["alpha_ask", "alpha_echo", "alpha_slow"]
    );
    w.beta.stall(Stall::No);
    let (_, body) = w.post(session, rpc(3, "tools/list", json!({}))).await;
    let tools = names(&body["result"], "tools");
    assert!(tools.iter().any(|t| t == "beta_echo"), "{tools:?}");
    let call = rpc(
        4,
        "tools/call",
        json!({"name": "beta_echo", "arguments": {}}),
    );
    let (status, body) = w.post(session, call).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["method"], "tools/call", "{body}");
}

/// A 2026 client's lists: beta's era probe and handshake miss the deadline while it hangs,
/// and nothing of that is cached; once it answers, its tools are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_upstream_rejoins_a_later_list() {
    let w = world().await;
    w.beta.stall(Stall::Silent);
    let (status, body) = within(PROMPT, "tools/list", w.modern(1, "tools/list", json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        names(&body["result"], "tools"),
        ["alpha_ask", "alpha_echo", "alpha_slow"]
    );
    w.beta.stall(Stall::No);
    let (_, body) = within(PROMPT, "tools/list", w.modern(2, "tools/list", json!({}))).await;
    let tools = names(&body["result"], "tools");
    assert!(tools.iter().any(|t| t == "beta_echo"), "{tools:?}");
}

/// A call routed to alpha answers at once, for both eras, while beta hangs: it never waits
/// for beta (not for its era, its session or its credential).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_healthy_upstream_never_waits_for_a_hung_one() {
    let w = world().await;
    let (session, _) = w.initialize().await;
    w.beta.stall(Stall::Silent);
    let call = rpc(
        2,
        "tools/call",
        json!({"name": "alpha_echo", "arguments": {}}),
    );
    let (status, body) = within(DEADLINE, "2025 call", w.post(Some(&session), call)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["method"], "tools/call", "{body}");
    let params = json!({"name": "alpha_echo", "arguments": {}});
    let (status, body) = within(DEADLINE, "2026 call", w.modern(3, "tools/call", params)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.alpha.count("tools/call"), 2);
}

/// A 2025 client's `GET` stream opens with alpha's events while beta never answers its `GET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merged_stream_opens_without_a_hung_upstream() {
    let w = world().await;
    let (session, _) = w.initialize().await;
    w.beta.stall(Stall::Silent);
    let open = (w.w.gw.http)
        .get(&w.w.app_url)
        .bearer_auth(&w.token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .send();
    let mut resp = within(PROMPT, "GET", open).await.unwrap();
    assert_eq!(resp.status(), 200);
    let first = within(PROMPT, "first event", resp.chunk())
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("\"seq\":1"),
        "{first:?}"
    );
}
