//! Legacy HTTP+SSE (MCP 2024-11-05) through the pass-through route.
//!
//! The upstream's SSE stream opens with an `endpoint` event naming where to POST messages. The
//! gateway rewrites it to its own `…/mcp/{integration}/message?ep=<sealed>`, so the client
//! keeps talking to keygate (with keygate's token) and any replica can route the POST. A
//! message goes upstream with the integration's credential attached, so `ep` must not be
//! steerable: it is the announced endpoint (an absolute URL on the integration's origin) and
//! the application, sealed by the vault for the organization, integration and user the stream
//! was opened for. Another user, another integration or application, or any `ep` the gateway
//! did not seal itself opens to nothing, and the message is refused before it leaves.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use keygate_core::wire::sse::{Decoder, Event};
use keygate_core::{ApplicationId, IntegrationId, OrgId, UserId};
use keygate_store::{Purpose, SealContext, Store};
use serde::{Deserialize, Serialize};
use url::Url;

/// The stream's head is buffered at most this far, up to and including its first event; past
/// it the stream passes through untouched.
const MAX_FIRST_EVENT: usize = 64 * 1024;

/// The longest `ep` opened (a sealed endpoint is a few hundred bytes).
const MAX_EP_CHARS: usize = 8 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whose legacy stream this is: the announced endpoint is sealed to exactly this.
#[derive(Clone, Copy, Debug)]
pub struct StreamOwner {
    pub org: OrgId,
    pub app: ApplicationId,
    pub integration: IntegrationId,
    pub user: UserId,
}

/// What `ep` carries, sealed.
#[derive(Serialize, Deserialize)]
struct Announced {
    #[serde(rename = "a")]
    app: ApplicationId,
    /// The upstream's message endpoint, absolute.
    #[serde(rename = "e")]
    endpoint: String,
}

impl StreamOwner {
    /// The vault's associated data: the organization, integration and user. (Purpose
    /// `mcp_session` as for aggregated sessions; those are sealed without an integration, so
    /// neither opens as the other.)
    fn ctx(&self) -> SealContext {
        SealContext {
            purpose: Purpose::McpSession,
            org: Some(self.org),
            integration: Some(self.integration),
            user: Some(self.user),
        }
    }

    fn seal(&self, store: &Store, endpoint: &Url) -> String {
        let plain = serde_json::to_vec(&Announced {
            app: self.app,
            endpoint: endpoint.as_str().to_owned(),
        })
        .expect("plain data serializes");
        URL_SAFE_NO_PAD.encode(store.vault().seal(&self.ctx(), &plain))
    }

    /// The upstream endpoint `ep` names, if the gateway sealed it for this owner and it is still
    /// on the integration's origin.
    pub fn open(&self, store: &Store, upstream: &Url, ep: &str) -> Option<Url> {
        if ep.len() > MAX_EP_CHARS {
            return None;
        }
        let sealed = URL_SAFE_NO_PAD.decode(ep).ok()?;
        let plain = store.vault().open(&self.ctx(), &sealed).ok()?;
        let announced: Announced = serde_json::from_slice(&plain).ok()?;
        if announced.app != self.app {
            return None;
        }
        let target = Url::parse(&announced.endpoint).ok()?;
        (target.origin() == upstream.origin()).then_some(target)
    }
}

/// Maps the endpoint an upstream announces to the gateway's message URL.
#[derive(Clone)]
pub struct EndpointMap {
    /// The integration's URL: the base for relative endpoints and the only allowed origin.
    pub upstream: Url,
    /// `{publicUrl}/apps/{id}/mcp/{integration}`.
    pub downstream: String,
    pub owner: StreamOwner,
    /// Its vault seals `ep`.
    pub store: Store,
}

impl EndpointMap {
    /// The gateway URL for an upstream endpoint, or `None` if it leaves the upstream's origin.
    pub fn rewrite(&self, endpoint: &str) -> Option<String> {
        let target = on_origin(&self.upstream, endpoint)?;
        Some(format!(
            "{}/message?ep={}",
            self.downstream,
            self.owner.seal(&self.store, &target)
        ))
    }
}

/// The absolute URL of an announced endpoint, if it stays on the upstream's origin.
pub(crate) fn on_origin(upstream: &Url, endpoint: &str) -> Option<Url> {
    let target = upstream.join(endpoint.trim()).ok()?;
    (target.origin() == upstream.origin()).then_some(target)
}

/// Rewrites the `endpoint` event at the head of an SSE stream: the stream's first event (the
/// comments and ids before it pass as they are). Every other byte passes untouched.
pub struct RewriteEndpoint<B> {
    inner: B,
    map: EndpointMap,
    /// `Some` while the head is still being collected; boxed, so that a stream past its first
    /// event (most of its life, idle) holds none of it.
    head: Option<Box<Head>>,
}

/// The head of the stream, up to its first event.
struct Head {
    buf: BytesMut,
    events: Decoder,
    /// Where in `buf` the block being read starts.
    start: usize,
}

/// What the head held once its first event (or too much) went by.
enum Found {
    /// The first event, at `start..end` in the head.
    Event(Event, usize, usize),
    /// Nothing to rewrite: the head passes as it is.
    Nothing,
}

impl<B> RewriteEndpoint<B> {
    pub fn new(inner: B, map: EndpointMap) -> Self {
        Self {
            inner,
            map,
            head: Some(Box::new(Head {
                buf: BytesMut::new(),
                events: Decoder::new(MAX_FIRST_EVENT),
                start: 0,
            })),
        }
    }
}

impl Head {
    /// Adds the next frame; what was found, once something was.
    fn push(&mut self, data: &[u8]) -> Option<Found> {
        let from = self.buf.len();
        self.buf.extend_from_slice(data);
        let mut rest = data;
        while let Some(decoded) = self.events.next_event(&mut rest) {
            let end = from + data.len() - rest.len();
            match decoded {
                Ok(event) if event.is_dispatched() => {
                    return Some(Found::Event(event, self.start, end));
                }
                Ok(_) => self.start = end, // a comment, an id: not an event
                Err(_) => return Some(Found::Nothing),
            }
        }
        (self.buf.len() > MAX_FIRST_EVENT).then_some(Found::Nothing)
    }
}

/// The event with its `data` replaced (by `rewrite`) if it is an `endpoint` event.
fn rewrite_event(
    mut event: Event,
    rewrite: impl FnOnce(&str) -> Option<String>,
) -> Result<Option<Event>, BoxError> {
    if event.event_type() != "endpoint" {
        return Ok(None);
    }
    let data = event.data.as_deref().unwrap_or_default();
    let rewritten = rewrite(data).ok_or("the upstream's endpoint leaves its origin")?;
    event.data = Some(rewritten);
    Ok(Some(event))
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
            let found = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match head.push(&data) {
                        Some(found) => found,
                        None => continue,
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None if head.buf.is_empty() => return Poll::Ready(None),
                None => Found::Nothing,
            };
            let mut buf = this.head.take().expect("collecting").buf;
            if let Found::Event(event, start, end) = found
                && let Some(rewritten) = rewrite_event(event, |e| this.map.rewrite(e))?
            {
                let rest = buf.split_off(end);
                buf.truncate(start);
                buf.extend_from_slice(rewritten.encode().as_bytes());
                buf.extend_from_slice(&rest);
            }
            return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
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
    fn endpoints_stay_on_the_upstream_origin() {
        let up = Url::parse("http://up.example:3001/sse").unwrap();
        assert_eq!(
            on_origin(&up, "/message?sessionId=abc").unwrap().as_str(),
            "http://up.example:3001/message?sessionId=abc"
        );
        assert!(on_origin(&up, "http://evil.example/message").is_none());
        assert!(on_origin(&up, "//evil.example/message").is_none());
        assert!(on_origin(&up, "https://up.example:3001/message").is_none());
    }

    fn first_event(bytes: &[u8]) -> Event {
        let mut bytes = bytes;
        Decoder::new(1024).next_event(&mut bytes).unwrap().unwrap()
    }

    #[test]
    fn rewrites_only_endpoint_events() {
        let up = Url::parse("http://up.example:3001/sse").unwrap();
        let rewrite = |e: &str| on_origin(&up, e).map(|_| "https://kg.example/m".to_owned());
        let endpoint = first_event(b"event: endpoint\r\ndata: /message?sessionId=1\r\n\r\n");
        let ev = rewrite_event(endpoint, rewrite).unwrap().unwrap();
        assert_eq!(
            ev.encode(),
            "event: endpoint\ndata: https://kg.example/m\n\n"
        );
        let msg = first_event(b"event: message\ndata: {}\n\n");
        assert!(rewrite_event(msg, rewrite).unwrap().is_none());
        let evil = first_event(b"event: endpoint\ndata: https://evil.example/m\n\n");
        assert!(rewrite_event(evil, rewrite).is_err());
    }
}
