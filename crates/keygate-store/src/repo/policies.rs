//! Cedar tool policies of an organization. Every write moves the change generation, so the
//! compiled policy set cached on each replica is rebuilt on its next request.

use keygate_core::model::Policy;
use keygate_core::{OrgId, PolicyId, Timestamp};

use super::RowExt;
use crate::page::{Page, PageRequest};
use crate::sql::Sql;
use crate::{Result, Store, StoreError};

/// A new policy; its text has been validated by the caller.
pub struct NewPolicy {
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub text: String,
}

/// A partial update of a policy; `None` leaves a field unchanged.
#[derive(Default)]
pub struct PolicyPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub text: Option<String>,
}

const COLUMNS: &str = "id, org_id, name, description, enabled, text, created_at, updated_at";

fn policy(row: &sqlx::any::AnyRow) -> Result<Policy> {
    Ok(Policy {
        id: row.id("id")?,
        org_id: row.id("org_id")?,
        name: row.text("name")?,
        description: row.text("description")?,
        enabled: row.flag("enabled")?,
        text: row.text("text")?,
        created_at: row.ts("created_at")?,
        updated_at: row.ts("updated_at")?,
    })
}

impl Store {
    /// Stores a policy; a name the organization already uses is a `Conflict`.
    pub async fn create_policy(&self, org: OrgId, new: NewPolicy) -> Result<Policy> {
        let now = Timestamp::now();
        let created = Policy {
            id: PolicyId::new(),
            org_id: org,
            name: new.name,
            description: new.description,
            enabled: new.enabled,
            text: new.text,
            created_at: now,
            updated_at: now,
        };
        let mut sql = Sql::new("INSERT INTO policies (");
        sql.push(COLUMNS).push(") VALUES (");
        sql.bind(created.id.to_string())
            .push(", ")
            .bind(org.to_string())
            .push(", ");
        sql.bind(created.name.clone())
            .push(", ")
            .bind(created.description.clone())
            .push(", ");
        sql.bind(i64::from(created.enabled))
            .push(", ")
            .bind(created.text.clone())
            .push(", ");
        sql.bind(now.millis())
            .push(", ")
            .bind(now.millis())
            .push(")");
        sql.query()
            .execute(self.db.pool())
            .await
            .map_err(|e| StoreError::from_insert(e, "a policy with this name exists"))?;
        self.changed().await;
        Ok(created)
    }

    pub async fn get_policy(&self, org: OrgId, id: PolicyId) -> Result<Policy> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM policies WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND id = ").bind(id.to_string());
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        policy(&row)
    }

    /// Policies of `org`, newest first.
    pub async fn list_policies(&self, org: OrgId, page: PageRequest) -> Result<Page<Policy>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM policies WHERE org_id = ")
            .bind(org.to_string());
        if let Some(after) = page.after {
            sql.push(" AND id < ").bind(after.0.to_string());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .bind(i64::from(page.limit) + 1);
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        let policies = rows.iter().map(policy).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(policies, page.limit, |p| p.id.0))
    }

    /// The enabled policies of `org`, oldest first: what the gateway decides with.
    pub async fn enabled_policies(&self, org: OrgId) -> Result<Vec<Policy>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(COLUMNS)
            .push(" FROM policies WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND enabled = 1 ORDER BY id");
        sql.query()
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(policy)
            .collect()
    }

    /// Applies a patch to a policy.
    pub async fn update_policy(
        &self,
        org: OrgId,
        id: PolicyId,
        patch: PolicyPatch,
    ) -> Result<Policy> {
        let mut sql = Sql::new("UPDATE policies SET updated_at = ");
        sql.bind(Timestamp::now().millis());
        if let Some(name) = patch.name {
            sql.push(", name = ").bind(name);
        }
        if let Some(description) = patch.description {
            sql.push(", description = ").bind(description);
        }
        if let Some(enabled) = patch.enabled {
            sql.push(", enabled = ").bind(i64::from(enabled));
        }
        if let Some(text) = patch.text {
            sql.push(", text = ").bind(text);
        }
        sql.push(" WHERE org_id = ")
            .bind(org.to_string())
            .push(" AND id = ")
            .bind(id.to_string());
        let done = sql
            .query()
            .execute(self.db.pool())
            .await
            .map_err(|e| StoreError::from_insert(e, "a policy with this name exists"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.changed().await;
        self.get_policy(org, id).await
    }

    pub async fn delete_policy(&self, org: OrgId, id: PolicyId) -> Result<()> {
        let mut sql = Sql::new("DELETE FROM policies WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND id = ")
            .bind(id.to_string());
        if sql.query().execute(self.db.pool()).await?.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.changed().await;
        Ok(())
    }
}
