//! Property-based fuzzing of what a stranger controls: JSON-RPC messages and batches on both
//! MCP routes, `Last-Event-ID` cursors, the management API's query filters and cursors, and
//! SSE framing split at every byte. Each property runs a short round in the suite; for a long
//! run see `keygate_test_support::fuzz` (`KEYGATE_FUZZ_SECS=600`).

use bytes::Bytes;
use futures_util::stream;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use keygate_proxy::aggregate::cursor::Cursor;
use keygate_proxy::aggregate::events::{map_event, relay};
use keygate_proxy::legacy::{EndpointMap, RewriteEndpoint, StreamOwner};
use keygate_test_support::Backend;
use keygate_test_support::fake_upstream::FakeUpstream;
use keygate_test_support::fuzz::{self, json_rpc_body, json_value};
use keygate_test_support::mcp::initialize;
use keygate_test_support::world::{AppClient, McpWorld};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

/// A gateway with one healthy upstream, Alice's token and an open aggregated session, on a
/// runtime the properties block on.
struct Target {
    rt: Runtime,
    w: McpWorld,
    _up: FakeUpstream,
    integration: keygate_core::IntegrationId,
    slug: String,
    token: String,
    session: String,
}

fn target() -> Target {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (w, up, integration, slug, token, session) = rt.block_on(async {
        let w = McpWorld::start(Backend::Sqlite, AppClient::Public, |c| {
            c.api.rate_limit_per_minute = Some(1_000_000);
            // A long run (KEYGATE_FUZZ_SECS) outlives the default management token.
            c.auth.access_token_ttl_secs = Some(86_400);
        })
        .await;
        let up = FakeUpstream::start().await;
        let (integration, slug) = w.integration(json!({"name": "Up", "url": up.url})).await;
        // Alice's token outlives a long run (KEYGATE_FUZZ_SECS), which the default would not.
        let token =
            w.gw.user_token_for(w.alice, w.app, &w.app_url, 86_400)
                .await;
        let (session, _) = initialize(&w, &token, json!({})).await;
        (w, up, integration, slug, token, session)
    });
    Target {
        rt,
        w,
        _up: up,
        integration,
        slug,
        token,
        session,
    }
}

impl Target {
    /// POSTs `body` and checks the gateway's side of the answer: never a 500, and every JSON
    /// error it writes itself is a well-formed JSON-RPC response or API error, carrying the
    /// request's id when the request had one.
    fn post(&self, url: &str, session: Option<&str>, body: Vec<u8>) -> Result<(), TestCaseError> {
        let sent_id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|m| m.get("id").cloned())
            .filter(|id| id.is_number() || id.is_string());
        let (status, text) = self.rt.block_on(async {
            let mut req = self
                .w
                .gw
                .http
                .post(url)
                .bearer_auth(&self.token)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body);
            if let Some(s) = session {
                req = req
                    .header("mcp-session-id", s)
                    .header("mcp-protocol-version", "2025-06-18");
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = match resp.headers().get("content-type") {
                // A stream may stay open (the fake answers some calls slowly): its head is enough.
                Some(ct) if ct.as_bytes().starts_with(b"text/event-stream") => String::new(),
                _ => resp.text().await.unwrap_or_default(),
            };
            (status, text)
        });
        prop_assert!(status != 500, "500 for this body: {text}");
        if let Ok(Value::Object(answer)) = serde_json::from_str::<Value>(&text)
            && answer.contains_key("error")
            && !answer.contains_key("statusCode")
        {
            prop_assert_eq!(answer.get("jsonrpc"), Some(&json!("2.0")), "{}", text);
            prop_assert!(
                answer.contains_key("id"),
                "a JSON-RPC error without id: {}",
                text
            );
            if let Some(sent) = &sent_id {
                prop_assert_eq!(answer.get("id"), Some(sent), "{}", text);
            }
        }
        Ok(())
    }

    fn get(&self, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
        self.rt.block_on(async {
            let mut req = self.w.gw.http.get(url).bearer_auth(&self.token);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let streams = resp
                .headers()
                .get("content-type")
                .is_some_and(|ct| ct.as_bytes().starts_with(b"text/event-stream"));
            let text = if streams {
                String::new()
            } else {
                resp.text().await.unwrap_or_default()
            };
            (status, text)
        })
    }
}

#[test]
fn aggregated_endpoint_survives_arbitrary_json_rpc() {
    let t = target();
    let url = t.w.app_url.clone();
    fuzz::run((json_rpc_body(), any::<bool>()), |(body, in_session)| {
        t.post(&url, in_session.then_some(t.session.as_str()), body)
    });
}

#[test]
fn passthrough_survives_arbitrary_json_rpc() {
    let t = target();
    let url = format!("{}/{}", t.w.app_url, t.slug);
    fuzz::run(json_rpc_body(), |body| t.post(&url, None, body));
}

#[test]
fn last_event_id_never_breaks_the_aggregated_stream() {
    let t = target();
    let strategy = prop_oneof![
        ".{0,64}",
        json_value().prop_map(|v| base64_url(v.to_string().as_bytes())),
        prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| base64_url(&b)),
    ];
    fuzz::run(strategy, |cursor| {
        // Header values must be visible ASCII; reqwest refuses anything else before sending.
        let cursor: String = cursor.chars().filter(|c| c.is_ascii_graphic()).collect();
        let (status, text) = t.get(
            &t.w.app_url,
            &[
                ("accept", "text/event-stream"),
                ("mcp-session-id", &t.session),
                ("mcp-protocol-version", "2025-06-18"),
                ("last-event-id", &cursor),
            ],
        );
        prop_assert!(
            status < 500,
            "{status} for Last-Event-ID {cursor:?}: {text}"
        );
        // The parser itself: garbage is the start of every stream, never a panic.
        let _ = Cursor::parse(Some(&cursor));
        Ok(())
    });
}

#[test]
fn management_filters_and_cursors_get_400_not_500() {
    let t = target();
    let admin = t.w.admin.clone();
    let paths = vec![
        "/traces",
        "/traces/stats",
        "/events",
        "/applications",
        "/integrations",
        "/service-accounts",
        "/applications/access-graph",
    ];
    let keys = vec![
        "limit",
        "cursor",
        "userId",
        "sessionId",
        "agentId",
        "applicationId",
        "startedAfter",
        "startedBefore",
        "period",
        "eventType",
        "status",
        "all",
        "includePolicy",
        "x",
    ];
    let value = prop_oneof![
        ".{0,32}",
        any::<i64>().prop_map(|i| i.to_string()),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| base64_url(&b)),
        Just(uuid::Uuid::new_v4().to_string()),
        Just("2026-01-01T00:00:00Z".to_owned()),
    ];
    let query = prop::collection::vec((prop::sample::select(keys), value), 0..4);
    fuzz::run((prop::sample::select(paths), query), |(path, query)| {
        let (status, body) = t.rt.block_on(async {
            let resp =
                t.w.gw
                    .http
                    .get(format!("{}/api/v1{path}", t.w.gw.url))
                    .bearer_auth(&admin)
                    .query(&query)
                    .send()
                    .await
                    .unwrap();
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        });
        prop_assert!(
            matches!(status, 200 | 400),
            "{status} for {path} {query:?}: {body}"
        );
        if status == 400 {
            let error: Value = serde_json::from_str(&body).unwrap_or_default();
            prop_assert_eq!(&error["error"], "validation_error", "{}", body);
        }
        Ok(())
    });
}

/// Any bytes, cut into chunks at arbitrary points.
fn chunked(max: usize) -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    (
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..max),
            sse_text().prop_map(String::into_bytes),
        ],
        prop::collection::vec(0..max, 0..8),
    )
}

/// Text shaped like an event stream: fields (some with multi-byte characters), comments,
/// blank lines, and every line end (LF, CRLF, CR).
fn sse_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        "data: [ -~]{0,24}".prop_map(|s| s),
        "data: [ -~éü€😀]{0,12}".prop_map(|s| s),
        "id: [ -~]{0,8}".prop_map(|s| s),
        Just("event: endpoint".to_owned()),
        Just("data: /message?sessionId=1".to_owned()),
        Just(r#"data: {"jsonrpc":"2.0","id":1,"result":{}}"#.to_owned()),
        ": [ -~]{0,8}".prop_map(|s| s),
        Just(String::new()),
    ];
    prop::collection::vec(
        (line, prop::sample::select(vec!["\n", "\r\n", "\r"])),
        0..12,
    )
    .prop_map(|lines| lines.into_iter().map(|(l, end)| l + end).collect())
}

fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut at = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        chunks.push(Bytes::copy_from_slice(&bytes[at..cut]));
        at = cut;
    }
    chunks
}

/// Everything a body yields, or the error it ended with.
fn collect<B>(body: B) -> Result<Vec<u8>, String>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(body.collect())
        .map(|c| c.to_bytes().to_vec())
        .map_err(|e| e.to_string())
}

fn body_of(
    chunks: Vec<Bytes>,
) -> impl http_body::Body<Data = Bytes, Error = std::io::Error> + Unpin {
    StreamBody::new(stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Frame::data(c))),
    ))
}

#[test]
fn aggregated_event_rewriting_survives_any_split() {
    fuzz::run(chunked(512), |(bytes, cuts)| {
        let map = |event| map_event(event, |v| json!({"wrapped": v}), |id| format!("c{id}"));
        let never = std::future::pending;
        let whole = collect(relay(
            body_of(vec![Bytes::from(bytes.clone())]),
            never(),
            map,
        ));
        let parts = collect(relay(body_of(split(&bytes, &cuts)), never(), map));
        // How an event is cut on the wire never changes what the client gets: not a cut
        // inside a multi-byte character, nor between the CR and LF of a line end (found by
        // this property when events were split by hand: `data: x\r` | `\n`).
        prop_assert_eq!(whole, parts);
        Ok(())
    });
}

/// The legacy endpoint map of Alice's stream through the target's one integration.
fn endpoint_map(t: &Target) -> EndpointMap {
    EndpointMap {
        upstream: "http://127.0.0.1:9/sse".parse().unwrap(),
        downstream: "http://gw/apps/a/mcp/up".to_owned(),
        owner: owner(t),
        store: t.w.gw.store.clone(),
    }
}

fn owner(t: &Target) -> StreamOwner {
    StreamOwner {
        org: t.w.gw.org,
        app: t.w.app,
        integration: t.integration,
        user: t.w.alice,
    }
}

/// A body with every sealed `ep=` value (fresh nonce each time) replaced by `ep=*`.
fn unsealed(body: Result<Vec<u8>, String>) -> Result<String, String> {
    let text = String::from_utf8_lossy(&body?).into_owned();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("ep=") {
        out.push_str(&rest[..at + 3]);
        out.push('*');
        rest = rest[at + 3..]
            .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    }
    out.push_str(rest);
    Ok(out)
}

#[test]
fn legacy_endpoint_rewriting_survives_any_split() {
    let t = target();
    let map = endpoint_map(&t);
    fuzz::run(chunked(512), |(bytes, cuts)| {
        let whole = collect(RewriteEndpoint::new(
            body_of(vec![Bytes::from(bytes.clone())]),
            map.clone(),
        ));
        let parts = collect(RewriteEndpoint::new(
            body_of(split(&bytes, &cuts)),
            map.clone(),
        ));
        prop_assert_eq!(unsealed(whole), unsealed(parts));
        Ok(())
    });
}

#[test]
fn legacy_message_endpoint_opens_only_what_the_gateway_sealed() {
    let t = target();
    let upstream: url::Url = "http://127.0.0.1:9/sse".parse().unwrap();
    let ep = prop_oneof![
        ".{0,48}",
        ".{0,48}".prop_map(|s| base64_url(s.as_bytes())),
        prop::collection::vec(any::<u8>(), 0..160).prop_map(|b| base64_url(&b)),
    ];
    fuzz::run(ep, |ep| {
        let opened = owner(&t).open(&t.w.gw.store, &upstream, &ep);
        prop_assert!(opened.is_none(), "{ep} opened to {opened:?}");
        Ok(())
    });
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Found by `aggregated_endpoint_survives_arbitrary_json_rpc`: `initialize` with array params
/// panicked the request's task (a mutable JSON index on an array), closing the connection.
#[test]
fn aggregated_non_object_params_get_invalid_request() {
    let t = target();
    for params in [json!([]), json!("x"), json!(1)] {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": params});
        let (status, text) = t.rt.block_on(async {
            let resp =
                t.w.gw
                    .http
                    .post(&t.w.app_url)
                    .bearer_auth(&t.token)
                    .header("accept", "application/json, text/event-stream")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        });
        assert_eq!(status, 400, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["error"]["code"], -32600, "{text}");
    }
}
