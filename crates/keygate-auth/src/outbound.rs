//! The outbound HTTP client for URLs that users supply, with the SSRF guard: names are
//! resolved by [`GuardedResolver`], which drops loopback, private and link-local addresses
//! (`keygate_core::net::is_internal`) unless the host is on `outbound.allowed_private_hosts`;
//! IP-literal URLs are checked before connecting; redirects are not followed; bodies are
//! size-capped and every request has a deadline.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
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

/// The setting that exempts a host from the guard.
pub const ALLOW_LIST: &str = "outbound.allowed_private_hosts";

/// A refusal of an internal host (`what`: which host, and what it is) that says what lifts it.
fn private_refusal(what: &str) -> String {
    format!(
        "{what}; private and loopback addresses are refused unless `{ALLOW_LIST}` \
         (KEYGATE_OUTBOUND_ALLOWED_PRIVATE_HOSTS) lists the host, which also permits plain \
         http (local development)"
    )
}

/// What kind of internal address a host is, when that shows without resolving it: an IP
/// literal, or `localhost` (RFC 6761: loopback whatever DNS says).
fn internal_kind(host: &Host<&str>) -> Option<&'static str> {
    let ip: IpAddr = match host {
        Host::Ipv4(ip) => (*ip).into(),
        Host::Ipv6(ip) => (*ip).into(),
        Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            return (d == "localhost" || d.ends_with(".localhost")).then_some("loopback");
        }
    };
    is_internal(ip).then(|| kind_of(ip))
}

/// `loopback`, or `private` for every other internal range (RFC 1918, link-local, CGNAT,
/// reserved…).
fn kind_of(ip: IpAddr) -> &'static str {
    if ip.to_canonical().is_loopback() {
        "loopback"
    } else {
        "private"
    }
}

/// Resolves `host` and keeps only addresses the gateway may reach: public ones, or any when
/// the host is allow-listed (`allowed`). None left is an error, so nothing is contacted.
pub async fn resolve_guarded(host: &str, allowed: bool) -> std::io::Result<Vec<SocketAddr>> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let addrs: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|a| allowed || !is_internal(a.ip()))
        .collect();
    if addrs.is_empty() {
        let Some(first) = found.first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} resolves to no address"),
            ));
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            private_refusal(&format!(
                "{host} resolves only to {} addresses",
                kind_of(first.ip())
            )),
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

    /// Checks what can be checked before connecting: scheme, credentials, the host. A private
    /// or loopback host is reported as such before the scheme: listing it in
    /// `outbound.allowed_private_hosts` lifts both refusals.
    pub fn check(&self, url: &Url, require_https: bool) -> Result<(), OutboundError> {
        let refuse = |why: String| Err(OutboundError::Refused(format!("{}: {why}", named(url))));
        let exempt = self.is_allowed_private(url);
        if !matches!(url.scheme(), "http" | "https") {
            return refuse(format!("must use https (not {}:)", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return refuse("must not carry credentials".into());
        }
        let Some(host) = url.host() else {
            return refuse("has no host".into());
        };
        if !exempt && let Some(kind) = internal_kind(&host) {
            return refuse(private_refusal(&format!("{host} is a {kind} address")));
        }
        if url.scheme() == "http" && require_https && !exempt {
            return refuse(format!(
                "must use https; plain http is accepted only for hosts listed in \
                 `{ALLOW_LIST}` (local development)"
            ));
        }
        Ok(())
    }
}

/// A URL as a refusal names it: without its userinfo, query and fragment, which may carry
/// credentials (a pasted `user:password@`, a client's `?token=` forwarded on pass-through),
/// and the refusal goes to logs, traces and API answers.
fn named(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

impl Outbound {
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

    fn refusal(url: &str) -> String {
        Outbound::new(&[])
            .check(&Url::parse(url).unwrap(), true)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_refusal_names_the_url_without_its_credentials_or_query() {
        let m = refusal("https://user:hunter2@10.1.2.3/mcp?token=s3cret#frag");
        assert!(m.starts_with("https://10.1.2.3/mcp: "), "{m}");
        assert!(!m.contains("hunter2") && !m.contains("s3cret"), "{m}");
    }

    #[test]
    fn a_loopback_upstream_is_refused_naming_the_allow_list_not_https() {
        let m = refusal("http://127.0.0.1:9000/mcp");
        assert!(m.contains("127.0.0.1 is a loopback address"), "{m}");
        assert!(m.contains("`outbound.allowed_private_hosts`"), "{m}");
        assert!(!m.contains("must use https"), "{m}");
    }

    #[test]
    fn a_private_literal_over_https_is_refused_as_private() {
        let m = refusal("https://10.1.2.3/mcp");
        assert!(m.contains("10.1.2.3 is a private address"), "{m}");
        assert!(m.contains("`outbound.allowed_private_hosts`"), "{m}");
    }

    #[test]
    fn localhost_is_refused_as_loopback_before_resolving() {
        let m = refusal("http://localhost:3000/mcp");
        assert!(m.contains("localhost is a loopback address"), "{m}");
    }

    #[test]
    fn plain_http_to_a_public_host_is_refused_for_its_scheme() {
        let m = refusal("http://example.com/mcp");
        assert!(m.contains("must use https"), "{m}");
        assert!(
            !m.contains("loopback") && !m.contains("private address"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn resolver_refusal_names_the_allow_list() {
        let err = resolve_guarded("localhost", false).await.unwrap_err();
        let m = err.to_string();
        assert!(
            m.contains("localhost resolves only to loopback addresses"),
            "{m}"
        );
        assert!(m.contains("`outbound.allowed_private_hosts`"), "{m}");
    }

    #[tokio::test]
    async fn resolver_drops_internal_addresses() {
        let guard = Outbound::new(&[]);
        let err = guard
            .get_json(&Url::parse("https://localhost:9/doc").unwrap(), 1024)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
