//! Verifying access tokens for a resource server: signature, issuer, audience and expiry
//! (`KeyRing::verify`), then liveness — the token's `jti` is not revoked and its agent
//! session is active — so revocations take effect at once on every replica.

use crate::claims::Claims;
use crate::keys::VerifyError;
use crate::router::AuthState;

impl AuthState {
    /// Verifies a bearer token for `audience` and checks it has not been revoked.
    pub async fn verify_access_token(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<Claims, VerifyError> {
        let claims = self.keys.verify(token, audience).await?;
        match self
            .store
            .access_token_is_live(&claims.jti, claims.sid)
            .await
        {
            Ok(true) => Ok(claims),
            Ok(false) => Err(VerifyError::Revoked),
            Err(e) => {
                tracing::error!(error = %e, "token liveness check failed");
                Err(VerifyError::Unavailable)
            }
        }
    }
}
