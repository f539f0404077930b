//! Server-sent events relayed downstream: frames pass through as they arrive, and after 15 s
//! without data a `: keep-alive` comment is sent — only between events, never inside one.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Whether a message's body is an event stream.
pub fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// The `data` of one event: its `data:` lines, each without the one space that may follow the
/// colon, concatenated.
pub fn event_data(event: &str) -> String {
    event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect()
}
const COMMENT: &[u8] = b": keep-alive\n\n";

/// A body that interleaves keep-alive comments at event boundaries while idle.
pub struct KeepAlive<B> {
    inner: B,
    idle: Pin<Box<Sleep>>,
    at_boundary: bool,
}

impl<B> KeepAlive<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            idle: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
            at_boundary: true,
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
                if let Some(data) = frame.data_ref()
                    && !data.is_empty()
                {
                    this.at_boundary = data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n");
                }
                this.idle.as_mut().reset(Instant::now() + KEEP_ALIVE);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if this.at_boundary && this.idle.as_mut().poll(cx).is_ready() {
                    this.idle.as_mut().reset(Instant::now() + KEEP_ALIVE);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(COMMENT)))));
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
}
