//! An upstream's SSE stream, event by event: [`Events`] decodes the events of a body as they
//! arrive (`keygate_core::wire::sse`: any line ends, pieces cut anywhere, UTF-8 decoded once per
//! event, each event at most [`MAX_EVENT_BYTES`]); [`map_event`] rewrites one (to namespace the
//! ids of server-to-client requests and turn event ids into [`Cursor`]s); [`relay`] does both
//! for a whole answer on its way to the client, which gets every event re-encoded (until the
//! client cancels it).
//!
//! [`Cursor`]: super::cursor::Cursor

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use keygate_core::wire::jsonrpc::MessageOutline;
use keygate_core::wire::sse::{Decoder, Event};
use serde_json::Value;

use crate::passthrough::MAX_REQUEST_BYTES;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest upstream event the aggregated endpoint reads (it rewrites each one): the bound
/// of every message the gateway handles itself.
pub const MAX_EVENT_BYTES: usize = MAX_REQUEST_BYTES;

/// The events of an SSE body. A larger event than the limit ends the stream with an error; an
/// event the body ends in the middle of is dropped, as a client drops it.
pub struct Events<B> {
    inner: B,
    events: Decoder,
    /// What is left of the frame being read.
    frame: Bytes,
    done: bool,
}

impl<B> Events<B> {
    pub fn new(inner: B, limit: usize) -> Self {
        Self {
            inner,
            events: Decoder::new(limit),
            frame: Bytes::new(),
            done: false,
        }
    }
}

impl<B> Stream for Events<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Item = Result<Event, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if !this.frame.is_empty() {
                let mut rest = &this.frame[..];
                let decoded = this.events.next_event(&mut rest);
                let read = this.frame.len() - rest.len();
                this.frame.advance(read);
                match decoded {
                    Some(Ok(event)) => return Poll::Ready(Some(Ok(event))),
                    Some(Err(too_large)) => {
                        this.done = true;
                        this.frame.clear();
                        return Poll::Ready(Some(Err(too_large.into())));
                    }
                    None => {}
                }
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.frame = data;
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// An SSE answer on its way to the client: each event through `map`, then encoded; it ends
/// early (dropping `body`) when `stop` resolves.
pub fn relay<B, F>(body: B, stop: impl Future<Output = ()> + Send + 'static, mut map: F) -> Body
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    F: FnMut(Event) -> Event + Send + 'static,
{
    let events = Events::new(body, MAX_EVENT_BYTES)
        .take_until(stop)
        .map(move |event| event.map(|e| Bytes::from(map(e).encode())));
    Body::from_stream(events)
}

/// An event with its `data` JSON passed through `data` and its `id` through `id`; data that
/// is not JSON, and every other field, stay as they were.
pub fn map_event(
    event: Event,
    data: impl FnOnce(Value) -> Value,
    id: impl FnOnce(&str) -> String,
) -> Event {
    let mut event = map_id(event, id);
    if let Some(json) = event
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
    {
        event.data = Some(data(json).to_string());
    }
    event
}

/// An event with only its `id` passed through `id`.
pub fn map_id(mut event: Event, id: impl FnOnce(&str) -> String) -> Event {
    if let Some(old) = &event.id {
        event.id = Some(id(old));
    }
    event
}

/// The outline of the JSON-RPC message an event carries, if its data is one.
pub fn message_of(event: &Event) -> Option<MessageOutline> {
    MessageOutline::read(event.data.as_deref()?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};

    fn decoded(bytes: &[u8]) -> Event {
        let mut bytes = bytes;
        Decoder::new(1024).next_event(&mut bytes).unwrap().unwrap()
    }

    #[test]
    fn maps_data_and_id_and_keeps_other_fields() {
        let out = map_event(
            decoded(b"id: 3\nevent: message\ndata: {\"id\":1,\"method\":\"x\"}\n\n"),
            |mut v| {
                v["id"] = Value::from("ns~1");
                v
            },
            |id| format!("cursor-{id}"),
        );
        assert_eq!(
            out.encode(),
            "event: message\nid: cursor-3\ndata: {\"id\":\"ns~1\",\"method\":\"x\"}\n\n"
        );
        let comment = map_event(decoded(b": comment\n\n"), |v| v, |id| id.to_owned());
        assert_eq!(comment.encode(), ": comment\n\n");
        // A priming event: an id and empty data.
        let primed = map_event(decoded(b"id: 7\ndata:\n\n"), |v| v, |_| "c".into());
        assert_eq!(primed.encode(), "id: c\ndata:\n\n");
        let renumbered = map_event(decoded(b"id:9\ndata: 1\n\n"), |v| v, |_| "z".into());
        assert_eq!(renumbered.encode(), "id: z\ndata: 1\n\n");
    }

    fn body_of(
        pieces: Vec<&'static [u8]>,
    ) -> impl http_body::Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames = pieces
            .into_iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p))));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn relayed_events_keep_a_character_split_across_frames() {
        let (a, b) = "data: café crème\r\n\r\n".as_bytes().split_at(10);
        let body = relay(body_of(vec![a, b]), std::future::pending(), |e| e);
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], "data: café crème\n\n".as_bytes());
    }

    #[tokio::test]
    async fn an_event_over_the_limit_ends_the_stream_in_error() {
        let big: &'static [u8] = Box::leak(vec![b'x'; MAX_EVENT_BYTES + 1].into_boxed_slice());
        let mut events = Events::new(body_of(vec![b"data: ", big, b"\n\n"]), MAX_EVENT_BYTES);
        assert!(events.next().await.unwrap().is_err());
        assert!(events.next().await.is_none());
    }
}
