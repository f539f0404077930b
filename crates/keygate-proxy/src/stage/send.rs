//! The send stage: the upstream request — the forwarded headers (pass-through:
//! [`crate::forwarded`]; aggregated: the gateway's own) and the credential the credential stage
//! chose — sent through the shared client ([`crate::upstream::Upstream`]). [`once`] sends one
//! request; the trace notes the credential it carries and gives it a client span
//! ([`crate::traced::note_credentials`], [`crate::traced::client_span`]). [`with_retry`] is the
//! one retry both routes use: an upstream that refuses a user's OAuth token (`401`) before it
//! expires (revoked, rotated elsewhere) gets the request once more with a refreshed token. The
//! refresh is the broker's single-flight one, so any number of requests refused with one token
//! cost one refresh.

use std::future::Future;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use keygate_core::model::AuthMode;

use super::route::Endpoint;
use super::{Call, credential};
use crate::error::ProxyError;
use crate::traced;

/// An upstream's answer.
pub type Answer = http::Response<hyper::body::Incoming>;

/// The request to send: `method` to `endpoint` with `headers` (nothing else of the client's)
/// and `authorization`, the credential.
pub fn request(
    method: Method,
    endpoint: &Endpoint,
    mut headers: HeaderMap,
    authorization: Option<HeaderValue>,
    body: Body,
) -> http::Request<Body> {
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = endpoint.uri().clone();
    if let Some(auth) = authorization {
        headers.insert(header::AUTHORIZATION, auth);
    }
    *req.headers_mut() = headers;
    req
}

/// Sends `req` once and waits for the answer's headers (`proxy.upstream_header_timeout_secs`).
/// The trace notes its credential and opens its client span first, and learns how it went
/// (the span, the upstream latency histogram under `call.route`). A failure names the
/// integration.
pub async fn once(call: Call<'_>, mut req: http::Request<Body>) -> Result<Answer, ProxyError> {
    traced::note_credentials(&req);
    let span = traced::client_span(&mut req);
    let started = Instant::now();
    let result = call.state.upstream.send(req).await;
    traced::sent(call.state, call.route, span, &result, started);
    result.map_err(|e| e.of_integration(call.integration))
}

/// Sends with `authorization` through `send_once` (which builds the request and sends it
/// [`once`]). For an OAuth integration an upstream `401` refreshes the caller's token and sends
/// once more with it (its answer is final, whatever it is); when the grant turns out to be
/// gone, [`ProxyError::NotConnected`]. Anything else is sent once. A failure names the
/// integration.
pub async fn with_retry<F, Fut>(
    call: Call<'_>,
    authorization: Option<HeaderValue>,
    mut send_once: F,
) -> Result<Answer, ProxyError>
where
    F: FnMut(Option<HeaderValue>) -> Fut,
    Fut: Future<Output = Result<Answer, ProxyError>>,
{
    let named = |e: ProxyError| e.of_integration(call.integration);
    let resp = send_once(authorization.clone()).await.map_err(named)?;
    if call.integration.auth_mode != AuthMode::Oauth || resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    // Boxed: a refresh is rare and its future large; every send would carry it otherwise.
    match Box::pin(credential::after_rejection(call, authorization.as_ref()))
        .await
        .map_err(named)?
    {
        Some(fresh) => {
            drop(resp);
            send_once(Some(fresh)).await.map_err(named)
        }
        None => Ok(resp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_request_carries_the_credential_over_any_authorization_given() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer agent"),
        );
        headers.insert("mcp-session-id", HeaderValue::from_static("s1"));
        let endpoint = Endpoint::unchecked("https://mcp.example.com/mcp?x=1");
        let credential = HeaderValue::from_static("Bearer upstream");
        let req = request(
            Method::POST,
            &endpoint,
            headers,
            Some(credential),
            Body::empty(),
        );
        assert_eq!(req.uri(), "https://mcp.example.com/mcp?x=1");
        let auth: Vec<_> = req
            .headers()
            .get_all(header::AUTHORIZATION)
            .iter()
            .collect();
        assert_eq!(auth, ["Bearer upstream"]);
        assert_eq!(req.headers()["mcp-session-id"], "s1");
        assert_eq!(req.headers().len(), 2);
    }

    #[test]
    fn without_a_credential_the_upstream_request_has_no_authorization() {
        let endpoint = Endpoint::unchecked("https://mcp.example.com/mcp");
        let req = request(
            Method::GET,
            &endpoint,
            HeaderMap::new(),
            None,
            Body::empty(),
        );
        assert!(req.headers().get(header::AUTHORIZATION).is_none());
        assert_eq!(req.method(), Method::GET);
    }
}
