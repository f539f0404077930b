//! Rewriting SSE events as they stream: every complete event passes through a function (to
//! namespace the ids of server-to-client requests and turn event ids into [`Cursor`]s);
//! partial events wait for their end.
//!
//! [`Cursor`]: super::cursor::Cursor

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Passes each complete event (line ends normalised to `\n`) through `map`.
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

/// An event with its `data` JSON passed through `data` and its `id` through `id`; data that
/// is not JSON, and every other field, stay as they were.
pub fn map_event(
    event: &[u8],
    data: impl FnOnce(Value) -> Value,
    id: impl FnOnce(&str) -> String,
) -> Bytes {
    let Ok(text) = std::str::from_utf8(event) else {
        return Bytes::copy_from_slice(event);
    };
    let mapped = serde_json::from_str::<Value>(&crate::sse::event_data(text))
        .ok()
        .map(|v| data(v).to_string());
    let new_id = event_id(event).map(id);
    rebuild(text, mapped.as_deref(), new_id.as_deref())
}

/// The `id` field of an event, if it has one.
fn event_id(event: &[u8]) -> Option<&str> {
    std::str::from_utf8(event)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .map(|id| id.strip_prefix(' ').unwrap_or(id))
}

/// `text` with its `data` lines replaced by `data` and its `id` line by `id`, where given.
fn rebuild(text: &str, data: Option<&str>, id: Option<&str>) -> Bytes {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines().filter(|l| !l.is_empty()) {
        let replaced = (id.is_some() && line.starts_with("id:"))
            || (data.is_some() && line.starts_with("data:"));
        if !replaced {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    if let Some(data) = data {
        out.push_str("data: ");
        out.push_str(data);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

impl<B, F> Body for MapEvents<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    F: FnMut(&[u8]) -> Bytes + Unpin,
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
                return Poll::Ready(Some(Ok(Frame::data((this.map)(&event)))));
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
    fn maps_data_and_id_and_keeps_other_fields() {
        let out = map_event(
            b"id: 3\nevent: message\ndata: {\"id\":1,\"method\":\"x\"}\n\n",
            |mut v| {
                v["id"] = Value::from("ns~1");
                v
            },
            |id| format!("cursor-{id}"),
        );
        assert_eq!(
            &out[..],
            b"event: message\nid: cursor-3\ndata: {\"id\":\"ns~1\",\"method\":\"x\"}\n\n"
        );
        let comment = map_event(b": comment\n\n", |v| v, |id| id.to_owned());
        assert_eq!(&comment[..], b": comment\n\n");
        // A priming event: an id and empty data.
        let primed = map_event(b"id: 7\ndata:\n\n", |v| v, |_| "c".into());
        assert_eq!(&primed[..], b"data:\nid: c\n\n");
        assert_eq!(event_id(b"event: x\nid:9\ndata: 1\n\n"), Some("9"));
        let renumbered = map_event(b"id: 9\ndata: 1\n\n", |v| v, |_| "z".into());
        assert_eq!(&renumbered[..], b"id: z\ndata: 1\n\n");
    }
}
