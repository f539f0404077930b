//! Users' OAuth connections to upstream providers: authorization requests in flight, clients
//! registered at discovered authorization servers, and the sealed token pair of each connection
//! with the lease that keeps refreshes single-flight across replicas: a refresh leases the row
//! only while the token version it judged stale is still the stored one.

use keygate_core::model::{Connection, ConnectionKind};
use keygate_core::{IntegrationId, OrgId, Secret, Timestamp, UserId};

use super::RowExt;
use super::connections::{StoredCredential, ctx};
use crate::sql::Sql;
use crate::vault::{Purpose, SealContext};
use crate::{Result, Store, StoreError};

/// A connection's tokens, opened.
#[derive(Clone, Debug)]
pub struct OAuthTokens {
    pub access: Secret,
    pub refresh: Option<Secret>,
    pub expires_at: Option<Timestamp>,
    /// When the provider issued the access token (its lifetime is `expires_at - issued_at`).
    pub issued_at: Timestamp,
}

/// An OAuth connection and its tokens.
#[derive(Clone, Debug)]
pub struct OAuthConnection {
    pub connection: Connection,
    pub tokens: OAuthTokens,
    /// Bumped by every write of the tokens; what a refresh lease is conditional on.
    pub version: i64,
}

/// What a consumed authorization-request state was bound to.
#[derive(Debug)]
pub struct FlowState {
    pub org: OrgId,
    pub integration: IntegrationId,
    pub user: UserId,
    /// The payload sealed at the start (PKCE verifier, where to return).
    pub payload: Vec<u8>,
}

fn client_ctx(org: OrgId, integration: IntegrationId) -> SealContext {
    SealContext {
        purpose: Purpose::DiscoveredClientSecret,
        org: Some(org),
        integration: Some(integration),
        user: None,
    }
}

/// `… WHERE org_id = ? AND integration_id = ? AND user_id = ?`
fn scoped(sql: &mut Sql, org: OrgId, integration: IntegrationId, user: UserId) {
    sql.push(" WHERE org_id = ")
        .bind(org.to_string())
        .push(" AND integration_id = ");
    sql.bind(integration.to_string())
        .push(" AND user_id = ")
        .bind(user.to_string());
}

impl Store {
    /// Records an authorization request toward a provider; `payload` is sealed to it.
    pub async fn insert_flow_state(
        &self,
        state_hash: &str,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
        payload: &[u8],
        expires_at: Timestamp,
    ) -> Result<()> {
        let sealed = self.vault.seal(
            &ctx(Purpose::OAuthFlowState, org, integration, user),
            payload,
        );
        let mut sql = Sql::new(
            "INSERT INTO upstream_oauth_states (state_hash, org_id, integration_id, user_id, \
             sealed, created_at, expires_at) VALUES (",
        );
        sql.bind(state_hash)
            .push(", ")
            .bind(org.to_string())
            .push(", ");
        sql.bind(integration.to_string())
            .push(", ")
            .bind(user.to_string());
        sql.push(", ")
            .bind(sealed)
            .push(", ")
            .bind(Timestamp::now().millis());
        sql.push(", ").bind(expires_at.millis()).push(")");
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    /// Consumes a live authorization-request state: the first caller gets it, every later one
    /// (and any caller after expiry) gets `NotFound`.
    pub async fn take_flow_state(&self, state_hash: &str) -> Result<FlowState> {
        let mut sql = Sql::new("DELETE FROM upstream_oauth_states WHERE state_hash = ");
        sql.bind(state_hash)
            .push(" AND expires_at > ")
            .bind(Timestamp::now().millis());
        sql.push(" RETURNING org_id, integration_id, user_id, sealed");
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        let (org, integration, user) = (
            row.id("org_id")?,
            row.id("integration_id")?,
            row.id("user_id")?,
        );
        let sealed = row.blob("sealed")?.ok_or(StoreError::NotFound)?;
        let payload = self.vault.open(
            &ctx(Purpose::OAuthFlowState, org, integration, user),
            &sealed,
        )?;
        Ok(FlowState {
            org,
            integration,
            user,
            payload,
        })
    }

    /// The client registered for an integration at its discovered authorization server.
    pub async fn discovered_oauth_client(
        &self,
        org: OrgId,
        integration: IntegrationId,
    ) -> Result<Option<(serde_json::Value, Option<Secret>)>> {
        let mut sql =
            Sql::new("SELECT config, client_secret FROM upstream_oauth_clients WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND integration_id = ")
            .bind(integration.to_string());
        let Some(row) = sql.query().fetch_optional(self.db.pool()).await? else {
            return Ok(None);
        };
        let secret = match row.blob("client_secret")? {
            Some(sealed) => Some(Secret::new(
                self.vault
                    .open_string(&client_ctx(org, integration), &sealed)?,
            )),
            None => None,
        };
        Ok(Some((row.json("config")?, secret)))
    }

    /// Remembers what discovery and registration produced, replacing any earlier result.
    pub async fn put_discovered_oauth_client(
        &self,
        org: OrgId,
        integration: IntegrationId,
        config: &serde_json::Value,
        secret: Option<&Secret>,
    ) -> Result<()> {
        let sealed = secret.map(|s| {
            self.vault
                .seal(&client_ctx(org, integration), s.expose().as_bytes())
        });
        let mut sql = Sql::new(
            "INSERT INTO upstream_oauth_clients (integration_id, org_id, config, client_secret, \
             created_at) VALUES (",
        );
        sql.bind(integration.to_string())
            .push(", ")
            .bind(org.to_string())
            .push(", ");
        sql.bind(config.to_string())
            .push(", ")
            .bind(sealed)
            .push(", ");
        sql.bind(Timestamp::now().millis()).push(
            ") ON CONFLICT (integration_id) DO UPDATE SET config = excluded.config, \
             client_secret = excluded.client_secret, created_at = excluded.created_at",
        );
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    /// Stores (or replaces) a user's OAuth connection with freshly granted tokens.
    pub async fn put_oauth_connection(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
        tokens: &OAuthTokens,
        display_name: Option<&str>,
    ) -> Result<Connection> {
        let (access, refresh) = self.seal_tokens(org, integration, user, tokens);
        let stored = StoredCredential {
            kind: ConnectionKind::Oauth,
            credential: access,
            refresh_token: refresh,
            expires_at: tokens.expires_at,
            issued_at: tokens.issued_at,
        };
        self.upsert_connection(org, integration, user, stored, display_name)
            .await
    }

    /// A user's OAuth connection with its tokens opened; `NotFound` if there is none.
    pub async fn oauth_connection(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
    ) -> Result<OAuthConnection> {
        let connection = self.get_connection(org, integration, user).await?;
        // Rows written before `token_issued_at` existed: their last write issued the token.
        let mut sql = Sql::new(
            "SELECT credential, refresh_token, expires_at, token_version, \
             COALESCE(token_issued_at, updated_at) AS issued_at FROM connections",
        );
        scoped(&mut sql, org, integration, user);
        sql.push(" AND kind = 'oauth'");
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        let open = |purpose, sealed: Vec<u8>| -> Result<Secret> {
            Ok(Secret::new(self.vault.open_string(
                &ctx(purpose, org, integration, user),
                &sealed,
            )?))
        };
        let access = open(
            Purpose::OAuthAccessToken,
            row.blob("credential")?.ok_or(StoreError::NotFound)?,
        )?;
        let refresh = row
            .blob("refresh_token")?
            .map(|s| open(Purpose::OAuthRefreshToken, s))
            .transpose()?;
        Ok(OAuthConnection {
            connection,
            tokens: OAuthTokens {
                access,
                refresh,
                expires_at: row.opt_ts("expires_at")?,
                issued_at: row.ts("issued_at")?,
            },
            version: row.int("token_version")?,
        })
    }

    /// Takes the refresh lease of a connected connection until `until`, unless another holder's
    /// lease is still running or its tokens are no longer at `version` (someone stored newer
    /// ones since the caller read them). `true` when `owner` now holds it.
    pub async fn try_lease_refresh(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
        owner: &str,
        until: Timestamp,
        version: i64,
    ) -> Result<bool> {
        let now = Timestamp::now().millis();
        let mut sql = Sql::new("UPDATE connections SET refresh_lease_until = ");
        sql.bind(until.millis())
            .push(", refresh_lease_owner = ")
            .bind(owner);
        scoped(&mut sql, org, integration, user);
        sql.push(" AND token_version = ").bind(version);
        sql.push(
            " AND status = 'connected' AND (refresh_lease_until IS NULL OR refresh_lease_until < ",
        )
        .bind(now)
        .push(")");
        Ok(sql.query().execute(self.db.pool()).await?.rows_affected() > 0)
    }

    /// Stores refreshed tokens (the next token version) and releases the lease `owner` holds. A
    /// provider that did not rotate the refresh token (`tokens.refresh` is `None`) keeps the
    /// old one.
    pub async fn store_refreshed(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
        owner: &str,
        tokens: &OAuthTokens,
    ) -> Result<()> {
        let (access, refresh) = self.seal_tokens(org, integration, user, tokens);
        let mut sql = Sql::new("UPDATE connections SET credential = ");
        sql.bind(access);
        if let Some(refresh) = refresh {
            sql.push(", refresh_token = ").bind(refresh);
        }
        sql.push(", expires_at = ")
            .bind(tokens.expires_at.map(|t| t.millis()))
            .push(", token_issued_at = ")
            .bind(tokens.issued_at.millis())
            .push(", token_version = token_version + 1, updated_at = ")
            .bind(Timestamp::now().millis());
        sql.push(", refresh_lease_until = NULL, refresh_lease_owner = NULL");
        scoped(&mut sql, org, integration, user);
        sql.push(" AND refresh_lease_owner = ").bind(owner);
        // No change generation bump: nothing cached goes wrong with the old token. Each
        // replica's cached header carries its expiry and is looked up again near it, and an
        // upstream that refuses the old token sends the caller to `refresh_rejected`, which
        // reads the new one. A bump here cleared every cache on every replica at each refresh
        // of any user's token.
        let stored = sql.query().execute(self.db.pool()).await?.rows_affected() > 0;
        if stored {
            Ok(())
        } else {
            Err(StoreError::Conflict(
                "the refresh lease was lost before the refreshed tokens were stored".into(),
            ))
        }
    }

    /// Ends a refresh without new tokens: releases the lease and, when the grant is gone for
    /// good, marks the connection disconnected (the user must connect again).
    pub async fn end_refresh(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
        owner: &str,
        disconnect: bool,
    ) -> Result<()> {
        let mut sql = Sql::new(
            "UPDATE connections SET refresh_lease_until = NULL, refresh_lease_owner = NULL",
        );
        if disconnect {
            sql.push(", status = 'disconnected', updated_at = ")
                .bind(Timestamp::now().millis());
        }
        scoped(&mut sql, org, integration, user);
        sql.push(" AND refresh_lease_owner = ").bind(owner);
        sql.query().execute(self.db.pool()).await?;
        if disconnect {
            self.changed().await;
        }
        Ok(())
    }

    fn seal_tokens(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
        tokens: &OAuthTokens,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let access = self.vault.seal(
            &ctx(Purpose::OAuthAccessToken, org, integration, user),
            tokens.access.expose().as_bytes(),
        );
        let refresh = tokens.refresh.as_ref().map(|r| {
            self.vault.seal(
                &ctx(Purpose::OAuthRefreshToken, org, integration, user),
                r.expose().as_bytes(),
            )
        });
        (access, refresh)
    }
}
