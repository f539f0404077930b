//! Integrations. Their secrets (server token, OAuth client secret) are sealed here, bound to the
//! organization and integration, and never leave this module except through the explicit
//! `*_secret` readers.

use keygate_core::model::{
    AuthMode, Category, Integration, IntegrationOAuth, ValidationStatus, slugify,
};
use keygate_core::{IntegrationId, OrgId, Secret, Timestamp};

use super::{RowExt, to_json};
use crate::page::{Page, PageRequest};
use crate::sql::Sql;
use crate::vault::{Purpose, SealContext};
use crate::{Result, Store, StoreError};

/// A new integration with its plaintext server token, sealed on insert.
pub struct NewIntegration {
    pub name: String,
    pub url: String,
    pub category: Category,
    pub auth_mode: AuthMode,
    pub oauth: Option<IntegrationOAuth>,
    pub oauth_client_secret: Option<Secret>,
    pub capabilities: Option<serde_json::Value>,
    pub credential_schema: Option<serde_json::Value>,
    /// Extra forwarded request headers (checked by `model::forwardable_header`).
    pub forward_headers: Vec<String>,
    pub server_token: Option<Secret>,
}

/// A partial update. For the doubly optional fields, `Some(None)` clears the value.
#[derive(Default)]
pub struct IntegrationPatch {
    pub name: Option<String>,
    pub url: Option<String>,
    pub category: Option<Category>,
    pub auth_mode: Option<AuthMode>,
    pub capabilities: Option<Option<serde_json::Value>>,
    pub credential_schema: Option<Option<serde_json::Value>>,
    pub forward_headers: Option<Vec<String>>,
    pub server_token: Option<Option<Secret>>,
}

const COLUMNS: &str = "id, org_id, name, slug, url, category, auth_mode, oauth, \
    oauth_client_secret IS NOT NULL AS has_client_secret, capabilities, credential_schema, \
    forward_headers, server_token IS NOT NULL AS has_server_token, validation_status, validation_message, \
    last_validated_at, created_at, updated_at, archived_at";

fn integration(row: &sqlx::any::AnyRow) -> Result<Integration> {
    Ok(Integration {
        id: row.id("id")?,
        org_id: row.id("org_id")?,
        name: row.text("name")?,
        slug: row.text("slug")?,
        url: row.text("url")?,
        category: row.wire("category", Category::parse)?,
        auth_mode: row.wire("auth_mode", AuthMode::parse)?,
        oauth: row.opt_json("oauth")?,
        oauth_client_secret_configured: bool_col(row, "has_client_secret")?,
        capabilities: row.opt_json("capabilities")?,
        credential_schema: row.opt_json("credential_schema")?,
        forward_headers: row
            .opt_json::<Vec<String>>("forward_headers")?
            .unwrap_or_default(),
        server_token_configured: bool_col(row, "has_server_token")?,
        validation_status: row.wire("validation_status", ValidationStatus::parse)?,
        validation_message: row.opt_text("validation_message")?,
        last_validated_at: row.opt_ts("last_validated_at")?,
        created_at: row.ts("created_at")?,
        updated_at: row.ts("updated_at")?,
        archived_at: row.opt_ts("archived_at")?,
    })
}

/// The stored form of an integration's extra forwarded headers (NULL for none).
fn forward_headers_json(headers: &[String]) -> Option<String> {
    (!headers.is_empty()).then(|| to_json(&headers))
}

/// `x IS NOT NULL` is an integer in SQLite and a boolean in PostgreSQL.
fn bool_col(row: &sqlx::any::AnyRow, col: &str) -> Result<bool> {
    use sqlx::Row;
    match row.try_get::<bool, _>(col) {
        Ok(b) => Ok(b),
        Err(_) => Ok(row.try_get::<i64, _>(col)? != 0),
    }
}

fn ctx(purpose: Purpose, org: OrgId, id: IntegrationId) -> SealContext {
    SealContext {
        purpose,
        org: Some(org),
        integration: Some(id),
        user: None,
    }
}

impl Store {
    /// Creates an integration with a slug unique in the organization (`name`, `name-2`, …).
    pub async fn create_integration(&self, org: OrgId, new: NewIntegration) -> Result<Integration> {
        let id = IntegrationId::new();
        let now = Timestamp::now().millis();
        let base = slugify(&new.name);
        let server_token = new.server_token.as_ref().map(|t| {
            self.vault
                .seal(&ctx(Purpose::ServerToken, org, id), t.expose().as_bytes())
        });
        let client_secret = new.oauth_client_secret.as_ref().map(|t| {
            self.vault.seal(
                &ctx(Purpose::OAuthClientSecret, org, id),
                t.expose().as_bytes(),
            )
        });
        for attempt in 1..=20 {
            let slug = if attempt == 1 {
                base.clone()
            } else {
                format!("{base}-{attempt}")
            };
            let mut sql = Sql::new(
                "INSERT INTO integrations (id, org_id, name, slug, url, category, auth_mode, oauth, \
                 oauth_client_secret, capabilities, credential_schema, forward_headers, \
                 server_token, validation_status, created_at, updated_at) VALUES (",
            );
            sql.bind(id.to_string())
                .push(", ")
                .bind(org.to_string())
                .push(", ");
            sql.bind(new.name.clone())
                .push(", ")
                .bind(slug)
                .push(", ")
                .bind(new.url.clone());
            sql.push(", ")
                .bind(new.category.as_str())
                .push(", ")
                .bind(new.auth_mode.as_str());
            sql.push(", ")
                .bind(new.oauth.as_ref().map(to_json))
                .push(", ");
            sql.bind(client_secret.clone()).push(", ");
            sql.bind(new.capabilities.as_ref().map(to_json)).push(", ");
            sql.bind(new.credential_schema.as_ref().map(to_json))
                .push(", ");
            sql.bind(forward_headers_json(&new.forward_headers))
                .push(", ");
            sql.bind(server_token.clone())
                .push(", 'pending', ")
                .bind(now)
                .push(", ");
            sql.bind(now).push(")");
            match sql.query().execute(self.db.pool()).await {
                Ok(_) => return self.get_integration(org, id).await,
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(
            "too many integrations share this name".into(),
        ))
    }

    /// An integration of `org`, archived or not.
    pub async fn get_integration(&self, org: OrgId, id: IntegrationId) -> Result<Integration> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM integrations WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND id = ").bind(id.to_string());
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        integration(&row)
    }

    /// Integrations of `org`, newest first, optionally filtered by a name substring.
    pub async fn list_integrations(
        &self,
        org: OrgId,
        name: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Integration>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM integrations WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND archived_at IS NULL");
        if let Some(name) = name {
            let escaped = name
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            sql.push(" AND LOWER(name) LIKE ")
                .bind(format!("%{}%", escaped.to_lowercase()));
            sql.push(" ESCAPE '\\'");
        }
        if let Some(after) = page.after {
            sql.push(" AND id < ").bind(after.0.to_string());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .bind(i64::from(page.limit) + 1);
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        let items = rows.iter().map(integration).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |i| i.id.0))
    }

    /// Active integrations of `org` with the given ids, in no particular order.
    pub async fn integrations_by_ids(
        &self,
        org: OrgId,
        ids: &[IntegrationId],
    ) -> Result<Vec<Integration>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM integrations WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND archived_at IS NULL AND id IN (");
        sql.bind_list(ids.iter().map(|i| i.to_string())).push(")");
        sql.query()
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(integration)
            .collect()
    }

    /// Applies a patch to an active integration. Changing `authMode` or `url` deletes its
    /// users' connections (they were made for the old upstream) and resets validation.
    pub async fn update_integration(
        &self,
        org: OrgId,
        id: IntegrationId,
        patch: IntegrationPatch,
    ) -> Result<Integration> {
        let current = self.get_integration(org, id).await?;
        if current.archived_at.is_some() {
            return Err(StoreError::NotFound);
        }
        let now = Timestamp::now().millis();
        let mode_changed = patch.auth_mode.is_some_and(|m| m != current.auth_mode);
        let url_changed = patch.url.as_ref().is_some_and(|u| *u != current.url);
        let mut sql = Sql::new("UPDATE integrations SET updated_at = ");
        sql.bind(now);
        if let Some(v) = patch.name {
            sql.push(", name = ").bind(v);
        }
        if let Some(v) = patch.url {
            sql.push(", url = ").bind(v);
        }
        if let Some(v) = patch.category {
            sql.push(", category = ").bind(v.as_str());
        }
        if let Some(v) = patch.auth_mode {
            sql.push(", auth_mode = ").bind(v.as_str());
        }
        if let Some(v) = patch.capabilities {
            sql.push(", capabilities = ").bind(v.as_ref().map(to_json));
        }
        if let Some(v) = patch.credential_schema {
            sql.push(", credential_schema = ")
                .bind(v.as_ref().map(to_json));
        }
        if let Some(v) = patch.forward_headers {
            sql.push(", forward_headers = ")
                .bind(forward_headers_json(&v));
        }
        if let Some(v) = patch.server_token {
            let sealed = v.map(|t| {
                self.vault
                    .seal(&ctx(Purpose::ServerToken, org, id), t.expose().as_bytes())
            });
            sql.push(", server_token = ").bind(sealed);
        }
        if mode_changed || url_changed {
            sql.push(", validation_status = 'pending', validation_message = NULL");
            sql.push(", last_validated_at = NULL");
        }
        sql.push(" WHERE org_id = ")
            .bind(org.to_string())
            .push(" AND id = ")
            .bind(id.to_string());
        let mut tx = self.db.pool().begin().await?;
        sql.query().execute(&mut *tx).await?;
        if mode_changed || url_changed {
            super::connections::delete_all_for_integration(&mut tx, org, id).await?;
        }
        tx.commit().await?;
        self.changed().await;
        self.get_integration(org, id).await
    }

    /// Replaces (or with `None`, removes) the OAuth configuration. Existing OAuth connections
    /// were granted under the old configuration and are deleted.
    pub async fn set_integration_oauth(
        &self,
        org: OrgId,
        id: IntegrationId,
        oauth: Option<&IntegrationOAuth>,
        client_secret: Option<&Secret>,
    ) -> Result<Integration> {
        let sealed = client_secret.map(|s| {
            self.vault.seal(
                &ctx(Purpose::OAuthClientSecret, org, id),
                s.expose().as_bytes(),
            )
        });
        let mut sql = Sql::new("UPDATE integrations SET oauth = ");
        sql.bind(oauth.map(to_json))
            .push(", oauth_client_secret = ")
            .bind(sealed);
        sql.push(", updated_at = ")
            .bind(Timestamp::now().millis())
            .push(" WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND id = ")
            .bind(id.to_string());
        sql.push(" AND archived_at IS NULL");
        let mut tx = self.db.pool().begin().await?;
        if sql.query().execute(&mut *tx).await?.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        super::connections::delete_all_for_integration(&mut tx, org, id).await?;
        tx.commit().await?;
        self.changed().await;
        self.get_integration(org, id).await
    }

    /// Archives an integration and detaches it from every application. Idempotent.
    pub async fn archive_integration(&self, org: OrgId, id: IntegrationId) -> Result<()> {
        let now = Timestamp::now().millis();
        let mut tx = self.db.pool().begin().await?;
        let mut sql = Sql::new("UPDATE integrations SET archived_at = COALESCE(archived_at, ");
        sql.bind(now)
            .push("), updated_at = ")
            .bind(now)
            .push(" WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND id = ")
            .bind(id.to_string());
        if sql.query().execute(&mut *tx).await?.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let mut sql = Sql::new("DELETE FROM application_integrations WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND integration_id = ")
            .bind(id.to_string());
        sql.query().execute(&mut *tx).await?;
        tx.commit().await?;
        self.changed().await;
        Ok(())
    }

    /// Records the outcome of a connectivity check.
    pub async fn set_integration_validation(
        &self,
        org: OrgId,
        id: IntegrationId,
        status: ValidationStatus,
        message: Option<&str>,
    ) -> Result<Integration> {
        let mut sql = Sql::new("UPDATE integrations SET validation_status = ");
        sql.bind(status.as_str()).push(", validation_message = ");
        sql.bind(message.map(str::to_owned))
            .push(", last_validated_at = ");
        sql.bind(Timestamp::now().millis())
            .push(" WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND id = ").bind(id.to_string());
        if sql.query().execute(self.db.pool()).await?.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_integration(org, id).await
    }

    /// The decrypted server token of an integration, if one is set.
    pub async fn integration_server_token(
        &self,
        org: OrgId,
        id: IntegrationId,
    ) -> Result<Option<Secret>> {
        self.integration_secret(org, id, "server_token", Purpose::ServerToken)
            .await
    }

    /// The decrypted upstream OAuth client secret of an integration, if one is set.
    pub async fn integration_oauth_client_secret(
        &self,
        org: OrgId,
        id: IntegrationId,
    ) -> Result<Option<Secret>> {
        self.integration_secret(org, id, "oauth_client_secret", Purpose::OAuthClientSecret)
            .await
    }

    async fn integration_secret(
        &self,
        org: OrgId,
        id: IntegrationId,
        column: &str,
        purpose: Purpose,
    ) -> Result<Option<Secret>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(column)
            .push(" AS secret FROM integrations WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND id = ")
            .bind(id.to_string());
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        let Some(sealed) = row.blob("secret")? else {
            return Ok(None);
        };
        Ok(Some(Secret::new(
            self.vault.open_string(&ctx(purpose, org, id), &sealed)?,
        )))
    }
}
