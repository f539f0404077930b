//! Users' credentials for integrations, sealed per (organization, integration, user).

use keygate_core::model::{Connection, ConnectionKind};
use keygate_core::{ConnectionId, IntegrationId, OrgId, Secret, Timestamp, UserId};
use sqlx::{Any, Transaction};

use super::RowExt;
use crate::sql::Sql;
use crate::vault::{Purpose, SealContext};
use crate::{Result, Store, StoreError};

const COLUMNS: &str = "id, org_id, integration_id, user_id, kind, status, expires_at, \
    display_name, created_at, updated_at";

fn connection(row: &sqlx::any::AnyRow) -> Result<Connection> {
    Ok(Connection {
        id: row.id("id")?,
        org_id: row.id("org_id")?,
        integration_id: row.id("integration_id")?,
        user_id: row.id("user_id")?,
        kind: row.wire("kind", ConnectionKind::parse)?,
        connected: row.text("status")? == "connected",
        expires_at: row.opt_ts("expires_at")?,
        display_name: row.opt_text("display_name")?,
        created_at: row.ts("created_at")?,
        updated_at: row.ts("updated_at")?,
    })
}

/// A connection's sealed secrets, as stored.
pub(crate) struct StoredCredential {
    pub kind: ConnectionKind,
    pub credential: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub expires_at: Option<Timestamp>,
    /// When the credential was issued (for OAuth, when the provider's answer arrived).
    pub issued_at: Timestamp,
}

/// What a user's connection secret is sealed to.
pub(crate) fn ctx(
    purpose: Purpose,
    org: OrgId,
    integration: IntegrationId,
    user: UserId,
) -> SealContext {
    SealContext {
        purpose,
        org: Some(org),
        integration: Some(integration),
        user: Some(user),
    }
}

impl Store {
    /// Stores (or replaces) a user's personal token for an integration.
    pub async fn put_user_token(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
        token: &Secret,
        display_name: Option<&str>,
    ) -> Result<Connection> {
        let sealed = self.vault.seal(
            &ctx(Purpose::UserToken, org, integration, user),
            token.expose().as_bytes(),
        );
        let stored = StoredCredential {
            kind: ConnectionKind::UserToken,
            credential: sealed,
            refresh_token: None,
            expires_at: None,
            issued_at: Timestamp::now(),
        };
        self.upsert_connection(org, integration, user, stored, display_name)
            .await
    }

    /// Inserts or replaces a user's connection with a sealed credential, connected, with no
    /// refresh in progress; a replaced credential gets the next token version.
    pub(crate) async fn upsert_connection(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
        stored: StoredCredential,
        display_name: Option<&str>,
    ) -> Result<Connection> {
        let now = Timestamp::now().millis();
        let mut sql = Sql::new(
            "INSERT INTO connections (id, org_id, integration_id, user_id, kind, credential, \
             refresh_token, expires_at, token_issued_at, display_name, status, created_at, \
             updated_at) VALUES (",
        );
        sql.bind(ConnectionId::new().to_string())
            .push(", ")
            .bind(org.to_string())
            .push(", ");
        sql.bind(integration.to_string())
            .push(", ")
            .bind(user.to_string())
            .push(", ");
        sql.bind(stored.kind.as_str())
            .push(", ")
            .bind(stored.credential)
            .push(", ")
            .bind(stored.refresh_token)
            .push(", ");
        sql.bind(stored.expires_at.map(|t| t.millis()))
            .push(", ")
            .bind(stored.issued_at.millis())
            .push(", ")
            .bind(display_name.map(str::to_owned));
        sql.push(", 'connected', ")
            .bind(now)
            .push(", ")
            .bind(now)
            .push(
                ") ON CONFLICT (integration_id, user_id) DO UPDATE SET kind = excluded.kind, \
                 credential = excluded.credential, refresh_token = excluded.refresh_token, \
                 expires_at = excluded.expires_at, token_issued_at = excluded.token_issued_at, \
                 token_version = connections.token_version + 1, \
                 display_name = excluded.display_name, status = 'connected', \
                 refresh_lease_until = NULL, refresh_lease_owner = NULL, \
                 updated_at = excluded.updated_at",
            );
        sql.query().execute(self.db.pool()).await?;
        self.changed().await;
        self.get_connection(org, integration, user).await
    }

    /// A user's connection to an integration, without its secret.
    pub async fn get_connection(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
    ) -> Result<Connection> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM connections WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND integration_id = ")
            .bind(integration.to_string());
        sql.push(" AND user_id = ").bind(user.to_string());
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        connection(&row)
    }

    /// The decrypted credential of a user's connection.
    pub async fn connection_credential(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
    ) -> Result<Secret> {
        let mut sql = Sql::new("SELECT kind, credential FROM connections WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND integration_id = ")
            .bind(integration.to_string());
        sql.push(" AND user_id = ")
            .bind(user.to_string())
            .push(" AND status = 'connected'");
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        let purpose = match row.wire("kind", ConnectionKind::parse)? {
            ConnectionKind::UserToken => Purpose::UserToken,
            ConnectionKind::Oauth => Purpose::OAuthAccessToken,
        };
        let sealed = row.blob("credential")?.ok_or(StoreError::NotFound)?;
        let plain = self
            .vault
            .open_string(&ctx(purpose, org, integration, user), &sealed)?;
        Ok(Secret::new(plain))
    }

    /// Deletes a user's connection and its sealed secrets. Returns whether one existed.
    pub async fn delete_connection(
        &self,
        org: OrgId,
        integration: IntegrationId,
        user: UserId,
    ) -> Result<bool> {
        let mut sql = Sql::new("DELETE FROM connections WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND integration_id = ")
            .bind(integration.to_string());
        sql.push(" AND user_id = ").bind(user.to_string());
        let deleted = sql.query().execute(self.db.pool()).await?.rows_affected() > 0;
        self.changed().await;
        Ok(deleted)
    }

    /// Every connected (user, integration) pair of the organization.
    pub async fn all_connections(&self, org: OrgId) -> Result<Vec<Connection>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM connections WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND status = 'connected' ORDER BY id");
        sql.query()
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(connection)
            .collect()
    }
}

impl Store {
    /// The credential an integration uses upstream for `user`, by its `authMode`: the sealed
    /// server token, or the user's own connection (none for a missing user or connection),
    /// or nothing for `none`.
    pub async fn upstream_credential(
        &self,
        integration: &keygate_core::model::Integration,
        user: Option<UserId>,
    ) -> Result<Option<Secret>> {
        use keygate_core::model::AuthMode;
        let (org, id) = (integration.org_id, integration.id);
        match (integration.auth_mode, user) {
            (AuthMode::None, _) => Ok(None),
            (AuthMode::ServerToken, _) => self.integration_server_token(org, id).await,
            (AuthMode::UserToken | AuthMode::Oauth, None) => Ok(None),
            (AuthMode::UserToken | AuthMode::Oauth, Some(user)) => {
                match self.connection_credential(org, id, user).await {
                    Ok(secret) => Ok(Some(secret)),
                    Err(StoreError::NotFound) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// Deletes every user's connection to an integration, and what discovery registered for it.
pub(crate) async fn delete_all_for_integration(
    tx: &mut Transaction<'_, Any>,
    org: OrgId,
    integration: IntegrationId,
) -> Result<()> {
    let mut sql = Sql::new("DELETE FROM connections WHERE org_id = ");
    sql.bind(org.to_string())
        .push(" AND integration_id = ")
        .bind(integration.to_string());
    sql.query().execute(&mut **tx).await?;
    // A client registered at a discovered authorization server belonged to the old settings.
    let mut sql = Sql::new("DELETE FROM upstream_oauth_clients WHERE org_id = ");
    sql.bind(org.to_string())
        .push(" AND integration_id = ")
        .bind(integration.to_string());
    sql.query().execute(&mut **tx).await?;
    Ok(())
}
