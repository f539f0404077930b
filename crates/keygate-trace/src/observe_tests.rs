//! Unit tests of the observer: how a relayed exchange completes and which status it gets.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, StreamBody};
use keygate_core::model::TraceEvent;
use keygate_core::{ApplicationId, IntegrationId, UserId};
use keygate_store::{EventFilter, Store};
use serde_json::json;

use super::*;
use crate::capture::{Capture, CaptureMode};
use crate::exchange::{Telemetry, Who};
use crate::metrics::Metrics;
use crate::sink::{SinkHandle, TraceSink};
use crate::temp_store;

struct Fixture {
    store: Store,
    org: keygate_core::OrgId,
    telemetry: Arc<Telemetry>,
    handle: SinkHandle,
    _dir: tempfile::TempDir,
}

async fn fixture(mode: CaptureMode) -> Fixture {
    let (store, org, dir) = temp_store().await;
    let (sink, handle) = TraceSink::spawn(store.clone(), 100);
    let telemetry = Arc::new(Telemetry {
        sink,
        capture: Capture::new(mode, &[], 4096),
        metrics: Metrics::new(),
        spans: None,
    });
    Fixture {
        store,
        org,
        telemetry,
        handle,
        _dir: dir,
    }
}

impl Fixture {
    fn exchange(&self) -> Exchange {
        let mut ex = self.telemetry.start("/test", &http::Method::POST, None);
        ex.who = Some(Who {
            org: self.org,
            app: ApplicationId::new(),
            user: Some(UserId::new()),
            agent_session: None,
        });
        ex.integration = Some(IntegrationId::new());
        ex.session = Some("client-session".into());
        ex
    }

    /// Relays `answer` (of `content_type`) to a `tools/call` with id 1, to its end.
    async fn answer_call(&self, answer: &'static str, content_type: &str) {
        let mut ex = self.exchange();
        ex.set_message(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo"}}));
        let body = Full::new(Bytes::from_static(answer.as_bytes()));
        observed(ex, body, content_type).collect().await.unwrap();
    }

    async fn events(self) -> Vec<TraceEvent> {
        self.handle.close().await;
        self.store
            .trace_events_after(self.org, &EventFilter::default(), None, 100)
            .await
            .unwrap()
    }
}

fn headers(content_type: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
    h.insert("mcp-session-id", "sess-1".parse().unwrap());
    h
}

fn observed<B: http_body::Body>(ex: Exchange, body: B, content_type: &str) -> Observed<B> {
    Observed::new(
        body,
        ex,
        http::StatusCode::OK,
        &headers(content_type),
        &http::Extensions::new(),
    )
}

#[tokio::test]
async fn a_streamed_answer_completes_the_exchange_when_it_passes() {
    let f = fixture(CaptureMode::Off).await;
    let mut ex = f.exchange();
    // The request streams upstream through a Peek.
    let request =
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "slow"}});
    let mut peek = Peek::new(Full::new(Bytes::from(request.to_string())), &mut ex);
    while peek.frame().await.is_some() {}
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut body = Box::pin(observed(ex, StreamBody::new(stream), "text/event-stream"));
    let send = |s: &str| Ok(Frame::data(Bytes::from(s.to_owned())));
    tx.send(send(
        "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
    ))
    .await
    .unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(f.telemetry.sink.depth(), 0, "not answered yet");
    // The answer arrives in two frames, with CRLF line ends.
    tx.send(send("id: 2\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,"))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();
    tx.send(send("\"result\":{\"content\":[]}}\r\n\r\n"))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();
    // Completed while the stream is still open.
    assert_eq!(f.telemetry.sink.depth(), 1);
    drop(tx);
    assert!(body.frame().await.is_none());
    drop(body);
    let events = f.events().await;
    assert_eq!(events.len(), 1, "exactly one event");
    let e = &events[0];
    assert_eq!(e.status, "ok");
    assert_eq!(e.event_type, "tools/call");
    assert_eq!(e.tool_name.as_deref(), Some("slow"));
    assert_eq!(e.session_id, "client-session");
    assert_eq!(e.bytes_in, request.to_string().len() as i64);
    assert!(e.bytes_out > 40);
    assert!(e.request_json.is_none(), "capture is off");
}

#[tokio::test]
async fn json_errors_and_tool_errors_get_their_status() {
    let f = fixture(CaptureMode::Redacted).await;
    for (answer, local) in [
        (
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "boom"}}),
            false,
        ),
        (
            json!({"jsonrpc": "2.0", "id": 1, "result": {"isError": true, "content": [{"type": "text", "text": "bad input"}]}}),
            false,
        ),
        (
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "Unknown tool: x"}}),
            true,
        ),
    ] {
        let mut ex = f.exchange();
        ex.set_message(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"password": "hunter2"}}}));
        let mut ext = http::Extensions::new();
        if local {
            ext.insert(LocalAnswer);
        }
        let body = Observed::new(
            Full::new(Bytes::from(answer.to_string())),
            ex,
            http::StatusCode::OK,
            &headers("application/json"),
            &ext,
        );
        body.collect().await.unwrap();
    }
    let events = f.events().await;
    let statuses: Vec<&str> = events.iter().map(|e| &*e.status).collect();
    assert_eq!(statuses, ["error_remote", "warn", "error_proxy"]);
    assert_eq!(events[0].error_message.as_deref(), Some("boom (-32000)"));
    assert_eq!(events[1].error_message.as_deref(), Some("bad input"));
    let request = events[0].request_json.as_ref().unwrap();
    assert_eq!(
        request["params"]["arguments"]["password"],
        crate::capture::MASK
    );
    assert_eq!(
        events[0].response_json.as_ref().unwrap()["error"]["message"],
        "boom"
    );
}

#[tokio::test]
async fn a_client_that_leaves_early_is_a_warning_and_a_stream_without_answer_an_error() {
    let f = fixture(CaptureMode::Off).await;
    let mut ex = f.exchange();
    ex.set_message(
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "hang"}}),
    );
    let stream = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
    drop(observed(ex, StreamBody::new(stream), "text/event-stream"));

    let mut ex = f.exchange();
    ex.set_message(
        &json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "reset"}}),
    );
    let frames =
        futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(
            b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
        )))]);
    observed(ex, StreamBody::new(frames), "text/event-stream")
        .collect()
        .await
        .unwrap();
    let events = f.events().await;
    assert_eq!(events[0].status, "warn");
    assert!(
        events[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("client closed")
    );
    assert_eq!(events[1].status, "error_remote");
    assert_eq!(
        events[1].error_message.as_deref(),
        Some("the stream ended without a response")
    );
}

#[test]
fn plain_answers_are_those_without_a_failure() {
    for plain in [
        r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#,
        r#"  {"id":1,"result":{"isError":false}}"#,
        r#"{"id":1,"result":null}"#,
        r#"{"id":1,"result":"text"}"#,
    ] {
        assert!(plainly_answered(plain.as_bytes()), "{plain}");
    }
    for failed in [
        r#"{"id":1,"error":{"code":-32601,"message":"nope"}}"#,
        r#"{"id":1,"error":null}"#,
        r#"{"id":1,"result":{"isError":true,"content":[]}}"#,
        r#"{"id":1,"result":{"isError":false,"isError":true}}"#,
        r#"["id",1]"#,
        r#"{"id":1,"result":{}"#,
    ] {
        assert!(!plainly_answered(failed.as_bytes()), "{failed}");
    }
}

#[test]
fn only_answers_that_cannot_name_a_failure_skip_the_parse() {
    assert!(names_no_failure(
        br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#
    ));
    for unsure in [
        r#"{"id":1,"error":{"code":-32601,"message":"nope"}}"#,
        r#"{"id":1,"result":{"isError":true}}"#,
        r#"{"id":1,"e\u0072ror":{"code":1,"message":"x"}}"#,
        r#"{"id":1,"result":{"isE\u0072ror":true}}"#,
        r#"{"id":1,"result":{"content":[{"type":"text","text":"no errors"}]}}"#,
    ] {
        assert!(!names_no_failure(unsure.as_bytes()), "{unsure}");
    }
}

#[tokio::test]
async fn failures_spelled_with_escapes_still_count() {
    let f = fixture(CaptureMode::Off).await;
    for answer in [
        r#"{"jsonrpc":"2.0","id":1,"e\u0072ror":{"code":-32000,"message":"boom"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{"isE\u0072ror":true,"content":[]}}"#,
    ] {
        f.answer_call(answer, "application/json").await;
    }
    let events = f.events().await;
    let statuses: Vec<&str> = events.iter().map(|e| &*e.status).collect();
    assert_eq!(statuses, ["error_remote", "warn"]);
}

#[tokio::test]
async fn streamed_failures_get_their_status_and_other_ids_are_passed_over() {
    let f = fixture(CaptureMode::Off).await;
    for events in [
        // Another request's answer first, then this one's error.
        "data: {\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{}}\n\n\
         data: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32000,\"message\":\"boom\"}}\n\n",
        "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"isError\":true,\"content\":[{\"type\":\"text\",\"text\":\"bad input\"}]}}\n\n",
        // A member twice: the outline is unsure, the parsed message (last member wins) decides.
        "data: {\"jsonrpc\":\"2.0\",\"id\":5,\"id\":1,\"error\":{\"code\":-32001,\"message\":\"late\"}}\n\n",
    ] {
        f.answer_call(events, "text/event-stream").await;
    }
    let events = f.events().await;
    let outcomes: Vec<(&str, Option<&str>)> = events
        .iter()
        .map(|e| (&*e.status, e.error_message.as_deref()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("error_remote", Some("boom (-32000)")),
            ("warn", Some("bad input")),
            ("error_remote", Some("late (-32001)")),
        ]
    );
}
