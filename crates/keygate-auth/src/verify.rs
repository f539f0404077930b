//! Verifying access tokens for a resource server: signature, issuer, audience and expiry
//! (`KeyRing::verify`), then liveness — the token's `jti` is not revoked and its agent
//! session is active — so revocations take effect at once on every replica.
//!
//! Both steps are cached: a verified signature until the token's `exp` (it cannot change),
//! liveness for the store's current change generation (any revocation, here or on another
//! replica, moves it).

use keygate_core::Timestamp;
use keygate_store::GenCache;

use crate::claims::Claims;
use crate::keys::VerifyError;
use crate::router::AuthState;

/// Verified tokens and their liveness.
#[derive(Default)]
pub struct TokenCache {
    verified: GenCache<String, Claims>,
    live: GenCache<String, bool>,
}

impl AuthState {
    /// Verifies a bearer token for `audience` and checks it has not been revoked.
    pub async fn verify_access_token(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<Claims, VerifyError> {
        self.verify_access_token_for(token, &[audience]).await
    }

    /// Like [`AuthState::verify_access_token`], accepting any of `audiences`. The signature is
    /// checked once per token, whatever audience it is then presented for.
    pub async fn verify_access_token_for(
        &self,
        token: &str,
        audiences: &[&str],
    ) -> Result<Claims, VerifyError> {
        let claims = match self.tokens.verified.get(token, 0) {
            Some(c) => c,
            None => {
                let c = self.keys.verify_signature(token).await?;
                self.tokens.verified.put(token.to_owned(), 0, c.clone());
                c
            }
        };
        if claims.exp <= Timestamp::now().seconds() {
            return Err(VerifyError::Expired);
        }
        if !audiences.contains(&claims.aud.as_str()) {
            return Err(VerifyError::Invalid);
        }
        let generation = self.store.generation();
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
            Ok(claims)
        } else {
            Err(VerifyError::Revoked)
        }
    }
}
