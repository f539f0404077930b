//! Applications, their OAuth client, and the integrations attached to them.

use keygate_core::model::{Application, ClientType, OAuthClient, SessionCounts};
use keygate_core::{ApplicationId, IntegrationId, OrgId, Timestamp, UserId};

use super::{RowExt, to_json};
use crate::page::{Page, PageRequest};
use crate::sql::Sql;
use crate::{Result, Store, StoreError};

/// A new application and the hash of its client secret (confidential clients only).
pub struct NewApplication {
    pub name: String,
    pub owner_user_id: Option<UserId>,
    pub oauth: OAuthClient,
    pub client_secret_hash: Option<String>,
}

/// Which applications of an organization to list.
#[derive(Clone, Copy, Debug)]
pub enum ApplicationFilter {
    /// Every one, archived included.
    All,
    /// Those not archived.
    Active,
    /// Those this user created, archived included.
    OwnedBy(UserId),
}

/// A partial update of an application; `None` leaves a field unchanged.
#[derive(Default)]
pub struct ApplicationPatch {
    pub name: Option<String>,
    pub oauth: OAuthClientPatch,
}

/// A partial update of an application's OAuth client.
#[derive(Default)]
pub struct OAuthClientPatch {
    pub redirect_uris: Option<Vec<String>>,
    pub pkce_required: Option<bool>,
    pub scopes: Option<Vec<String>>,
    pub allowed_resources: Option<Vec<String>>,
}

const COLUMNS: &str = "id, org_id, name, owner_user_id, client_type, redirect_uris, \
    pkce_required, scopes, allowed_resources, created_at, updated_at, archived_at";

fn application(row: &sqlx::any::AnyRow) -> Result<Application> {
    Ok(Application {
        id: row.id("id")?,
        org_id: row.id("org_id")?,
        name: row.text("name")?,
        owner_user_id: row.opt_id("owner_user_id")?,
        oauth: OAuthClient {
            client_type: row.wire("client_type", ClientType::parse)?,
            redirect_uris: row.json("redirect_uris")?,
            pkce_required: row.flag("pkce_required")?,
            scopes: row.json("scopes")?,
            allowed_resources: row.json("allowed_resources")?,
        },
        created_at: row.ts("created_at")?,
        updated_at: row.ts("updated_at")?,
        archived_at: row.opt_ts("archived_at")?,
    })
}

impl Store {
    pub async fn create_application(&self, org: OrgId, new: NewApplication) -> Result<Application> {
        let now = Timestamp::now();
        let app = Application {
            id: ApplicationId::new(),
            org_id: org,
            name: new.name,
            owner_user_id: new.owner_user_id,
            oauth: new.oauth,
            created_at: now,
            updated_at: now,
            archived_at: None,
        };
        let mut sql = Sql::new("INSERT INTO applications (");
        sql.push(COLUMNS).push(", client_secret_hash) VALUES (");
        sql.bind(app.id.to_string())
            .push(", ")
            .bind(org.to_string())
            .push(", ");
        sql.bind(app.name.clone())
            .push(", ")
            .bind(app.owner_user_id.map(|u| u.to_string()));
        sql.push(", ")
            .bind(app.oauth.client_type.as_str())
            .push(", ");
        sql.bind(to_json(&app.oauth.redirect_uris)).push(", ");
        sql.bind(i64::from(app.oauth.pkce_required)).push(", ");
        sql.bind(to_json(&app.oauth.scopes)).push(", ");
        sql.bind(to_json(&app.oauth.allowed_resources)).push(", ");
        sql.bind(now.millis())
            .push(", ")
            .bind(now.millis())
            .push(", NULL, ");
        sql.bind(new.client_secret_hash).push(")");
        sql.query().execute(self.db.pool()).await?;
        Ok(app)
    }

    /// An application of `org`, archived or not.
    pub async fn get_application(&self, org: OrgId, id: ApplicationId) -> Result<Application> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM applications WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND id = ").bind(id.to_string());
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        application(&row)
    }

    /// Applications of `org` that `filter` selects, newest first.
    pub async fn list_applications(
        &self,
        org: OrgId,
        filter: ApplicationFilter,
        page: PageRequest,
    ) -> Result<Page<Application>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM applications WHERE org_id = ")
            .bind(org.to_string());
        match filter {
            ApplicationFilter::All => {}
            ApplicationFilter::Active => {
                sql.push(" AND archived_at IS NULL");
            }
            ApplicationFilter::OwnedBy(owner) => {
                sql.push(" AND owner_user_id = ").bind(owner.to_string());
            }
        }
        if let Some(after) = page.after {
            sql.push(" AND id < ").bind(after.0.to_string());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .bind(i64::from(page.limit) + 1);
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        let apps = rows.iter().map(application).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(apps, page.limit, |a| a.id.0))
    }

    /// All applications of `org` (for the access graph).
    pub async fn all_applications(&self, org: OrgId) -> Result<Vec<Application>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM applications WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND archived_at IS NULL ORDER BY id");
        sql.query()
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(application)
            .collect()
    }

    /// Applies a patch to an active application.
    pub async fn update_application(
        &self,
        org: OrgId,
        id: ApplicationId,
        patch: ApplicationPatch,
    ) -> Result<Application> {
        let mut sql = Sql::new("UPDATE applications SET updated_at = ");
        sql.bind(Timestamp::now().millis());
        if let Some(name) = patch.name {
            sql.push(", name = ").bind(name);
        }
        let o = patch.oauth;
        if let Some(v) = o.redirect_uris {
            sql.push(", redirect_uris = ").bind(to_json(&v));
        }
        if let Some(v) = o.pkce_required {
            sql.push(", pkce_required = ").bind(i64::from(v));
        }
        if let Some(v) = o.scopes {
            sql.push(", scopes = ").bind(to_json(&v));
        }
        if let Some(v) = o.allowed_resources {
            sql.push(", allowed_resources = ").bind(to_json(&v));
        }
        sql.push(" WHERE org_id = ")
            .bind(org.to_string())
            .push(" AND id = ")
            .bind(id.to_string());
        sql.push(" AND archived_at IS NULL");
        if sql.query().execute(self.db.pool()).await?.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.changed().await;
        self.get_application(org, id).await
    }

    /// Archives an application and disconnects its agent sessions. Idempotent.
    pub async fn archive_application(&self, org: OrgId, id: ApplicationId) -> Result<()> {
        let now = Timestamp::now().millis();
        let mut tx = self.db.pool().begin().await?;
        let mut sql = Sql::new("UPDATE applications SET archived_at = COALESCE(archived_at, ");
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
        super::sessions::disconnect_all(&mut tx, org, id, now).await?;
        tx.commit().await?;
        self.changed().await;
        Ok(())
    }

    /// Replaces the client secret hash of an active application and disconnects its sessions:
    /// the previous secret, and tokens issued under it, stop working at once.
    pub async fn set_application_secret(
        &self,
        org: OrgId,
        id: ApplicationId,
        secret_hash: &str,
    ) -> Result<Application> {
        let now = Timestamp::now().millis();
        let mut tx = self.db.pool().begin().await?;
        let mut sql = Sql::new("UPDATE applications SET client_secret_hash = ");
        sql.bind(secret_hash).push(", updated_at = ").bind(now);
        sql.push(" WHERE org_id = ")
            .bind(org.to_string())
            .push(" AND id = ");
        sql.bind(id.to_string()).push(" AND archived_at IS NULL");
        if sql.query().execute(&mut *tx).await?.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        super::sessions::disconnect_all(&mut tx, org, id, now).await?;
        tx.commit().await?;
        self.changed().await;
        self.get_application(org, id).await
    }

    /// The stored client secret hash of an active application, for client authentication.
    pub async fn application_secret_hash(
        &self,
        id: ApplicationId,
    ) -> Result<(Application, Option<String>)> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(", client_secret_hash FROM applications WHERE id = ");
        sql.bind(id.to_string()).push(" AND archived_at IS NULL");
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok((application(&row)?, row.opt_text("client_secret_hash")?))
    }

    /// Ids of the integrations attached to an application, oldest attachment first.
    pub async fn attached_integration_ids(
        &self,
        org: OrgId,
        app: ApplicationId,
    ) -> Result<Vec<IntegrationId>> {
        let mut sql = Sql::new(
            "SELECT ai.integration_id FROM application_integrations ai \
             JOIN integrations i ON i.id = ai.integration_id \
             WHERE ai.org_id = ",
        );
        sql.bind(org.to_string())
            .push(" AND ai.application_id = ")
            .bind(app.to_string());
        sql.push(" AND i.archived_at IS NULL ORDER BY ai.created_at, ai.integration_id");
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        rows.iter().map(|r| r.id("integration_id")).collect()
    }

    /// Every attachment of the organization to an active integration, as (application,
    /// integration), oldest attachment first: one query for the whole access graph.
    pub async fn all_attachments(&self, org: OrgId) -> Result<Vec<(ApplicationId, IntegrationId)>> {
        let mut sql = Sql::new(
            "SELECT ai.application_id, ai.integration_id FROM application_integrations ai \
             JOIN integrations i ON i.id = ai.integration_id \
             WHERE ai.org_id = ",
        );
        sql.bind(org.to_string())
            .push(" AND i.archived_at IS NULL ORDER BY ai.created_at, ai.integration_id");
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(|r| Ok((r.id("application_id")?, r.id("integration_id")?)))
            .collect()
    }

    /// The active integrations attached to an application, oldest attachment first.
    pub async fn attached_integrations(
        &self,
        org: OrgId,
        app: ApplicationId,
    ) -> Result<Vec<keygate_core::model::Integration>> {
        let ids = self.attached_integration_ids(org, app).await?;
        let mut list = self.integrations_by_ids(org, &ids).await?;
        list.sort_by_key(|i| ids.iter().position(|id| *id == i.id));
        Ok(list)
    }

    /// Attaches integrations (already checked to belong to `org`); existing ones are no-ops.
    pub async fn attach_integrations(
        &self,
        org: OrgId,
        app: ApplicationId,
        integrations: &[IntegrationId],
        replace: bool,
    ) -> Result<()> {
        let now = Timestamp::now().millis();
        let mut tx = self.db.pool().begin().await?;
        if replace {
            let mut sql = Sql::new("DELETE FROM application_integrations WHERE org_id = ");
            sql.bind(org.to_string())
                .push(" AND application_id = ")
                .bind(app.to_string());
            sql.query().execute(&mut *tx).await?;
        }
        for integration in integrations {
            let mut sql = Sql::new(
                "INSERT INTO application_integrations (application_id, integration_id, org_id, created_at) VALUES (",
            );
            sql.bind(app.to_string())
                .push(", ")
                .bind(integration.to_string())
                .push(", ");
            sql.bind(org.to_string()).push(", ").bind(now);
            sql.push(") ON CONFLICT (application_id, integration_id) DO NOTHING");
            sql.query().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.changed().await;
        Ok(())
    }

    /// Detaches one integration. Detaching what is not attached is a no-op.
    pub async fn detach_integration(
        &self,
        org: OrgId,
        app: ApplicationId,
        integration: IntegrationId,
    ) -> Result<()> {
        let mut sql = Sql::new("DELETE FROM application_integrations WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND application_id = ")
            .bind(app.to_string());
        sql.push(" AND integration_id = ")
            .bind(integration.to_string());
        sql.query().execute(self.db.pool()).await?;
        self.changed().await;
        Ok(())
    }

    /// Session counts of an application at `now`.
    pub async fn session_counts(
        &self,
        org: OrgId,
        app: ApplicationId,
        now: Timestamp,
    ) -> Result<SessionCounts> {
        let sessions = self.all_agent_sessions(org, app).await?;
        let mut counts = SessionCounts {
            total: sessions.len() as i64,
            ..Default::default()
        };
        for s in &sessions {
            use keygate_core::model::DerivedSessionStatus as D;
            match s.derived_status(now) {
                D::Active => counts.active += 1,
                D::Idle => counts.idle += 1,
                D::Expired | D::Disconnected => {}
            }
            if s.connected_at.is_some() && s.disconnected_at.is_none() {
                counts.live += 1;
            }
        }
        Ok(counts)
    }
}
