//! The upstream HTTP client: hyper-util over rustls (HTTP/1.1 and HTTP/2), one connection pool
//! for all integrations, and a resolver that refuses internal addresses unless the host is on
//! `outbound.allowed_private_hosts`.
//!
//! The pool has a timer: an upstream connection idle for `proxy.upstream_idle_timeout_secs`
//! is closed (without one, hyper only notices expiry when the connection is next checked out,
//! so a burst leaves its sockets open for good).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use keygate_auth::outbound::{Outbound, resolve_guarded};
use url::Url;

use crate::error::ProxyError;

/// DNS resolution with the SSRF guard (`resolve_guarded`, shared with the auth crate's client).
#[derive(Clone)]
pub struct GuardedDns {
    allowed: Arc<HashSet<String>>,
}

impl tower_service::Service<Name> for GuardedDns {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_ascii_lowercase();
        let allowed = self.allowed.contains(&host);
        Box::pin(async move { Ok(resolve_guarded(&host, allowed).await?.into_iter()) })
    }
}

/// How long the gateway waits on upstreams.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For response headers (`proxy.upstream_header_timeout_secs`).
    pub header: Duration,
    /// Before an idle pooled connection is closed (`proxy.upstream_idle_timeout_secs`).
    pub pool_idle: Duration,
    /// Between two bytes of a relayed answer (`proxy.stream_idle_timeout_secs`).
    pub stream_idle: Duration,
}

/// The shared upstream client.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector<GuardedDns>>, Body>,
    guard: Outbound,
    timeouts: Timeouts,
}

impl Upstream {
    /// A client that refuses internal addresses outside `allowed_private_hosts` and waits on
    /// upstreams as `timeouts` say.
    pub fn new(allowed_private_hosts: &[String], timeouts: Timeouts) -> Self {
        let allowed: Arc<HashSet<String>> = Arc::new(
            allowed_private_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        );
        let mut http = HttpConnector::new_with_resolver(GuardedDns { allowed });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(timeouts.pool_idle)
            .build(https);
        Self {
            client,
            guard: Outbound::new(allowed_private_hosts),
            timeouts,
        }
    }

    /// How long a relayed answer may stay silent.
    pub fn stream_idle_timeout(&self) -> Duration {
        self.timeouts.stream_idle
    }

    /// Refuses URLs the gateway must not call: non-https (outside the allow-list), embedded
    /// credentials, internal IP literals.
    pub fn check(&self, url: &Url) -> Result<(), ProxyError> {
        self.guard
            .check(url, true)
            .map_err(|e| ProxyError::Misconfigured {
                integration: None,
                what: "the SSRF guard refuses the URL",
                cause: Some(Box::new(e)),
            })
    }

    /// Sends a request; the response body streams as it arrives.
    pub async fn send(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.timeouts.header, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ProxyError::upstream("sending", e)),
            Err(_) => Err(ProxyError::UpstreamTimeout { integration: None }),
        }
    }
}
