//! Per-credential rate limit of the management API (GCRA via `governor`). The key is a hash of
//! the `Authorization` header, or the peer address for unauthenticated requests, so one noisy
//! client cannot starve the others.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// A keyed limiter with its hasher.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<DefaultKeyedRateLimiter<u64>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Limiter {
    pub fn per_minute(n: u32) -> Self {
        let n = NonZeroU32::new(n.max(1)).expect("max(1) is non-zero");
        Self {
            inner: Arc::new(RateLimiter::keyed(Quota::per_minute(n))),
            hasher: Default::default(),
        }
    }

    fn key(&self, req: &Request) -> u64 {
        let mut h = self.hasher.build_hasher();
        match req.headers().get(AUTHORIZATION) {
            Some(auth) => auth.as_bytes().hash(&mut h),
            None => req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .hash(&mut h),
        }
        h.finish()
    }
}

/// Middleware: 429 with `Retry-After` once a key exceeds its quota.
pub async fn layer(State(limiter): State<Limiter>, req: Request, next: Next) -> Response {
    let key = limiter.key(&req);
    match limiter.inner.check_key(&key) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::RateLimited {
                retry_after: retry_after.max(1),
            }
            .into_response()
        }
    }
}

impl Limiter {
    /// Forgets keys whose quota has fully replenished; call periodically.
    pub fn prune(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}
