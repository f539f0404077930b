//! Server-sent events relayed downstream: frames pass through as they arrive, byte for byte,
//! and after 15 s without data a `: keep-alive` comment is sent — only between events, never
//! inside one ([`KeepAlive`]). Under it, [`Guarded`] ends an answer whose upstream went silent
//! or broke off, with a JSON-RPC error for the request when one is still owed. Both follow the
//! stream with `keygate_core::wire::sse`, which frames it as clients do.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use keygate_core::wire::jsonrpc::{MessageOutline, RequestId};
use keygate_core::wire::sse::{Boundary, Decoder, Event};
use keygate_trace::observe::PeekHandle;
use serde_json::Value;
use tokio::time::{Instant, Sleep};

pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Whether a message's body is an event stream.
pub fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// A body that interleaves keep-alive comments at event boundaries while idle.
pub struct KeepAlive<B> {
    inner: B,
    idle: Pin<Box<Sleep>>,
    boundary: Boundary,
}

impl<B> KeepAlive<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            idle: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
            boundary: Boundary::default(),
        }
    }
}

impl<B> Body for KeepAlive<B>
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.boundary.feed(data);
                }
                this.idle.as_mut().reset(Instant::now() + KEEP_ALIVE);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if this.boundary.at_boundary() && this.idle.as_mut().poll(cx).is_ready() {
                    this.idle.as_mut().reset(Instant::now() + KEEP_ALIVE);
                    let comment = Event::comment("keep-alive").encode();
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(comment)))));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Most bytes of one event kept to recognise the answer; a larger event is taken for the
/// answer unless its first bytes name a `method` (notifications and requests are small).
const MAX_WATCHED_EVENT: usize = 64 * 1024;

/// The JSON-RPC request a relayed answer must answer, as far as it is known.
pub enum Answering {
    /// A GET stream, a batch, a notification: nothing to answer.
    Nothing,
    /// The request's id.
    Id(Value),
    /// Read from the request body as it streamed upstream (resolved when first needed).
    Peeked(PeekHandle),
    /// The (buffered) request body.
    Body(Bytes),
}

/// How long a relayed answer may stay silent, and what it answers.
pub struct Relay {
    pub answering: Answering,
    pub idle_timeout: Duration,
}

/// A relayed upstream answer that never hangs and never ends without a word:
///
/// - no byte from the upstream for `idle_timeout` (the gateway's own keep-alives don't count)
///   ends it;
/// - an event stream answering a request whose upstream fails or falls silent before the event
///   answering that request's id went by ends with one more event, a JSON-RPC error for that
///   id, and then ends cleanly. An event cut off mid-way is first closed under the event type
///   `keygate-truncated`, which MCP clients (they read `message` events) ignore;
/// - anything else the upstream breaks off ends in an error (a GET stream's client resumes with
///   `Last-Event-ID`), or, for a silent event stream, ends cleanly.
pub struct Guarded<B> {
    inner: B,
    sse: bool,
    answering: Answering,
    /// The resolved id, once known.
    id: Option<RequestId>,
    answered: bool,
    /// The stream's events, up to [`MAX_WATCHED_EVENT`] bytes each, while it is watched; boxed,
    /// and only for an event stream that answers a request: a `GET` stream, open and mostly
    /// idle for long, holds none.
    events: Option<Box<Decoder>>,
    idle_timeout: Duration,
    /// Armed the first time the upstream keeps the answer waiting: an answer that is ready at
    /// once (most JSON answers) never touches the timer.
    idle: Option<Pin<Box<Sleep>>>,
    /// The last byte from the upstream, noted once the timer is armed.
    last_byte: Instant,
    done: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> Guarded<B> {
    pub fn new(inner: B, sse: bool, relay: Relay) -> Self {
        let watched = sse && !matches!(relay.answering, Answering::Nothing);
        Self {
            inner,
            sse,
            answering: relay.answering,
            id: None,
            answered: false,
            events: watched.then(|| Box::new(Decoder::new(MAX_WATCHED_EVENT))),
            idle_timeout: relay.idle_timeout,
            idle: None,
            last_byte: Instant::now(),
            done: false,
        }
    }

    fn watching(&self) -> bool {
        !self.answered && self.events.is_some()
    }

    fn request_id(&mut self) -> Option<RequestId> {
        if self.id.is_none() {
            self.id = match &self.answering {
                Answering::Nothing => None,
                Answering::Id(id) => RequestId::from_value(id),
                Answering::Peeked(peek) => {
                    peek.request_id().as_ref().and_then(RequestId::from_value)
                }
                Answering::Body(body) => MessageOutline::read(body)
                    .and_then(|m| m.id)
                    .as_ref()
                    .and_then(RequestId::from_value),
            };
        }
        self.id.clone()
    }

    /// Follows the event stream's bytes to notice the event that answers the request.
    fn scan(&mut self, mut data: &[u8]) {
        while !self.answered
            && let Some(events) = self.events.as_mut()
            && let Some(decoded) = events.next_event(&mut data)
        {
            match decoded {
                Ok(event) => self.event_ended(event),
                Err(too_large) => self.answered = !too_large.head.contains("\"method\""),
            }
        }
    }

    fn event_ended(&mut self, event: Event) {
        let Some(data) = event.data else {
            return;
        };
        if !data.contains("\"id\"") {
            return;
        }
        let Some(message) = MessageOutline::read(data.as_bytes()) else {
            return;
        };
        if message.answers()
            && self
                .request_id()
                .is_none_or(|id| message.id == Some(id.to_value()))
        {
            self.answered = true;
        }
    }

    /// The last frame of a stream whose upstream broke off (`silent`: by falling silent):
    /// the JSON-RPC error for the unanswered request, if there is one to answer.
    fn closing_event(&mut self, silent: bool) -> Option<Bytes> {
        if !self.watching() {
            return None;
        }
        let id = self.request_id()?;
        let events = self.events.as_ref()?;
        let mut out = String::new();
        if !events.at_boundary() {
            if events.mid_line() {
                out.push('\n');
            }
            let truncated = Event {
                event: Some("keygate-truncated".into()),
                ..Event::default()
            };
            out.push_str(&truncated.encode());
        }
        let error = crate::error::stream_broken(silent).response(Some(&id));
        out.push_str(&Event::message(error.to_string()).encode());
        Some(Bytes::from(out))
    }

    fn finish(
        &mut self,
        silent: bool,
        cause: BoxError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        if let Some(last) = self.closing_event(silent) {
            tracing::warn!(error = %cause, "upstream stream broke off; the request is answered with an error");
            return Poll::Ready(Some(Ok(Frame::data(last))));
        }
        if silent && self.sse {
            tracing::info!("upstream stream idle; ended");
            return Poll::Ready(None);
        }
        if self.sse && self.answered {
            return Poll::Ready(None); // the answer went by: nothing is lost
        }
        Poll::Ready(Some(Err(cause)))
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.idle.is_some() {
                    this.last_byte = Instant::now();
                }
                if this.watching()
                    && let Some(data) = frame.data_ref()
                {
                    this.scan(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.finish(false, e.into()),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle.get_or_insert_with(|| {
                    this.last_byte = Instant::now();
                    Box::pin(tokio::time::sleep_until(this.last_byte + this.idle_timeout))
                });
                // The timer is moved on only when it fires, not at every frame.
                while idle.as_mut().poll(cx).is_ready() {
                    let due = this.last_byte + this.idle_timeout;
                    if due <= Instant::now() {
                        let cause = format!("no byte for {} s", this.idle_timeout.as_secs());
                        return this.finish(true, cause.into());
                    }
                    idle.as_mut().reset(due);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.sse {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn comments_only_between_events() {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let body = KeepAlive::new(StreamBody::new(tokio_stream_from(rx)));
        let mut body = Box::pin(body);
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: {\"a\":1}\n\n"))))
            .await
            .unwrap();
        assert_eq!(next(&mut body).await, "data: {\"a\":1}\n\n");
        // Idle at a boundary: a comment after 15 s.
        assert_eq!(next(&mut body).await, ": keep-alive\n\n");
        // Mid-event (no blank line yet): no comment however long it takes.
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: part"))))
            .await
            .unwrap();
        assert_eq!(next(&mut body).await, "data: part");
        let waited = tokio::time::timeout(Duration::from_secs(60), next(&mut body)).await;
        assert!(waited.is_err(), "no keep-alive inside an event");
    }

    async fn next<B: Body<Data = Bytes> + Unpin>(b: &mut Pin<Box<KeepAlive<B>>>) -> String
    where
        B::Error: std::fmt::Debug,
    {
        let frame = b.frame().await.unwrap().unwrap();
        String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    type Upstream = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

    fn guarded(
        answering: Answering,
    ) -> (
        Upstream,
        Pin<Box<Guarded<impl Body<Data = Bytes, Error = std::io::Error> + Unpin>>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let relay = Relay {
            answering,
            idle_timeout: Duration::from_secs(300),
        };
        let body = Guarded::new(StreamBody::new(tokio_stream_from(rx)), true, relay);
        (tx, Box::pin(body))
    }

    async fn data<B: Body<Data = Bytes> + Unpin>(b: &mut Pin<Box<B>>) -> String
    where
        B::Error: std::fmt::Debug,
    {
        let frame = b.frame().await.unwrap().unwrap();
        String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_cut_off_is_closed_and_the_request_answered() {
        let (tx, mut body) = guarded(Answering::Id(Value::from(3)));
        let part = Bytes::from_static(b"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"res");
        tx.send(Ok(Frame::data(part.clone()))).await.unwrap();
        data(&mut body).await;
        tx.send(Err(std::io::Error::other("reset"))).await.unwrap();
        let last = data(&mut body).await;
        let seen = events(&[part.as_ref(), last.as_bytes()]);
        assert_eq!(seen.len(), 2, "{last}");
        assert_eq!(seen[0].event_type(), "keygate-truncated");
        assert_eq!(seen[1].event_type(), "message");
        let error: Value = serde_json::from_str(seen[1].data.as_deref().unwrap()).unwrap();
        assert_eq!(error["id"], 3);
        assert_eq!(error["error"]["code"], -32002);
        assert!(body.frame().await.is_none(), "then a clean end");
    }

    /// The events a client reads from `pieces`.
    fn events(pieces: &[&[u8]]) -> Vec<Event> {
        let mut decoder = Decoder::new(1 << 20);
        let mut out = Vec::new();
        for mut piece in pieces.iter().copied() {
            while let Some(event) = decoder.next_event(&mut piece) {
                out.push(event.unwrap());
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_ended_by_cr_line_ends_is_recognised() {
        let (tx, mut body) = guarded(Answering::Id(Value::from("a")));
        for piece in [
            &b"data: {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{}}\r"[..],
            b"\r",
        ] {
            tx.send(Ok(Frame::data(Bytes::from_static(piece))))
                .await
                .unwrap();
            data(&mut body).await;
        }
        tx.send(Err(std::io::Error::other("reset"))).await.unwrap();
        assert!(body.frame().await.is_none(), "answered: nothing to add");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_answers_a_string_id_as_a_string() {
        let (tx, mut body) = guarded(Answering::Id(Value::from("7")));
        tx.send(Err(std::io::Error::other("reset"))).await.unwrap();
        let last = data(&mut body).await;
        let seen = events(&[last.as_bytes()]);
        let error: Value = serde_json::from_str(seen[0].data.as_deref().unwrap()).unwrap();
        assert_eq!(error["id"], "7");
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_follows_cr_line_ends() {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let mut body = Box::pin(KeepAlive::new(StreamBody::new(tokio_stream_from(rx))));
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\r"))))
            .await
            .unwrap();
        next(&mut body).await;
        let waited = tokio::time::timeout(Duration::from_secs(60), next(&mut body)).await;
        assert!(waited.is_err(), "no keep-alive before the blank line");
        tx.send(Ok(Frame::data(Bytes::from_static(b"\r"))))
            .await
            .unwrap();
        next(&mut body).await;
        assert_eq!(next(&mut body).await, ": keep-alive\n\n");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_the_answer_ends_cleanly() {
        let (tx, mut body) = guarded(Answering::Id(Value::from(3)));
        let answer = Bytes::from_static(b"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n");
        tx.send(Ok(Frame::data(answer))).await.unwrap();
        data(&mut body).await;
        assert!(body.frame().await.is_none(), "no error once answered");
        let (tx, mut body) = guarded(Answering::Id(Value::from(3)));
        let note = Bytes::from_static(b"data: {\"jsonrpc\":\"2.0\",\"method\":\"n\"}\n\n");
        tx.send(Ok(Frame::data(note))).await.unwrap();
        data(&mut body).await;
        let last = data(&mut body).await;
        assert!(last.starts_with("data: "), "{last}");
        assert!(last.contains("stopped answering"), "{last}");
    }
}
