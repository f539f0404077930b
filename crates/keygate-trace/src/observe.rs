//! Bodies that watch an exchange go by without holding it up.
//!
//! - [`Peek`] wraps a request body that streams upstream: it counts the bytes and keeps a
//!   bounded prefix (enough for a JSON-RPC request's method, id and tool name).
//! - [`Observed`] wraps the response relayed to the client: it counts the bytes and reads the
//!   JSON-RPC answer — a JSON body's end, or in an SSE stream (decoded by
//!   `keygate_core::wire::sse`) the event that answers the request's id — then completes the
//!   exchange. Frames pass on the moment they arrive; the only copy is of (bounded) bytes it
//!   inspects.
//! - [`read_unsent`] reads the rest of a request body that never went upstream, as a [`Peek`]
//!   would have, so that the gateway's own answer can name the request's id.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use keygate_core::wire::jsonrpc::MessageOutline;
use keygate_core::wire::sse::{Decoder, Event};
use serde_json::Value;

use crate::exchange::{Exchange, LocalAnswer, Status};
use crate::metrics::StreamGuard;

/// Most bytes of a request or a JSON response kept for inspection (payload capture may ask
/// for more, up to [`MAX_INSPECT_CAP`]).
pub const MAX_INSPECT: usize = 64 * 1024;
pub const MAX_INSPECT_CAP: usize = 1024 * 1024;

/// What a [`Peek`] saw.
#[derive(Debug, Default)]
pub struct PeekBuf {
    pub bytes: Vec<u8>,
    pub total: u64,
}

impl PeekBuf {
    /// Whether `bytes` holds everything seen so far (nothing was left out for size). The
    /// sender stops polling a body that says it has ended, so its end may never be seen;
    /// a JSON document that parses is complete.
    pub fn complete(&self) -> bool {
        self.total > 0 && self.bytes.len() as u64 == self.total
    }
}

/// What a [`Peek`] has seen, readable while its body streams on.
#[derive(Clone)]
pub struct PeekHandle(Arc<Mutex<PeekBuf>>);

impl PeekHandle {
    /// The request's JSON-RPC id, once its whole body has gone by (and was small enough to
    /// keep).
    pub fn request_id(&self) -> Option<Value> {
        let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.complete() {
            return None;
        }
        MessageOutline::read(&seen.bytes)?.id
    }
}

/// A request body that streams on unchanged while its first bytes are kept.
pub struct Peek<B> {
    inner: B,
    seen: Arc<Mutex<PeekBuf>>,
    limit: usize,
}

impl<B> Peek<B> {
    /// Wraps `inner`; `exchange` reads what it saw when it completes.
    pub fn new(inner: B, exchange: &mut Exchange) -> Self {
        let seen = Arc::new(Mutex::new(PeekBuf::default()));
        exchange.set_peek(seen.clone());
        Self {
            inner,
            seen,
            limit: inspect_limit(exchange),
        }
    }
}

impl<B> Peek<B> {
    /// A handle on what this body has seen so far.
    pub fn handle(&self) -> PeekHandle {
        PeekHandle(self.seen.clone())
    }
}

/// How long [`read_unsent`] waits for the rest of a body.
const UNSENT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads what is left of a request body that never went upstream (the gateway answers the
/// request itself) into what the exchange saw of it, as a [`Peek`] would have: at most the
/// inspection limit, for at most 2 s. The request's id is then known, if the body is a whole
/// JSON-RPC message within that limit. Nothing is read when the handler already read the
/// message.
pub async fn read_unsent<B>(exchange: &mut Exchange, body: B)
where
    B: Body<Data = Bytes>,
{
    if exchange.method.is_some() || exchange.rpc_id.is_some() {
        return;
    }
    let limit = inspect_limit(exchange);
    let seen = exchange.peek_or_new();
    let mut body = std::pin::pin!(body);
    let read = async {
        while let Some(Ok(frame)) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.total += data.len() as u64;
            if seen.bytes.len() + data.len() > limit {
                return; // too large to name its id
            }
            seen.bytes.extend_from_slice(data);
        }
    };
    let _ = tokio::time::timeout(UNSENT_WAIT, read).await;
}

fn inspect_limit(exchange: &Exchange) -> usize {
    let capture = exchange.capture();
    if capture.is_on() {
        capture.max_bytes.clamp(MAX_INSPECT, MAX_INSPECT_CAP)
    } else {
        MAX_INSPECT
    }
}

impl<B> Body for Peek<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
        {
            let mut seen = this.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.total += data.len() as u64;
            if seen.bytes.len() + data.len() <= this.limit {
                seen.bytes.extend_from_slice(data);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A relayed response that completes its exchange once the answer has gone by.
pub struct Observed<B> {
    inner: B,
    exchange: Option<Exchange>,
    kind: Kind,
    local: bool,
    limit: usize,
    _stream: Option<StreamGuard>,
}

enum Kind {
    /// A JSON body: its first bytes, parsed at the end.
    Json(Vec<u8>),
    /// An event stream, decoded up to the inspection limit per event.
    Sse(Decoder),
    /// Anything else (an empty 202, an error page): only counted.
    Other,
}

impl<B: Body> Observed<B> {
    /// Wraps a response body; `status` and `headers` are the response's.
    pub fn new(
        inner: B,
        mut exchange: Exchange,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Self {
        exchange.set_http_status(status.as_u16());
        exchange.response_session = headers
            .get(crate::exchange::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let limit = inspect_limit(&exchange);
        let (kind, stream) = if content_type.starts_with("text/event-stream") {
            (
                Kind::Sse(Decoder::new(limit)),
                Some(exchange.metrics().stream_opened()),
            )
        } else if content_type.starts_with("application/json") {
            (Kind::Json(Vec::new()), None)
        } else {
            (Kind::Other, None)
        };
        let mut observed = Self {
            limit,
            exchange: Some(exchange),
            kind,
            local: extensions.get::<LocalAnswer>().is_some(),
            _stream: stream,
            inner,
        };
        if observed.inner.is_end_stream() {
            // An empty body may never be polled.
            observed.end();
        }
        observed
    }
}

impl<B> Observed<B> {
    fn on_data(&mut self, data: &Bytes) {
        let limit = self.limit;
        let Some(exchange) = self.exchange.as_mut() else {
            return;
        };
        exchange.bytes_out += data.len() as u64;
        let mut events = Vec::new();
        let mut too_large = false;
        match &mut self.kind {
            Kind::Json(buf) => {
                if buf.len() + data.len() <= limit {
                    buf.extend_from_slice(data);
                } else {
                    too_large = true;
                }
            }
            Kind::Sse(decoder) => {
                let mut rest = &data[..];
                while let Some(decoded) = decoder.next_event(&mut rest) {
                    // An event too large to inspect is skipped.
                    events.extend(decoded.ok());
                }
            }
            Kind::Other => {}
        }
        if too_large {
            self.kind = Kind::Other;
        }
        for event in events {
            if self.answers(&event) {
                self.complete();
                return;
            }
        }
    }

    /// Whether this SSE event is the response to the exchange's request. The event is read in
    /// outline, and parsed whole only when the exchange takes something from it (a failure to
    /// record, a payload to capture).
    fn answers(&mut self, event: &Event) -> bool {
        let Some(exchange) = self.exchange.as_mut() else {
            return false;
        };
        let Some(data) = &event.data else {
            return false;
        };
        if !data.contains("\"id\"") {
            return false; // a notification: no need to parse it
        }
        let Some(outline) = MessageOutline::read(data.as_bytes()) else {
            return false;
        };
        if !outline.answers() {
            return false;
        }
        exchange.resolve_request();
        if exchange.rpc_id.is_some() && outline.id != exchange.rpc_id {
            return false;
        }
        if (outline.failed() || exchange.capture().is_on())
            && let Ok(message) = serde_json::from_str::<Value>(data)
        {
            exchange.set_response(&message, self.local);
        }
        true
    }

    fn end(&mut self) {
        let local = self.local;
        let Some(exchange) = self.exchange.as_mut() else {
            return;
        };
        match std::mem::replace(&mut self.kind, Kind::Other) {
            Kind::Json(buf) => {
                if !exchange.capture().is_on() && (names_no_failure(&buf) || plainly_answered(&buf))
                {
                    // Nothing in it for the exchange to record: not read whole.
                } else if let Ok(message) = serde_json::from_slice::<Value>(&buf) {
                    if message.is_object() {
                        exchange.set_response(&message, local);
                    }
                } else if exchange.capture().is_on() {
                    let payload = exchange.capture().payload(&buf, exchange.bytes_out);
                    exchange.set_response_payload(payload);
                }
            }
            Kind::Sse(_) => {
                exchange.resolve_request();
                if exchange.rpc_id.is_some() && exchange.record {
                    exchange.fail(Status::ErrorRemote, "the stream ended without a response");
                }
            }
            Kind::Other => {}
        }
        self.complete();
    }

    fn complete(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            exchange.complete();
        }
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.on_data(data);
                }
                if this.inner.is_end_stream() {
                    // The server stops polling a body that says it has ended.
                    this.end();
                }
            }
            Some(Err(e)) => {
                if let Some(exchange) = this.exchange.as_mut() {
                    exchange.fail(
                        Status::ErrorRemote,
                        format!("the upstream stream failed: {e}"),
                    );
                }
                this.complete();
            }
            None => this.end(),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether no member of a JSON text can be named `error` or `isError`: both names hold `rror`,
/// and a key can spell a letter otherwise only with a `\u` escape. Such an answer, valid JSON or
/// not, holds nothing [`Exchange::set_response`] takes when payloads are not captured; two
/// vectorized scans tell, where [`plainly_answered`] parses (about 2.7 instructions a byte).
fn names_no_failure(json: &[u8]) -> bool {
    memchr::memmem::find(json, b"rror").is_none() && memchr::memmem::find(json, b"\\u").is_none()
}

/// Whether a JSON answer is an object with neither an `error` nor a `result` with
/// `"isError": true` — an answer [`Exchange::set_response`] takes nothing from when payloads
/// are not captured — read without building it.
fn plainly_answered(json: &[u8]) -> bool {
    MessageOutline::read(json).is_some_and(|o| !o.failed())
}

/// Whether `json` (past leading whitespace) starts an object. An outline checks it first: a
/// derived struct would also read an array, by position.
pub(crate) fn opens_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

#[cfg(test)]
#[path = "observe_tests.rs"]
mod tests;
