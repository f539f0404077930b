//! Rate limit of the management API (GCRA via `governor`), keyed on who is calling: the
//! verified principal (service account or user) once its bearer token checks out, else the
//! client address. Minting fresh tokens does not buy a principal a fresh allowance, and
//! requests with a missing, invalid or garbage token all count against their address.
//!
//! The middleware verifies the caller itself and hands the [`Caller`] on in the request's
//! extensions, so handlers do not verify twice.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use keygate_auth::limits::{ClientIp, retry_after_secs};
use keygate_core::{ServiceAccountId, UserId};

use crate::ApiState;
use crate::caller::{Caller, CallerKind};
use crate::error::ApiError;

/// What a request is counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    ServiceAccount(ServiceAccountId),
    User(UserId),
    /// Not (yet) a principal: no token, or one that did not verify.
    Address(IpAddr),
}

/// A keyed limiter.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<DefaultKeyedRateLimiter<Key>>,
}

impl Limiter {
    pub fn per_minute(n: u32) -> Self {
        let n = NonZeroU32::new(n.max(1)).expect("max(1) is non-zero");
        Self {
            inner: Arc::new(RateLimiter::keyed(Quota::per_minute(n))),
        }
    }

    /// Forgets keys whose quota has fully replenished; call periodically.
    pub fn prune(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

/// Middleware: 429 with `Retry-After` once a principal or address exceeds its quota.
pub async fn layer(
    State((state, limiter)): State<(ApiState, Limiter)>,
    mut req: Request,
    next: Next,
) -> Response {
    let key = match Caller::resolve(&state, req.headers()).await {
        Ok(caller) => {
            let key = match &caller.kind {
                CallerKind::ServiceAccount { id, .. } => Key::ServiceAccount(*id),
                CallerKind::User { id, .. } => Key::User(*id),
            };
            req.extensions_mut().insert(caller);
            key
        }
        Err(_) => Key::Address(ClientIp::of(req.extensions()).0),
    };
    match limiter.inner.check_key(&key) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            if let Key::Address(ip) = &key {
                tracing::info!(%ip, "management API rate limit reached");
            }
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after: retry_after_secs(wait),
            }
            .into_response()
        }
    }
}
