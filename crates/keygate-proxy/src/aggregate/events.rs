//! Rewriting SSE events as they stream: every complete event passes through a function (used
//! to namespace the ids of server-to-client requests); partial events wait for their end.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Rewrites each event's `data` JSON with `map`; events that are not JSON pass unchanged.
pub struct MapEvents<B, F> {
    inner: B,
    buf: BytesMut,
    map: F,
}

impl<B, F> MapEvents<B, F> {
    pub fn new(inner: B, map: F) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            map,
        }
    }
}

fn split_event(buf: &mut BytesMut) -> Option<BytesMut> {
    let end = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)?;
    Some(buf.split_to(end))
}

/// Applies `map` to the JSON in an event's `data` lines.
pub fn map_event(event: &[u8], map: &impl Fn(Value) -> Value) -> Bytes {
    let Ok(text) = std::str::from_utf8(event) else {
        return Bytes::copy_from_slice(event);
    };
    let data = crate::sse::event_data(text);
    let Ok(value) = serde_json::from_str::<Value>(&data) else {
        return Bytes::copy_from_slice(event);
    };
    let mapped = map(value);
    let mut out = String::with_capacity(event.len() + 16);
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("data:"))
    {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&mapped.to_string());
    out.push_str("\n\n");
    Bytes::from(out)
}

impl<B, F> Body for MapEvents<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    F: Fn(Value) -> Value + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(event) = split_event(&mut this.buf) {
                return Poll::Ready(Some(Ok(Frame::data(map_event(&event, &this.map)))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        // Normalise CRLF line ends so events split on "\n\n".
                        if data.contains(&b'\r') {
                            this.buf.extend_from_slice(
                                &String::from_utf8_lossy(&data)
                                    .replace("\r\n", "\n")
                                    .into_bytes(),
                            );
                        } else {
                            this.buf.extend_from_slice(&data);
                        }
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None if this.buf.is_empty() => return Poll::Ready(None),
                None => {
                    let rest = this.buf.split();
                    return Poll::Ready(Some(Ok(Frame::data(rest.freeze()))));
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_data_and_keeps_other_fields() {
        let out = map_event(
            b"id: 3\nevent: message\ndata: {\"id\":1,\"method\":\"x\"}\n\n",
            &|mut v| {
                v["id"] = Value::from("ns~1");
                v
            },
        );
        assert_eq!(
            &out[..],
            b"id: 3\nevent: message\ndata: {\"id\":\"ns~1\",\"method\":\"x\"}\n\n"
        );
        assert_eq!(&map_event(b": comment\n\n", &|v| v)[..], b": comment\n\n");
    }
}
