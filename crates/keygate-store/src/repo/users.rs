//! Organizations, users and service accounts.

use keygate_core::model::{Organization, Role, ServiceAccount, User};
use keygate_core::{OrgId, ServiceAccountId, Timestamp, UserId};

use super::RowExt;
use crate::page::{Page, PageRequest};
use crate::sql::Sql;
use crate::{Result, Store, StoreError};

/// A service account with its stored secret hash, for authenticating `client_credentials`.
#[derive(Clone, Debug)]
pub struct ServiceAccountCredentials {
    pub account: ServiceAccount,
    pub secret_hash: String,
}

const SA_COLUMNS: &str =
    "id, org_id, name, description, acting_user_id, secret_hash, created_at, archived_at";

fn service_account(row: &sqlx::any::AnyRow) -> Result<ServiceAccountCredentials> {
    Ok(ServiceAccountCredentials {
        account: ServiceAccount {
            id: row.id("id")?,
            org_id: row.id("org_id")?,
            name: row.text("name")?,
            description: row.opt_text("description")?,
            acting_user_id: row.opt_id("acting_user_id")?,
            created_at: row.ts("created_at")?,
            archived_at: row.opt_ts("archived_at")?,
        },
        secret_hash: row.text("secret_hash")?,
    })
}

fn user(row: &sqlx::any::AnyRow) -> Result<User> {
    Ok(User {
        id: row.id("id")?,
        org_id: row.id("org_id")?,
        email: row.text("email")?,
        role: row.wire("role", Role::parse)?,
        created_at: row.ts("created_at")?,
    })
}

impl Store {
    /// The organization of a single-tenant install, created on first use. Safe to race.
    pub async fn default_organization(&self) -> Result<Organization> {
        let mut sql = Sql::new("INSERT INTO organizations (id, slug, name, created_at) VALUES (");
        sql.bind(OrgId::new().to_string())
            .push(", 'default', 'Default', ");
        sql.bind(Timestamp::now().millis())
            .push(") ON CONFLICT (slug) DO NOTHING");
        sql.query().execute(self.db.pool()).await?;
        let row =
            sqlx::query("SELECT id, name, created_at FROM organizations WHERE slug = 'default'")
                .fetch_one(self.db.pool())
                .await?;
        Ok(Organization {
            id: row.id("id")?,
            name: row.text("name")?,
            created_at: row.ts("created_at")?,
        })
    }

    /// Creates an organization (tests and multi-tenant set-ups).
    pub async fn create_organization(&self, slug: &str, name: &str) -> Result<Organization> {
        let org = Organization {
            id: OrgId::new(),
            name: name.to_owned(),
            created_at: Timestamp::now(),
        };
        let mut sql = Sql::new("INSERT INTO organizations (id, slug, name, created_at) VALUES (");
        sql.bind(org.id.to_string())
            .push(", ")
            .bind(slug)
            .push(", ")
            .bind(name);
        sql.push(", ").bind(org.created_at.millis()).push(")");
        sql.query()
            .execute(self.db.pool())
            .await
            .map_err(|e| StoreError::from_insert(e, "organization slug already exists"))?;
        Ok(org)
    }

    pub async fn create_user(
        &self,
        org: OrgId,
        email: &str,
        role: Role,
        password_hash: Option<&str>,
    ) -> Result<User> {
        let user = User {
            id: UserId::new(),
            org_id: org,
            email: email.to_ascii_lowercase(),
            role,
            created_at: Timestamp::now(),
        };
        let mut sql = Sql::new(
            "INSERT INTO users (id, org_id, email, password_hash, role, created_at) VALUES (",
        );
        sql.bind(user.id.to_string())
            .push(", ")
            .bind(org.to_string())
            .push(", ");
        sql.bind(user.email.clone())
            .push(", ")
            .bind(password_hash.map(str::to_owned));
        sql.push(", ")
            .bind(role.as_str())
            .push(", ")
            .bind(user.created_at.millis())
            .push(")");
        sql.query()
            .execute(self.db.pool())
            .await
            .map_err(|e| StoreError::from_insert(e, "a user with this email already exists"))?;
        Ok(user)
    }

    pub async fn get_user(&self, org: OrgId, id: UserId) -> Result<User> {
        let mut sql =
            Sql::new("SELECT id, org_id, email, role, created_at FROM users WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND id = ")
            .bind(id.to_string());
        sql.push(" AND disabled_at IS NULL");
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        user(&row)
    }

    pub async fn list_users(&self, org: OrgId) -> Result<Vec<User>> {
        let mut sql =
            Sql::new("SELECT id, org_id, email, role, created_at FROM users WHERE org_id = ");
        sql.bind(org.to_string())
            .push(" AND disabled_at IS NULL ORDER BY id");
        sql.query()
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(user)
            .collect()
    }

    /// The earliest owner of the organization, if any.
    pub async fn first_owner(&self, org: OrgId) -> Result<Option<User>> {
        let mut sql =
            Sql::new("SELECT id, org_id, email, role, created_at FROM users WHERE org_id = ");
        sql.bind(org.to_string());
        sql.push(" AND role = 'owner' AND disabled_at IS NULL ORDER BY id LIMIT 1");
        sql.query()
            .fetch_optional(self.db.pool())
            .await?
            .as_ref()
            .map(user)
            .transpose()
    }

    pub async fn create_service_account(
        &self,
        org: OrgId,
        name: &str,
        description: Option<&str>,
        acting_user_id: Option<UserId>,
        secret_hash: &str,
    ) -> Result<ServiceAccount> {
        let account = ServiceAccount {
            id: ServiceAccountId::new(),
            org_id: org,
            name: name.to_owned(),
            description: description.map(str::to_owned),
            acting_user_id,
            created_at: Timestamp::now(),
            archived_at: None,
        };
        let mut sql = Sql::new("INSERT INTO service_accounts (");
        sql.push(SA_COLUMNS)
            .push(") VALUES (")
            .bind(account.id.to_string())
            .push(", ");
        sql.bind(org.to_string()).push(", ").bind(name).push(", ");
        sql.bind(account.description.clone()).push(", ");
        sql.bind(acting_user_id.map(|u| u.to_string()))
            .push(", ")
            .bind(secret_hash)
            .push(", ");
        sql.bind(account.created_at.millis()).push(", NULL)");
        sql.query().execute(self.db.pool()).await?;
        Ok(account)
    }

    /// Looks a service account up by id across organizations: its client id is global.
    pub async fn service_account_credentials(
        &self,
        id: ServiceAccountId,
    ) -> Result<ServiceAccountCredentials> {
        let mut sql = Sql::new("SELECT ");
        sql.push(SA_COLUMNS)
            .push(" FROM service_accounts WHERE id = ")
            .bind(id.to_string());
        let row = sql
            .query()
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        service_account(&row)
    }

    pub async fn get_service_account(
        &self,
        org: OrgId,
        id: ServiceAccountId,
    ) -> Result<ServiceAccount> {
        let found = self.service_account_credentials(id).await?;
        if found.account.org_id != org {
            return Err(StoreError::NotFound);
        }
        Ok(found.account)
    }

    pub async fn list_service_accounts(
        &self,
        org: OrgId,
        page: PageRequest,
    ) -> Result<Page<ServiceAccount>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(SA_COLUMNS)
            .push(" FROM service_accounts WHERE org_id = ")
            .bind(org.to_string());
        if let Some(after) = page.after {
            sql.push(" AND id < ").bind(after.0.to_string());
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .bind(i64::from(page.limit) + 1);
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        let accounts = rows
            .iter()
            .map(|r| service_account(r).map(|c| c.account))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(accounts, page.limit, |a| a.id.0))
    }

    /// Revokes a service account: its secret stops working at once. Idempotent.
    pub async fn archive_service_account(&self, org: OrgId, id: ServiceAccountId) -> Result<()> {
        let mut sql = Sql::new("UPDATE service_accounts SET archived_at = COALESCE(archived_at, ");
        sql.bind(Timestamp::now().millis())
            .push(") WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND id = ").bind(id.to_string());
        let done = sql.query().execute(self.db.pool()).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.changed().await;
        Ok(())
    }

    /// Notes an access token issued to a service account, so a secret rotation can revoke it.
    pub async fn record_service_account_token(
        &self,
        id: ServiceAccountId,
        jti: &str,
        expires_at: Timestamp,
    ) -> Result<()> {
        let mut sql = Sql::new(
            "INSERT INTO service_account_tokens (jti, service_account_id, expires_at) VALUES (",
        );
        sql.bind(jti).push(", ").bind(id.to_string()).push(", ");
        sql.bind(expires_at.millis()).push(")");
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    /// Replaces the secret hash of an active service account and revokes every access token
    /// issued under the previous secret, in one transaction.
    pub async fn set_service_account_secret(
        &self,
        org: OrgId,
        id: ServiceAccountId,
        secret_hash: &str,
    ) -> Result<ServiceAccount> {
        let mut tx = self.db.pool().begin().await?;
        let mut sql = Sql::new("UPDATE service_accounts SET secret_hash = ");
        sql.bind(secret_hash)
            .push(" WHERE org_id = ")
            .bind(org.to_string());
        sql.push(" AND id = ")
            .bind(id.to_string())
            .push(" AND archived_at IS NULL");
        let done = sql.query().execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let mut sql = Sql::new(
            "INSERT INTO revoked_tokens (jti, expires_at) \
             SELECT jti, expires_at FROM service_account_tokens WHERE service_account_id = ",
        );
        sql.bind(id.to_string())
            .push(" ON CONFLICT (jti) DO NOTHING");
        sql.query().execute(&mut *tx).await?;
        let mut sql = Sql::new("DELETE FROM service_account_tokens WHERE service_account_id = ");
        sql.bind(id.to_string());
        sql.query().execute(&mut *tx).await?;
        tx.commit().await?;
        self.changed().await;
        self.get_service_account(org, id).await
    }
}
