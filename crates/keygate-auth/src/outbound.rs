//! The outbound HTTP client for URLs that users supply, with the SSRF guard: names are
//! resolved by [`GuardedResolver`], which drops loopback, private and link-local addresses
//! (`keygate_core::net::is_internal`) unless the host is on `outbound.allowed_private_hosts`;
//! IP-literal URLs are checked before connecting; redirects are not followed; bodies are
//! size-capped and every request has a deadline.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keygate_core::net::is_internal;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Why an outbound URL or request was refused.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{0}")]
    Refused(String),
    #[error("request failed: {0}")]
    Failed(String),
}

/// Resolves `host` and keeps only addresses the gateway may reach: public ones, or any when
/// the host is allow-listed (`allowed`). None left is an error, so nothing is contacted.
pub async fn resolve_guarded(host: &str, allowed: bool) -> std::io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await?
        .filter(|a| allowed || !is_internal(a.ip()))
        .collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{host} resolves only to internal addresses"),
        ));
    }
    Ok(addrs)
}

struct GuardedResolver {
    allowed: Arc<HashSet<String>>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let allowed = self.allowed.contains(&host);
        Box::pin(async move {
            let addrs = resolve_guarded(&host, allowed).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A guarded HTTP client.
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    allowed: Arc<HashSet<String>>,
}

impl Outbound {
    pub fn new(allowed_private_hosts: &[String]) -> Self {
        let allowed: Arc<HashSet<String>> = Arc::new(
            allowed_private_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        );
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                allowed: allowed.clone(),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("keygate/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a rustls client with default settings builds");
        Self { client, allowed }
    }

    /// Whether the host is exempt from the guard (local development).
    pub fn is_allowed_private(&self, url: &Url) -> bool {
        url.host_str().is_some_and(|h| {
            self.allowed
                .contains(&h.trim_matches(['[', ']']).to_ascii_lowercase())
        })
    }

    /// Checks what can be checked before connecting: scheme, credentials, IP literals.
    pub fn check(&self, url: &Url, require_https: bool) -> Result<(), OutboundError> {
        let refuse = |why: &str| Err(OutboundError::Refused(format!("{url}: {why}")));
        let exempt = self.is_allowed_private(url);
        match url.scheme() {
            "https" => {}
            "http" if !require_https || exempt => {}
            _ => return refuse("must use https"),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return refuse("must not carry credentials");
        }
        let internal_literal = match url.host() {
            Some(Host::Ipv4(ip)) => is_internal(ip.into()),
            Some(Host::Ipv6(ip)) => is_internal(ip.into()),
            Some(Host::Domain(_)) => false,
            None => return refuse("has no host"),
        };
        if internal_literal && !exempt {
            return refuse("points at an internal address");
        }
        Ok(())
    }

    /// Sends a request and reads at most `max_bytes` of the answer, whatever its status. What
    /// the OAuth client library and discovery use; the body may carry secrets, so it is never
    /// logged and never part of an error.
    pub async fn execute(
        &self,
        req: http::Request<Vec<u8>>,
        max_bytes: usize,
    ) -> Result<http::Response<Vec<u8>>, OutboundError> {
        let url = Url::parse(&req.uri().to_string())
            .map_err(|_| OutboundError::Refused("not an absolute URL".into()))?;
        self.check(&url, true)?;
        let (parts, body) = req.into_parts();
        let mut resp = self
            .client
            .request(parts.method, url.clone())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| OutboundError::Failed(error_chain(&e)))?;
        let mut out = http::Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| OutboundError::Failed(error_chain(&e)))?
        {
            if body.len() + chunk.len() > max_bytes {
                return Err(OutboundError::Failed(format!(
                    "{} answered more than {max_bytes} bytes",
                    url.origin().ascii_serialization()
                )));
            }
            body.extend_from_slice(&chunk);
        }
        out.body(body)
            .map_err(|e| OutboundError::Failed(e.to_string()))
    }

    /// GETs a JSON document of at most `max_bytes`.
    pub async fn get_json(
        &self,
        url: &Url,
        max_bytes: usize,
    ) -> Result<serde_json::Value, OutboundError> {
        let fail = |e: &dyn std::error::Error| OutboundError::Failed(error_chain(e));
        let mut resp = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(&e))?;
        if !resp.status().is_success() {
            return Err(OutboundError::Failed(format!(
                "{url} answered {}",
                resp.status()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(&e))? {
            if body.len() + chunk.len() > max_bytes {
                return Err(OutboundError::Failed(format!(
                    "{url} is larger than {max_bytes} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| fail(&e))
    }
}

/// An error and its causes, `outer: inner: root` (reqwest hides the cause in `Display`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_internal_targets_unless_allowed() {
        let guard = Outbound::new(&["127.0.0.1".to_owned()]);
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(guard.check(&url("https://example.com/x"), true).is_ok());
        assert!(guard.check(&url("http://example.com/x"), true).is_err());
        assert!(guard.check(&url("https://10.0.0.1/x"), true).is_err());
        assert!(guard.check(&url("https://[::1]/x"), true).is_err());
        assert!(
            guard
                .check(&url("https://169.254.169.254/latest"), false)
                .is_err()
        );
        assert!(
            guard
                .check(&url("https://user:pw@example.com/"), true)
                .is_err()
        );
        assert!(
            guard.check(&url("http://127.0.0.1:9/x"), true).is_ok(),
            "allow-listed host"
        );
    }

    #[tokio::test]
    async fn resolver_drops_internal_addresses() {
        let guard = Outbound::new(&[]);
        let err = guard
            .get_json(&Url::parse("https://localhost:9/doc").unwrap(), 1024)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("internal"), "{err}");
    }
}
