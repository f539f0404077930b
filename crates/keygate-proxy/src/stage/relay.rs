//! The relay stage, last on pass-through: the upstream's answer streamed back as it came, frame
//! by frame, without the response headers that are the upstream's own business
//! ([`DROP_RESPONSE`]). Every answer goes through [`Guarded`] (the stream idle limit, and the
//! JSON-RPC error that ends an answer its upstream broke off); SSE gets [`KeepAlive`], and a
//! legacy GET stream [`RewriteEndpoint`]. The trace then wraps it in `Observed`
//! ([`crate::traced::finish`]). None of them changes a byte the upstream sent. (The aggregated
//! endpoint rewrites its answers itself, in [`crate::aggregate`].)

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;

use crate::forwarded;
use crate::legacy::{EndpointMap, RewriteEndpoint};
use crate::sse::{Guarded, KeepAlive, Relay, is_event_stream};

/// Response headers never relayed: hop-by-hop, the upstream's own auth challenge (the agent
/// authenticates to keygate, not to the upstream) and cookies for the upstream's domain.
pub const DROP_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "www-authenticate",
    "set-cookie",
];

/// Streams an upstream response back (`endpoint_map`: a GET stream's, whose `endpoint` event is
/// rewritten). An answer its upstream breaks off or leaves silent ends as [`Guarded`] (`guard`)
/// says.
pub fn relay(
    resp: http::Response<hyper::body::Incoming>,
    endpoint_map: Option<EndpointMap>,
    guard: Relay,
) -> Response {
    let (parts, body) = resp.into_parts();
    let is_sse = is_event_stream(&parts.headers);
    let mut headers = parts.headers;
    strip(&mut headers, DROP_RESPONSE);
    let body = if is_sse {
        headers.remove(header::CONTENT_LENGTH);
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-cache"));
        match endpoint_map {
            Some(map) => Body::new(KeepAlive::new(Guarded::new(
                RewriteEndpoint::new(body, map),
                true,
                guard,
            ))),
            None => Body::new(KeepAlive::new(Guarded::new(body, true, guard))),
        }
    } else {
        Body::new(Guarded::new(body, false, guard))
    };
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    out
}

/// Removes the `drop` headers and those the `Connection` header names. Most answers carry none
/// of them, and their map is left as it came.
fn strip(headers: &mut HeaderMap, drop: &[&str]) {
    // Headers named by `Connection` are hop-by-hop too.
    let named = forwarded::connection_named(headers);
    let dropped = |name: &HeaderName| {
        let n = name.as_str();
        drop.contains(&n) || named.iter().any(|h| h == n)
    };
    let doomed: Vec<HeaderName> = headers.keys().filter(|n| dropped(n)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_upstreams_cookies_challenge_and_hop_by_hop_headers_stay_behind() {
        let from_upstream = headers(&[
            ("content-type", "application/json"),
            ("set-cookie", "upstream=1; Domain=mcp.example.com"),
            ("www-authenticate", "Bearer realm=\"upstream\""),
            ("connection", "keep-alive, X-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "named by Connection"),
            ("transfer-encoding", "chunked"),
            ("mcp-session-id", "s1"),
        ]);
        let mut relayed = from_upstream;
        strip(&mut relayed, DROP_RESPONSE);
        let names: Vec<&str> = relayed.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "mcp-session-id"]);
    }

    #[test]
    fn an_answer_with_nothing_to_drop_keeps_every_value() {
        let from_upstream = headers(&[
            ("content-type", "text/event-stream"),
            ("vary", "accept"),
            ("vary", "origin"),
        ]);
        let mut relayed = from_upstream.clone();
        strip(&mut relayed, DROP_RESPONSE);
        assert_eq!(relayed, from_upstream);
    }
}
