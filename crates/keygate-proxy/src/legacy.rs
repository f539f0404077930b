//! Legacy HTTP+SSE (MCP 2024-11-05) through the pass-through route.
//!
//! The upstream's SSE stream opens with an `endpoint` event naming where to POST messages. The
//! gateway rewrites it to its own `…/mcp/{integration}/message?ep=<upstream endpoint>`, so the
//! client keeps talking to keygate (with keygate's token) and any replica can route the POST:
//! the upstream endpoint travels in `ep` (base64url of its path and query) and must resolve to
//! the integration's own origin.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use url::Url;

/// The first event is buffered at most this far; past it the stream passes through untouched.
const MAX_FIRST_EVENT: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Maps an upstream endpoint (relative to the integration URL) to the gateway's message URL.
#[derive(Clone, Debug)]
pub struct EndpointMap {
    /// The integration's URL: the base for relative endpoints and the only allowed origin.
    pub upstream: Url,
    /// `{publicUrl}/apps/{id}/mcp/{integration}`.
    pub downstream: String,
}

impl EndpointMap {
    /// The gateway URL for an upstream endpoint, or `None` if it leaves the upstream's origin.
    pub fn rewrite(&self, endpoint: &str) -> Option<String> {
        let target = self.upstream.join(endpoint.trim()).ok()?;
        if target.origin() != self.upstream.origin() {
            return None;
        }
        let mut path_and_query = target.path().to_owned();
        if let Some(q) = target.query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        Some(format!(
            "{}/message?ep={}",
            self.downstream,
            URL_SAFE_NO_PAD.encode(path_and_query)
        ))
    }

    /// The upstream URL a `…/message?ep=` request goes to, checked to stay on its origin.
    pub fn resolve(upstream: &Url, ep: &str) -> Option<Url> {
        let decoded = String::from_utf8(URL_SAFE_NO_PAD.decode(ep).ok()?).ok()?;
        if !decoded.starts_with('/') || decoded.starts_with("//") {
            return None;
        }
        let target = upstream.join(&decoded).ok()?;
        (target.origin() == upstream.origin()).then_some(target)
    }
}

/// Rewrites the `endpoint` event at the head of an SSE stream.
pub struct RewriteEndpoint<B> {
    inner: B,
    map: EndpointMap,
    /// `Some` while the first event is still being collected.
    head: Option<BytesMut>,
}

impl<B> RewriteEndpoint<B> {
    pub fn new(inner: B, map: EndpointMap) -> Self {
        Self {
            inner,
            map,
            head: Some(BytesMut::new()),
        }
    }
}

fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The event with its `data` replaced if it is an `endpoint` event.
fn rewrite_event(event: &[u8], map: &EndpointMap) -> Result<Bytes, BoxError> {
    let Ok(text) = std::str::from_utf8(event) else {
        return Ok(Bytes::copy_from_slice(event));
    };
    let is_endpoint = text
        .lines()
        .any(|l| l.trim_end() == "event: endpoint" || l.trim_end() == "event:endpoint");
    if !is_endpoint {
        return Ok(Bytes::copy_from_slice(event));
    }
    let data = crate::sse::event_data(text);
    let rewritten = map
        .rewrite(&data)
        .ok_or("the upstream's endpoint leaves its origin")?;
    Ok(Bytes::from(format!(
        "event: endpoint\ndata: {rewritten}\n\n"
    )))
}

impl<B> Body for RewriteEndpoint<B>
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
        loop {
            let Some(head) = this.head.as_mut() else {
                return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
            };
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    head.extend_from_slice(&data);
                    if let Some(end) = event_end(head) {
                        let mut buf = this.head.take().expect("collecting");
                        let event = buf.split_to(end);
                        let mut out = BytesMut::from(&rewrite_event(&event, &this.map)?[..]);
                        out.extend_from_slice(&buf);
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                    if head.len() > MAX_FIRST_EVENT {
                        let buf = this.head.take().expect("collecting");
                        return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    let buf = this.head.take().expect("collecting");
                    if buf.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
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

    fn map() -> EndpointMap {
        EndpointMap {
            upstream: Url::parse("http://up.example:3001/sse").unwrap(),
            downstream: "https://kg.example/apps/a/mcp/everything".into(),
        }
    }

    #[test]
    fn endpoints_round_trip_on_the_upstream_origin_only() {
        let m = map();
        let rewritten = m.rewrite("/message?sessionId=abc").unwrap();
        assert!(rewritten.starts_with("https://kg.example/apps/a/mcp/everything/message?ep="));
        let ep = rewritten.split("ep=").nth(1).unwrap();
        assert_eq!(
            EndpointMap::resolve(&m.upstream, ep).unwrap().as_str(),
            "http://up.example:3001/message?sessionId=abc"
        );
        assert!(m.rewrite("http://evil.example/message").is_none());
        assert!(m.rewrite("//evil.example/message").is_none());
        let evil = URL_SAFE_NO_PAD.encode("//evil.example/x");
        assert!(EndpointMap::resolve(&m.upstream, &evil).is_none());
    }

    #[test]
    fn rewrites_only_endpoint_events() {
        let m = map();
        let ev = rewrite_event(b"event: endpoint\ndata: /message?sessionId=1\n\n", &m).unwrap();
        assert!(
            String::from_utf8_lossy(&ev).starts_with("event: endpoint\ndata: https://kg.example/")
        );
        let msg = rewrite_event(b"event: message\ndata: {}\n\n", &m).unwrap();
        assert_eq!(&msg[..], b"event: message\ndata: {}\n\n");
        assert!(rewrite_event(b"event: endpoint\ndata: https://evil.example/m\n\n", &m).is_err());
    }
}
