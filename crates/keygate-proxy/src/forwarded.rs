//! What of an agent's request may travel upstream. Request headers pass by an allow-list —
//! the MCP headers (`Mcp-*`: session, protocol version, the 2026-07-28 `Mcp-Method`,
//! `Mcp-Name` and `Mcp-Param-*`), content negotiation and framing, `Last-Event-ID`,
//! `User-Agent` and the W3C trace context — so a credential of the agent's (`Authorization`,
//! `X-Api-Key`, `X-Auth-Token`, `Cookie`, `Proxy-Authorization`, whatever a client invents)
//! never reaches an upstream. An `access_token` query parameter is stripped, and any header or
//! parameter that carries the agent's own bearer token is dropped even where it is allowed.
//! An integration may extend the list (`forwardHeaders`) with headers that cannot carry a
//! credential (`keygate_core::model::forwardable_header`).

use axum::http::header::{self, HeaderMap, HeaderName};

/// Request headers forwarded upstream, besides every `mcp-*` one.
pub const ALLOWED: &[&str] = &[
    "accept",
    "content-type",
    "content-length",
    "last-event-id",
    "user-agent",
    "traceparent",
    "tracestate",
];

/// The prefix of the MCP headers, all forwarded.
pub const MCP_PREFIX: &str = "mcp-";

/// The query parameter OAuth bearer tokens travel in (RFC 6750 §2.3), never forwarded.
const ACCESS_TOKEN_PARAM: &str = "access_token";

/// The request headers to forward: the allowed ones and the integration's `extra` ones
/// (`Integration::forward_headers`), minus those `Connection` names (they are hop-by-hop) and
/// any that carries `agent_token`.
pub fn request_headers(src: &HeaderMap, extra: &[String], agent_token: Option<&str>) -> HeaderMap {
    let hop_by_hop = connection_named(src);
    let mut out = HeaderMap::with_capacity(src.len());
    for (name, value) in src {
        let n = name.as_str();
        if !(is_allowed(n) || extra.iter().any(|e| e == n))
            || hop_by_hop.iter().any(|h| h == n)
            || carries(value.as_bytes(), agent_token)
        {
            continue;
        }
        out.append(HeaderName::clone(name), value.clone());
    }
    out
}

/// The headers a `Connection` header names (lower-case): hop-by-hop, never relayed.
pub fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

/// Whether a request header of this (lower-case) name may be forwarded.
pub fn is_allowed(name: &str) -> bool {
    name.starts_with(MCP_PREFIX) || ALLOWED.contains(&name)
}

/// Drops the headers that carry `agent_token` (for headers the gateway picked itself).
pub fn without_token(mut headers: HeaderMap, agent_token: Option<&str>) -> HeaderMap {
    if agent_token.is_some() {
        let src = std::mem::take(&mut headers);
        for (name, value) in &src {
            if !carries(value.as_bytes(), agent_token) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    headers
}

/// The client's query string to forward: without `access_token` (in any case or encoding) and
/// without any parameter that carries `agent_token`; the others keep their exact bytes. `None`
/// when nothing is left, never an empty string.
pub fn query(raw: Option<&str>, agent_token: Option<&str>) -> Option<String> {
    let raw = raw.filter(|q| !q.is_empty())?;
    let kept: Vec<&str> = raw
        .split('&')
        .filter(|pair| {
            let Some((k, v)) = url::form_urlencoded::parse(pair.as_bytes()).next() else {
                return !pair.is_empty();
            };
            !k.eq_ignore_ascii_case(ACCESS_TOKEN_PARAM)
                && !carries(k.as_bytes(), agent_token)
                && !carries(v.as_bytes(), agent_token)
                && !carries(pair.as_bytes(), agent_token)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn carries(value: &[u8], token: Option<&str>) -> bool {
    let Some(token) = token.map(str::as_bytes) else {
        return false;
    };
    value.len() >= token.len() && value.windows(token.len()).any(|w| w == token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_allowed_headers_pass() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer agent"),
            ("x-api-key", "k"),
            ("x-auth-token", "k"),
            ("cookie", "a=b"),
            ("proxy-authorization", "Basic x"),
            ("mcp-session-id", "s"),
            ("mcp-param-region", "eu"),
            ("accept", "text/event-stream"),
            ("last-event-id", "3"),
            ("connection", "keep-alive, mcp-hop"),
            ("mcp-hop", "dropped"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let out = request_headers(&h, &[], keygate_auth::bearer_token(&h));
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "last-event-id",
                "mcp-param-region",
                "mcp-session-id"
            ]
        );
    }

    #[test]
    fn an_integration_adds_its_own_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("acme"));
        h.insert("x-other", HeaderValue::from_static("no"));
        let out = request_headers(&h, &["x-tenant".to_owned()], None);
        assert_eq!(
            out.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-tenant"]
        );
    }

    #[test]
    fn the_agent_token_travels_nowhere() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer tok.en"));
        h.insert("user-agent", HeaderValue::from_static("agent (tok.en)"));
        h.insert("mcp-param-x", HeaderValue::from_static("fine"));
        let out = request_headers(&h, &[], keygate_auth::bearer_token(&h));
        assert_eq!(
            out.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["mcp-param-x"]
        );
        let q = query(
            Some("a=1&access_token=x&ACCESS%5FTOKEN=y&b=tok.en&c=%20"),
            Some("tok.en"),
        );
        assert_eq!(q.as_deref(), Some("a=1&c=%20"));
        assert_eq!(query(Some("access_token=x"), None), None);
        assert_eq!(query(Some("&&"), None), None);
        assert_eq!(query(None, Some("t")), None);
    }
}
