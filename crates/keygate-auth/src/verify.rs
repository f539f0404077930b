//! Verifying access tokens for a resource server: signature, issuer, audience and expiry
//! (`KeyRing::verify`), then liveness — the token's `jti` is not revoked and its agent
//! session is active — so revocations take effect at once on every replica.
//!
//! Both steps are cached: a verified signature until the token's `exp` (it cannot change),
//! liveness for the store's current change generation (any revocation, here or on another
//! replica, moves it).

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use keygate_core::Timestamp;
use keygate_store::GenCache;

use crate::claims::Claims;
use crate::keys::VerifyError;
use crate::router::AuthState;

/// Verified tokens kept at once; a full cache starts over.
const CAPACITY: usize = 100_000;

/// Verified tokens and their liveness.
#[derive(Default)]
pub struct TokenCache {
    /// By a fast hash of the token (several hundred characters, hashed on every request); the
    /// token itself is compared in full on a hit.
    verified: DashMap<u64, Arc<Verified>, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
    live: GenCache<String, bool>,
}

/// A token whose signature checked out.
struct Verified {
    token: Box<str>,
    claims: Arc<Claims>,
    /// The change generation at which the token was last found live (`u64::MAX`: never).
    live_at: AtomicU64,
}

impl TokenCache {
    /// The verified token, if it was verified before.
    fn get(&self, key: u64, token: &str) -> Option<Arc<Verified>> {
        self.verified
            .get(&key)
            .filter(|v| *v.token == *token)
            .map(|v| v.clone())
    }

    fn put(&self, key: u64, token: &str, claims: Claims) -> Arc<Verified> {
        let verified = Arc::new(Verified {
            token: token.into(),
            claims: Arc::new(claims),
            live_at: AtomicU64::new(u64::MAX),
        });
        if self.verified.len() >= CAPACITY {
            self.verified.clear();
        }
        self.verified.insert(key, verified.clone());
        verified
    }
}

impl AuthState {
    /// Verifies a bearer token for `audience` and checks it has not been revoked.
    pub async fn verify_access_token(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<Claims, VerifyError> {
        self.verify_access_token_where(token, |aud| aud == audience)
            .await
            .map(Arc::unwrap_or_clone)
    }

    /// Like [`AuthState::verify_access_token`], accepting a token whose `aud` the caller
    /// `accepts`. The signature is checked once per token, whatever audience it is then
    /// presented for.
    pub async fn verify_access_token_where(
        &self,
        token: &str,
        accepts: impl Fn(&str) -> bool,
    ) -> Result<Arc<Claims>, VerifyError> {
        let key = self.tokens.hasher.hash_one(token);
        let verified = match self.tokens.get(key, token) {
            Some(v) => v,
            None => {
                let c = self.keys.verify_signature(token).await?;
                self.tokens.put(key, token, c)
            }
        };
        let claims = &verified.claims;
        if claims.exp <= Timestamp::now().seconds() {
            return Err(VerifyError::Expired);
        }
        if !accepts(&claims.aud) {
            return Err(VerifyError::Invalid);
        }
        let generation = self.store.generation();
        if verified.live_at.load(Ordering::Acquire) == generation {
            return Ok(claims.clone());
        }
        let live = match self.tokens.live.get(claims.jti.as_str(), generation) {
            Some(live) => live,
            None => match self
                .store
                .access_token_is_live(&claims.jti, claims.sid)
                .await
            {
                Ok(live) => {
                    self.tokens.live.put(claims.jti.clone(), generation, live);
                    live
                }
                Err(e) => {
                    tracing::error!(error = %e, "token liveness check failed");
                    return Err(VerifyError::Unavailable);
                }
            },
        };
        if live {
            verified.live_at.store(generation, Ordering::Release);
            Ok(claims.clone())
        } else {
            Err(VerifyError::Revoked)
        }
    }
}
