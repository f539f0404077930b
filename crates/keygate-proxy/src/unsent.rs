//! The part of a request body that never went upstream, back in the handler's hands. When the
//! gateway answers a pass-through request itself (the upstream is down, the integration
//! unknown), its JSON-RPC error names the request's id, which is in that body: [`Unsent`]
//! streams the body on untouched and, when it is dropped before its end (by the handler, or by
//! the upstream client that could not send it), hands what is left to [`Returned`].

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::oneshot;

/// A request body that comes back, unread part only, when dropped.
pub struct Unsent {
    inner: Option<Body>,
    back: Option<oneshot::Sender<Body>>,
}

/// Where an [`Unsent`] body comes back.
pub struct Returned(oneshot::Receiver<Body>);

impl Returned {
    /// The unread rest of the body, if it was dropped already (a body still held by an
    /// upstream connection is not waited for).
    pub fn take(mut self) -> Option<Body> {
        self.0.try_recv().ok()
    }
}

/// The request with its body wrapped, and where the body comes back.
pub fn split(req: http::Request<Body>) -> (http::Request<Body>, Returned) {
    let (tx, rx) = oneshot::channel();
    let req = req.map(|body| {
        Body::new(Unsent {
            inner: Some(body),
            back: Some(tx),
        })
    });
    (req, Returned(rx))
}

impl http_body::Body for Unsent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.back = None; // read to its end: nothing left to give back
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Unsent {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take()) {
            let _ = back.send(inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_dropped_unread_comes_back_whole() {
        let req = http::Request::new(Body::from("{\"id\":1}"));
        let (req, returned) = split(req);
        drop(req);
        let back = returned.take().expect("returned");
        let bytes = back.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"id\":1}");
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_leaves_nothing() {
        let (req, returned) = split(http::Request::new(Body::from("x")));
        req.into_body().collect().await.unwrap();
        assert!(returned.take().is_none());
    }
}
