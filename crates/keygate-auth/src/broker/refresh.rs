//! Handing out fresh upstream tokens, and revoking them.
//!
//! A token is refreshed ahead of expiry by `refresh_skew_secs`, clamped to a quarter of the
//! token's lifetime ([`MAX_SKEW_SHARE`]): a token that lives 10 s is refreshed once 7.5 s old,
//! not at once (with the default 60 s skew it would be "about to expire" from birth, and every
//! call would refresh it). So a token younger than three quarters of its lifetime is never
//! refreshed ahead of time; one the upstream refused is refreshed whatever its age.
//!
//! Each expiry costs one refresh. A caller notes the token version it judged stale (or the
//! token the upstream refused); concurrent requests in this process then wait on a
//! per-connection mutex, and replicas on a lease in the connection's row that is taken only
//! while that version is still the stored one (`Store::try_lease_refresh`). Whoever finds a
//! newer version than the one it noted takes it instead of refreshing again. A refresh the
//! provider refuses for good (`invalid_grant`, or no refresh token left) marks the connection
//! disconnected, so the user is asked to connect again; a provider that is merely failing
//! leaves it as it is.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use keygate_core::model::{AuthMode, Integration};
use keygate_core::{Secret, Timestamp, UserId};
use keygate_store::{OAuthConnection, OAuthTokens, StoreError};
use oauth2::basic::{BasicErrorResponseType, BasicTokenResponse};
use oauth2::{RefreshToken, RequestTokenError, TokenResponse};

use super::{Broker, BrokerError};
use crate::web::random_token;

/// How long a refresh lease holds before another replica may take over.
const LEASE_SECS: i64 = 30;
/// How long a caller waits for another replica's refresh before giving up.
const WAIT_FOR_PEER: Duration = Duration::from_secs(15);
/// The refresh skew is at most `1 / MAX_SKEW_SHARE` of a token's lifetime (`expires_in` at
/// issue), so a token is used for at least three quarters of its life before it is refreshed.
pub const MAX_SKEW_SHARE: i64 = 4;

/// An access token, when it expires, and from when it is refreshed before use.
#[derive(Clone, Debug)]
pub struct Fresh {
    pub access: Secret,
    pub expires_at: Option<Timestamp>,
    /// When the token becomes due for a refresh (`None`: never, it does not expire).
    pub refresh_at: Option<Timestamp>,
}

/// Which token a refresh replaces: it happens only while that one is still the stored one.
#[derive(Clone, Copy)]
enum Stale<'a> {
    /// The tokens at this version, due for a refresh.
    Version(i64),
    /// This access token, which the upstream refused.
    Refused(&'a Secret),
}

/// The tokens of a token response. A response without `expires_in` has no known expiry.
pub(crate) fn tokens_from(r: &BasicTokenResponse) -> OAuthTokens {
    let now = Timestamp::now();
    OAuthTokens {
        access: Secret::new(r.access_token().secret().clone()),
        refresh: r.refresh_token().map(|t| Secret::new(t.secret().clone())),
        expires_at: r
            .expires_in()
            .map(|d| now.plus_seconds(d.as_secs().min(i64::MAX as u64 / 1000) as i64)),
        issued_at: now,
    }
}

/// A token-endpoint failure as a [`BrokerError`], and whether the grant is gone for good. The
/// provider's body is never included (it may echo what was sent).
pub(crate) fn provider_error<RE: std::error::Error + 'static>(
    what: &str,
    e: &RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> (BrokerError, bool) {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let gone = matches!(
                r.error(),
                BasicErrorResponseType::InvalidGrant
                    | BasicErrorResponseType::InvalidClient
                    | BasicErrorResponseType::UnauthorizedClient
            );
            (
                BrokerError::Provider(format!("{what} refused: {}", r.error().as_ref())),
                gone,
            )
        }
        RequestTokenError::Request(e) => (
            BrokerError::Provider(format!(
                "{what} failed: {}",
                crate::outbound::error_chain(e)
            )),
            false,
        ),
        RequestTokenError::Parse(..) => (
            BrokerError::Provider(format!(
                "{what}: the provider's answer is not a token response"
            )),
            false,
        ),
        RequestTokenError::Other(why) => (
            BrokerError::Provider(format!(
                "{what} failed: {}",
                why.chars().take(200).collect::<String>()
            )),
            false,
        ),
    }
}

impl Broker {
    /// Whether a token due for a refresh at `refresh_at` ([`Fresh::refresh_at`]) may still be
    /// used as it is.
    pub fn is_fresh(&self, refresh_at: Option<Timestamp>) -> bool {
        refresh_at.is_none_or(|t| Timestamp::now() < t)
    }

    /// When `tokens` become due for a refresh: `refresh_skew_secs` before expiry, but never
    /// more than a quarter of their lifetime before it.
    pub fn refresh_at(&self, tokens: &OAuthTokens) -> Option<Timestamp> {
        due(tokens, self.refresh_skew_secs)
    }

    fn fresh(&self, tokens: OAuthTokens) -> Fresh {
        Fresh {
            refresh_at: self.refresh_at(&tokens),
            expires_at: tokens.expires_at,
            access: tokens.access,
        }
    }

    /// The user's current access token for an OAuth integration, refreshed first when it is
    /// about to expire.
    pub async fn access_token(
        &self,
        integration: &Integration,
        user: UserId,
    ) -> Result<Fresh, BrokerError> {
        let conn = self.connection(integration, user).await?;
        if self.is_fresh(self.refresh_at(&conn.tokens)) {
            return Ok(self.fresh(conn.tokens));
        }
        self.refresh(integration, user, Stale::Version(conn.version))
            .await
    }

    /// After the upstream refused `rejected`: a token other than the refused one if a peer
    /// already refreshed, else one refresh.
    pub async fn refresh_rejected(
        &self,
        integration: &Integration,
        user: UserId,
        rejected: &Secret,
    ) -> Result<Fresh, BrokerError> {
        self.refresh(integration, user, Stale::Refused(rejected))
            .await
    }

    async fn connection(
        &self,
        integration: &Integration,
        user: UserId,
    ) -> Result<OAuthConnection, BrokerError> {
        match self
            .store()
            .oauth_connection(integration.org_id, integration.id, user)
            .await
        {
            Ok(c) if c.connection.connected => Ok(c),
            Ok(_) => Err(BrokerError::Disconnected),
            Err(StoreError::NotFound) => Err(BrokerError::NotConnected),
            Err(e) => Err(e.into()),
        }
    }

    async fn refresh(
        &self,
        integration: &Integration,
        user: UserId,
        stale: Stale<'_>,
    ) -> Result<Fresh, BrokerError> {
        let key = (integration.id, user);
        let lock = self.locks.entry(key).or_default().clone();
        let result = {
            let _held = lock.lock().await;
            self.refresh_locked(integration, user, stale).await
        };
        drop(lock);
        self.locks.remove_if(&key, |_, l| Arc::strong_count(l) == 1);
        result
    }

    /// Refreshes the `stale` tokens unless someone already replaced them: another request here
    /// (which held the mutex first) or another replica (which held the lease).
    async fn refresh_locked(
        &self,
        integration: &Integration,
        user: UserId,
        stale: Stale<'_>,
    ) -> Result<Fresh, BrokerError> {
        let (org, id) = (integration.org_id, integration.id);
        let deadline = tokio::time::Instant::now() + WAIT_FOR_PEER;
        loop {
            let conn = self.connection(integration, user).await?;
            let replaced = match stale {
                Stale::Version(v) => conn.version != v,
                Stale::Refused(r) => conn.tokens.access != *r,
            };
            if replaced {
                return Ok(self.fresh(conn.tokens));
            }
            let owner = random_token();
            let lease = Timestamp::now().plus_seconds(LEASE_SECS);
            // Only while the row still holds the tokens just read: a replica that refreshed
            // and released the lease in between is seen on the next turn.
            if self
                .store()
                .try_lease_refresh(org, id, user, &owner, lease, conn.version)
                .await?
            {
                return self.refresh_leased(integration, user, &owner, conn).await;
            }
            // Another replica is refreshing; its result shows up in the row.
            if tokio::time::Instant::now() > deadline {
                return Err(BrokerError::Provider(
                    "another replica's refresh did not finish".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn refresh_leased(
        &self,
        integration: &Integration,
        user: UserId,
        owner: &str,
        conn: OAuthConnection,
    ) -> Result<Fresh, BrokerError> {
        let (org, id) = (integration.org_id, integration.id);
        let store = self.store();
        let Some(refresh) = conn.tokens.refresh else {
            store.end_refresh(org, id, user, owner, true).await?;
            return Err(BrokerError::Disconnected);
        };
        let outcome = async {
            let endpoints = self.endpoints(integration).await.map_err(|e| (e, false))?;
            let client = self.client(&endpoints).map_err(|e| (e, false))?;
            let token = RefreshToken::new(refresh.expose().to_owned());
            let mut request = client.exchange_refresh_token(&token);
            if let Some(resource) = &endpoints.resource {
                request = request.add_extra_param("resource", resource.clone());
            }
            request
                .request_async(&self.http())
                .await
                .map_err(|e| provider_error("refresh", &e))
        }
        .await;
        match outcome {
            Ok(response) => {
                let tokens = tokens_from(&response);
                store.store_refreshed(org, id, user, owner, &tokens).await?;
                tracing::info!(integration = %id, user = %user, "upstream OAuth token refreshed");
                Ok(self.fresh(tokens))
            }
            Err((e, gone)) => {
                store.end_refresh(org, id, user, owner, gone).await?;
                tracing::warn!(integration = %id, user = %user, error = %e, disconnected = gone, "upstream OAuth refresh failed");
                Err(if gone { BrokerError::Disconnected } else { e })
            }
        }
    }

    /// Deletes a user's connection, first revoking its tokens at the provider (RFC 7009) when
    /// it has a revocation endpoint. A provider that fails to revoke does not keep the sealed
    /// tokens alive here. Returns whether a connection existed.
    pub async fn disconnect(
        &self,
        integration: &Integration,
        user: UserId,
    ) -> Result<bool, BrokerError> {
        let (org, id) = (integration.org_id, integration.id);
        if integration.auth_mode == AuthMode::Oauth {
            match self.store().oauth_connection(org, id, user).await {
                Ok(conn) => self.revoke(integration, conn.tokens).await,
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.store().delete_connection(org, id, user).await?)
    }

    /// RFC 7009 at the provider's revocation endpoint, best effort: failures are logged (by
    /// the endpoint's origin and status, never the token). Sent by hand rather than through
    /// the oauth2 crate, which refuses plain-http endpoints even where the SSRF guard's
    /// development allow-list permits them.
    async fn revoke(&self, integration: &Integration, tokens: OAuthTokens) {
        let endpoints = match self.endpoints(integration).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(integration = %integration.id, error = %e, "upstream revocation skipped");
                return;
            }
        };
        let Some(url) = endpoints.revocation_url.clone() else {
            return;
        };
        // Revoking the refresh token ends the grant (RFC 7009 §2.1); the access token too, for
        // providers that track them separately.
        let mut revocable = Vec::new();
        if let Some(r) = tokens.refresh {
            revocable.push((r, "refresh_token"));
        }
        revocable.push((tokens.access, "access_token"));
        for (token, hint) in revocable {
            let Some(req) = revocation_request(&endpoints, &url, &token, hint) else {
                return;
            };
            match self
                .outbound
                .execute(req, super::MAX_PROVIDER_RESPONSE)
                .await
            {
                Ok(resp) if resp.status().is_success() => {}
                Ok(resp) => {
                    tracing::warn!(integration = %integration.id, status = %resp.status(), "upstream revocation refused")
                }
                Err(e) => {
                    tracing::warn!(integration = %integration.id, error = %e, "upstream revocation failed")
                }
            }
        }
    }
}

/// An RFC 7009 revocation request with the client's authentication.
fn revocation_request(
    endpoints: &super::Endpoints,
    url: &url::Url,
    token: &Secret,
    hint: &str,
) -> Option<http::Request<Vec<u8>>> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("token", token.expose())
        .append_pair("token_type_hint", hint);
    let mut req = http::Request::post(url.as_str()).header(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded",
    );
    match (&endpoints.client_secret, endpoints.secret_in_body) {
        (Some(secret), false) => {
            let encode =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                encode(&endpoints.client_id),
                encode(secret.expose())
            ));
            let mut value = http::HeaderValue::from_str(&format!("Basic {basic}"))
                .unwrap_or_else(|_| http::HeaderValue::from_static(""));
            value.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, value);
        }
        (Some(secret), true) => {
            form.append_pair("client_id", &endpoints.client_id)
                .append_pair("client_secret", secret.expose());
        }
        (None, _) => {
            form.append_pair("client_id", &endpoints.client_id);
        }
    }
    req.body(form.finish().into_bytes()).ok()
}

/// When `tokens` become due for a refresh with a skew of `skew_secs`, clamped to
/// `1 / MAX_SKEW_SHARE` of their lifetime.
fn due(tokens: &OAuthTokens, skew_secs: i64) -> Option<Timestamp> {
    let expires = tokens.expires_at?.millis();
    let lifetime = (expires - tokens.issued_at.millis()).max(0);
    let skew = skew_secs
        .saturating_mul(1000)
        .min(lifetime / MAX_SKEW_SHARE);
    Some(Timestamp::from_millis(expires - skew))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(issued: i64, lifetime_ms: Option<i64>) -> OAuthTokens {
        OAuthTokens {
            access: Secret::new("a"),
            refresh: None,
            expires_at: lifetime_ms.map(|l| Timestamp::from_millis(issued + l)),
            issued_at: Timestamp::from_millis(issued),
        }
    }

    #[test]
    fn the_skew_is_at_most_a_quarter_of_the_lifetime() {
        let at = |lifetime, skew| due(&tokens(1_000_000, lifetime), skew).map(|t| t.millis());
        // A 10 s token with the default 60 s skew: refreshed once 7.5 s old, not at birth.
        assert_eq!(at(Some(10_000), 60), Some(1_007_500));
        // A one-hour token: the configured skew.
        assert_eq!(
            at(Some(3_600_000), 60),
            Some(1_000_000 + 3_600_000 - 60_000)
        );
        // Already expired when issued: due at once. No expiry: never due.
        assert_eq!(at(Some(0), 60), Some(1_000_000));
        assert_eq!(at(None, 60), None);
    }
}
