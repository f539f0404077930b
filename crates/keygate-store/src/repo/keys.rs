//! JWT signing keys. The private key is sealed; the public JWK is stored in the clear.

use keygate_core::{Secret, Timestamp};

use super::RowExt;
use crate::sql::Sql;
use crate::vault::{Purpose, SealContext};
use crate::{Result, Store};

/// A signing key as the authorization server needs it.
#[derive(Clone, Debug)]
pub struct StoredSigningKey {
    pub kid: String,
    pub alg: String,
    /// PKCS#8 PEM of the private key.
    pub private_pem: Secret,
    pub public_jwk: serde_json::Value,
    pub created_at: Timestamp,
    pub retired_at: Option<Timestamp>,
}

const CTX: SealContext = SealContext {
    purpose: Purpose::SigningKey,
    org: None,
    integration: None,
    user: None,
};

impl Store {
    pub async fn insert_signing_key(&self, key: &StoredSigningKey) -> Result<()> {
        let sealed = self.vault.seal(&CTX, key.private_pem.expose().as_bytes());
        let mut sql = Sql::new(
            "INSERT INTO signing_keys (kid, alg, private_key, public_jwk, created_at) VALUES (",
        );
        sql.bind(key.kid.clone())
            .push(", ")
            .bind(key.alg.clone())
            .push(", ")
            .bind(sealed);
        sql.push(", ")
            .bind(super::to_json(&key.public_jwk))
            .push(", ");
        sql.bind(key.created_at.millis()).push(")");
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }

    /// Signing keys not retired before `since`, newest first.
    pub async fn signing_keys(&self, since: Timestamp) -> Result<Vec<StoredSigningKey>> {
        let mut sql = Sql::new(
            "SELECT kid, alg, private_key, public_jwk, created_at, retired_at FROM signing_keys \
             WHERE retired_at IS NULL OR retired_at > ",
        );
        sql.bind(since.millis())
            .push(" ORDER BY created_at DESC, kid DESC");
        let rows = sql.query().fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(|r| {
                let sealed = r.blob("private_key")?.unwrap_or_default();
                Ok(StoredSigningKey {
                    kid: r.text("kid")?,
                    alg: r.text("alg")?,
                    private_pem: Secret::new(self.vault.open_string(&CTX, &sealed)?),
                    public_jwk: r.json("public_jwk")?,
                    created_at: r.ts("created_at")?,
                    retired_at: r.opt_ts("retired_at")?,
                })
            })
            .collect()
    }

    /// Retires every key but `keep`: they stop signing but stay published until their tokens
    /// have expired.
    pub async fn retire_signing_keys_except(&self, keep: &str) -> Result<()> {
        let mut sql = Sql::new("UPDATE signing_keys SET retired_at = ");
        sql.bind(Timestamp::now().millis())
            .push(" WHERE retired_at IS NULL AND kid <> ");
        sql.bind(keep);
        sql.query().execute(self.db.pool()).await?;
        Ok(())
    }
}
