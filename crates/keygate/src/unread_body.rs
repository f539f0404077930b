//! Connection hygiene for HTTP/1.1: a handler that answers without reading the whole request
//! body (a 401 before the upload, a 413) leaves unread bytes on the connection, and hyper
//! then closes it without warning; a client reusing the keep-alive connection sees a reset.
//! This layer watches whether the body reached its end and, when it did not, says so with
//! `Connection: close`, so clients open a fresh connection for their next request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::{HeaderValue, Version};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// A body that records when it has been read to the end.
struct Watched {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn has_body(req: &Request) -> bool {
    let h = req.headers();
    h.contains_key(TRANSFER_ENCODING)
        || h.get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

pub async fn layer(req: Request, next: Next) -> Response {
    if req.version() != Version::HTTP_11 || !has_body(&req) {
        return next.run(req).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        Body::new(Watched {
            inner,
            done: done.clone(),
        })
    });
    let mut resp = next.run(req).await;
    if !done.load(Ordering::Acquire) {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
