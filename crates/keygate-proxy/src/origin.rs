//! DNS-rebinding protection, as the MCP transport requires of servers: a browser page on a
//! foreign origin must not drive the gateway through a user's browser. A request without
//! `Origin` (a non-browser client) or from the public URL's origin or one of
//! `mcp.allowed_origins` is served; any other `Origin` — `null` included — is refused with
//! `403` before authentication, on every MCP endpoint (checked first in
//! [`crate::stage::authenticate`]).

use axum::http::HeaderMap;
use axum::http::header::ORIGIN;
use url::Url;

/// The origins allowed to call the MCP endpoints, as browsers serialize them
/// (`scheme://host[:port]`, default port omitted).
#[derive(Clone, Debug)]
pub struct AllowedOrigins {
    origins: Vec<String>,
}

impl AllowedOrigins {
    /// The public URL's origin and `extra` (validated by the config as origins).
    pub fn new(public_url: &str, extra: &[String]) -> Self {
        let origins = std::iter::once(public_url)
            .chain(extra.iter().map(String::as_str))
            .filter_map(serialize)
            .collect();
        Self { origins }
    }

    /// Whether a request with these headers may be served: no `Origin`, or exactly one that is
    /// allowed.
    pub fn permits(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(ORIGIN).iter();
        let Some(first) = values.next() else {
            return true;
        };
        if values.next().is_some() {
            return false;
        }
        let Ok(origin) = first.to_str() else {
            return false;
        };
        self.origins.iter().any(|o| o == origin)
            || serialize(origin).is_some_and(|s| self.origins.contains(&s))
    }
}

/// `scheme://host[:port]` of a URL with a host; `None` for an opaque origin (`null`).
fn serialize(url: &str) -> Option<String> {
    let origin = Url::parse(url).ok()?.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(origins: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for o in origins {
            h.append(ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn own_listed_and_absent_origins_pass() {
        let allowed = AllowedOrigins::new(
            "https://kg.example:443/",
            &["http://localhost:5173".to_owned()],
        );
        for ok in [
            &[][..],
            &["https://kg.example"],
            &["HTTPS://KG.example:443"],
            &["http://localhost:5173"],
        ] {
            assert!(allowed.permits(&with(ok)), "{ok:?}");
        }
        for refused in [
            &["null"][..],
            &["http://kg.example"],
            &["https://kg.example:8443"],
            &["https://kg.example.evil.example"],
            &["http://localhost:5174"],
            &["https://kg.example", "https://evil.example"],
            &["not a url"],
        ] {
            assert!(!allowed.permits(&with(refused)), "{refused:?}");
        }
    }
}
