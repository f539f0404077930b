//! The legacy HTTP+SSE message route: `…/mcp/{integration}/message?ep=` posts with the
//! integration's credential attached, so `ep` may only name the endpoint this upstream
//! announced on this user's stream of this integration. Anything else is a 400 and nothing
//! reaches the upstream.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::world::{AppClient, McpWorld};
use keygate_test_support::{Backend, both_backends};
use serde_json::{Value, json};

both_backends!(
    legacy_message_refuses_a_forged_endpoint,
    legacy_message_refuses_an_endpoint_of_another_stream,
    legacy_message_reaches_the_announced_endpoint,
);

/// An open legacy SSE stream through the gateway and the message URL it announced.
pub struct LegacyStream {
    pub endpoint: String,
    pub stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
}

impl LegacyStream {
    /// Opens `url` (a pass-through endpoint of a legacy integration) and reads its
    /// `endpoint` event; `extra` headers go along with the GET.
    pub async fn open(w: &McpWorld, url: &str, token: &str, extra: &[(&str, &str)]) -> Self {
        let mut req =
            w.gw.http
                .get(url)
                .bearer_auth(token)
                .header("accept", "text/event-stream");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream().boxed();
        let mut buf = String::new();
        while !buf.contains("\n\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("the endpoint event in time")
                .unwrap()
                .unwrap();
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
        let endpoint = buf
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("an endpoint event")
            .to_owned();
        Self { endpoint, stream }
    }

    /// Reads the stream until it carries the answer to request `id`.
    pub async fn answer(&mut self, id: i64) -> String {
        let mut buf = String::new();
        while !buf.contains(&format!("\"id\":{id}")) {
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.stream.next())
                .await
                .expect("the answer in time")
                .unwrap()
                .unwrap();
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
        buf
    }
}

/// A world with one legacy integration (server token `legacy-srv`): (world, fake, slug).
async fn legacy_world(backend: Backend) -> (McpWorld, FakeUpstream, String) {
    let w = McpWorld::start(backend, AppClient::Public, |_| {}).await;
    let up = FakeUpstream::start().await;
    let (_, slug) = w
        .integration(json!({"name": "Legacy", "url": up.sse_url, "authMode": "server_token", "serverToken": "legacy-srv"}))
        .await;
    (w, up, slug)
}

fn rpc(id: i64, method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}})
}

/// The requests the fake received other than opening its SSE stream.
fn posts(up: &FakeUpstream) -> Vec<Value> {
    up.hits()
        .into_iter()
        .filter(|h| h["path"] != "/sse")
        .collect()
}

async fn post_message(w: &McpWorld, url: &str, token: &str, id: i64) -> u16 {
    w.gw.http
        .post(url)
        .bearer_auth(token)
        .json(&rpc(id, "tools/list"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn legacy_message_refuses_a_forged_endpoint(backend: Backend) {
    let (w, up, slug) = legacy_world(backend).await;
    let alice = w.token(w.alice).await;
    let genuine = LegacyStream::open(&w, &format!("{}/{slug}", w.app_url), &alice, &[]).await;
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let mut tampered = genuine.endpoint.split("ep=").nth(1).unwrap().to_owned();
    let last = if tampered.ends_with('A') { "B" } else { "A" };
    tampered.replace_range(tampered.len() - 1.., last);
    let forged = [
        b64("/admin/delete-all?confirm=yes"),
        b64("/messages?sessionId=legacy-1"),
        b64("/messages/../admin/delete-all"),
        b64("//evil.example/x"),
        b64("http://evil.example/messages?sessionId=legacy-1"),
        b64(&format!("{}?x=1", up.url)),
        "%2Fadmin%2Fdelete-all".to_owned(),
        "not base64!".to_owned(),
        String::new(),
        tampered,
    ];
    for (i, ep) in forged.iter().enumerate() {
        let url = format!("{}/{slug}/message?ep={ep}", w.app_url);
        assert_eq!(post_message(&w, &url, &alice, i as i64).await, 400, "{ep}");
    }
    let url = format!("{}/{slug}/message", w.app_url);
    assert_eq!(post_message(&w, &url, &alice, 99).await, 400);
    assert_eq!(
        posts(&up),
        Vec::<Value>::new(),
        "a forged ep reached the upstream"
    );
    w.gw.stop().await;
}

async fn legacy_message_refuses_an_endpoint_of_another_stream(backend: Backend) {
    let (w, up, slug) = legacy_world(backend).await;
    let (_, other) = w
        .integration(json!({"name": "Other", "url": up.sse_url, "authMode": "server_token", "serverToken": "other-srv"}))
        .await;
    let (alice, bob) = (w.token(w.alice).await, w.token(w.bob).await);
    let alices = LegacyStream::open(&w, &format!("{}/{slug}", w.app_url), &alice, &[]).await;
    let ep = alices.endpoint.split("ep=").nth(1).unwrap();
    // Bob replays Alice's endpoint; Alice moves hers to another integration's route.
    assert_eq!(post_message(&w, &alices.endpoint, &bob, 1).await, 400);
    let moved = format!("{}/{other}/message?ep={ep}", w.app_url);
    assert_eq!(post_message(&w, &moved, &alice, 2).await, 400);
    assert_eq!(
        posts(&up),
        Vec::<Value>::new(),
        "a foreign ep reached the upstream"
    );
    w.gw.stop().await;
}

async fn legacy_message_reaches_the_announced_endpoint(backend: Backend) {
    let (w, up, slug) = legacy_world(backend).await;
    let alice = w.token(w.alice).await;
    let mut s = LegacyStream::open(&w, &format!("{}/{slug}/sse", w.app_url), &alice, &[]).await;
    assert!(!s.endpoint.contains("sessionId"), "{}", s.endpoint);
    assert_eq!(post_message(&w, &s.endpoint, &alice, 7).await, 202);
    let answer = s.answer(7).await;
    assert!(answer.contains("Bearer legacy-srv"), "{answer}");
    let posted = posts(&up);
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["path"], "/messages");
    assert_eq!(posted[0]["query"], "sessionId=legacy-1");
    w.gw.stop().await;
}
