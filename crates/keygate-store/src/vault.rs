//! Envelope encryption of stored secrets.
//!
//! A key-encryption key ([`Kek`], from config, the environment or a 0600 file) wraps one or more
//! data keys kept in `data_keys`; a data key seals each secret with AES-256-GCM. The associated
//! data of every seal names its purpose, organization, integration and user ([`SealContext`]),
//! so a ciphertext copied onto another row fails to open. Rotating the KEK re-wraps data keys
//! only; sealed rows are untouched.
//!
//! Sealed blob: `0x01 ‖ data-key id (16) ‖ nonce (12) ‖ ciphertext+tag`.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use keygate_core::{IntegrationId, OrgId, Timestamp, UserId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::sql::Sql;
use crate::{Db, Result, StoreError};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + 16 + NONCE_LEN;

/// Vault failures. Messages never contain key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open with this context or key")]
    Open,
    #[error("data key {0} is unknown")]
    UnknownDataKey(Uuid),
    #[error(
        "data key {data_key} is wrapped by key-encryption key {kek_id}, but the configured key is {configured}"
    )]
    WrongKek {
        data_key: Uuid,
        kek_id: String,
        configured: String,
    },
    #[error("key-encryption key must be 32 bytes of standard base64")]
    BadKek,
}

/// What a sealed value is for; part of its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    ServerToken,
    OAuthClientSecret,
    UserToken,
    OAuthAccessToken,
    OAuthRefreshToken,
    SigningKey,
    /// The gateway's MCP session ids (the upstream sessions behind an aggregated session), and
    /// the upstream message endpoint of a legacy SSE stream (`ep`, sealed with its integration).
    McpSession,
    /// An upstream authorization request in flight (PKCE verifier, where to return).
    OAuthFlowState,
    /// The client secret keygate got by registering at a discovered authorization server.
    DiscoveredClientSecret,
    /// A configured provider's client secret (`keygate vault seal`).
    ProviderSecret,
}

impl Purpose {
    fn as_str(&self) -> &'static str {
        match self {
            Purpose::ServerToken => "server_token",
            Purpose::OAuthClientSecret => "oauth_client_secret",
            Purpose::UserToken => "user_token",
            Purpose::OAuthAccessToken => "oauth_access_token",
            Purpose::OAuthRefreshToken => "oauth_refresh_token",
            Purpose::SigningKey => "signing_key",
            Purpose::McpSession => "mcp_session",
            Purpose::OAuthFlowState => "oauth_flow_state",
            Purpose::DiscoveredClientSecret => "discovered_client_secret",
            Purpose::ProviderSecret => "provider_secret",
        }
    }
}

/// The row a sealed value belongs to.
#[derive(Clone, Copy, Debug)]
pub struct SealContext {
    pub purpose: Purpose,
    pub org: Option<OrgId>,
    pub integration: Option<IntegrationId>,
    pub user: Option<UserId>,
}

impl SealContext {
    fn aad(&self) -> String {
        fn opt(v: Option<impl ToString>) -> String {
            v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
        }
        format!(
            "keygate/v1|{}|org={}|integration={}|user={}",
            self.purpose.as_str(),
            opt(self.org),
            opt(self.integration),
            opt(self.user)
        )
    }
}

/// The key-encryption key.
#[derive(Clone)]
pub struct Kek {
    id: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Kek {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VaultError> {
        let cipher = Aes256Gcm::new_from_slice(bytes).map_err(|_| VaultError::BadKek)?;
        let digest = Sha256::new_with_prefix(b"keygate-kek-id")
            .chain_update(bytes)
            .finalize();
        let id = keygate_core::hex::encode(&digest[..8]);
        Ok(Self { id, cipher })
    }

    /// Parses 32 bytes of standard base64 (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, VaultError> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| VaultError::BadKek)?;
        if bytes.len() != 32 {
            return Err(VaultError::BadKek);
        }
        Self::from_bytes(&bytes)
    }

    /// 32 fresh random bytes, standard base64.
    pub fn generate_base64() -> String {
        use base64::Engine;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// A short public fingerprint of the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn wrap(&self, data_key_id: Uuid, key: &[u8]) -> Vec<u8> {
        encrypt(&self.cipher, &wrap_aad(data_key_id), key)
    }

    fn unwrap(&self, data_key_id: Uuid, wrapped: &[u8]) -> Result<Vec<u8>, VaultError> {
        decrypt(&self.cipher, &wrap_aad(data_key_id), wrapped)
    }
}

fn wrap_aad(data_key_id: Uuid) -> Vec<u8> {
    format!("keygate/v1|data_key|{data_key_id}").into_bytes()
}

fn encrypt(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption of in-memory data cannot fail");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn decrypt(cipher: &Aes256Gcm, aad: &[u8], data: &[u8]) -> Result<Vec<u8>, VaultError> {
    if data.len() < NONCE_LEN + 16 {
        return Err(VaultError::Malformed);
    }
    let (nonce, ct) = data.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| VaultError::Malformed)?;
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad })
        .map_err(|_| VaultError::Open)
}

/// Unwrapped data keys, ready to seal and open.
pub struct Vault {
    active: Uuid,
    keys: HashMap<Uuid, Aes256Gcm>,
}

impl Vault {
    /// Loads and unwraps every data key, creating the first one if the store has none.
    pub async fn unlock(db: &Db, kek: &Kek) -> Result<Self> {
        let mut rows = load_data_keys(db).await?;
        if rows.is_empty() {
            let id = Uuid::now_v7();
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            let mut sql =
                Sql::new("INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES (");
            sql.bind(id.to_string())
                .push(", ")
                .bind(kek.id())
                .push(", ");
            sql.bind(kek.wrap(id, &key))
                .push(", ")
                .bind(Timestamp::now().millis())
                .push(")");
            sql.query().execute(db.pool()).await?;
            // Another replica may have raced us; whatever is stored now is the truth.
            rows = load_data_keys(db).await?;
        }
        let mut keys = HashMap::new();
        for (id, kek_id, wrapped) in &rows {
            if kek_id != kek.id() {
                return Err(VaultError::WrongKek {
                    data_key: *id,
                    kek_id: kek_id.clone(),
                    configured: kek.id().to_owned(),
                }
                .into());
            }
            let key = kek.unwrap(*id, wrapped)?;
            let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| VaultError::Malformed)?;
            keys.insert(*id, cipher);
        }
        // The newest data key seals; older ones still open what they sealed.
        let active = rows
            .iter()
            .map(|(id, _, _)| *id)
            .max()
            .expect("at least one data key");
        Ok(Self { active, keys })
    }

    /// Re-wraps every data key under `new`, in one transaction. Sealed rows are untouched, and
    /// running replicas keep working with the data keys they already hold.
    pub async fn rotate_kek(db: &Db, old: &Kek, new: &Kek) -> Result<usize> {
        let rows = load_data_keys(db).await?;
        let mut tx = db.pool().begin().await?;
        for (id, kek_id, wrapped) in &rows {
            let key = if kek_id == new.id() {
                continue;
            } else if kek_id == old.id() {
                old.unwrap(*id, wrapped)?
            } else {
                return Err(VaultError::WrongKek {
                    data_key: *id,
                    kek_id: kek_id.clone(),
                    configured: old.id().to_owned(),
                }
                .into());
            };
            let mut sql = Sql::new("UPDATE data_keys SET kek_id = ");
            sql.bind(new.id())
                .push(", wrapped = ")
                .bind(new.wrap(*id, &key));
            sql.push(" WHERE id = ").bind(id.to_string());
            sql.query().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Seals `plaintext` for the row named by `ctx`.
    pub fn seal(&self, ctx: &SealContext, plaintext: &[u8]) -> Vec<u8> {
        let cipher = &self.keys[&self.active];
        let body = encrypt(cipher, ctx.aad().as_bytes(), plaintext);
        let mut out = Vec::with_capacity(1 + 16 + body.len());
        out.push(VERSION);
        out.extend_from_slice(self.active.as_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Opens a value sealed for exactly this `ctx`.
    pub fn open(&self, ctx: &SealContext, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.len() < HEADER_LEN || sealed[0] != VERSION {
            return Err(VaultError::Malformed);
        }
        let key_id = Uuid::from_slice(&sealed[1..17]).map_err(|_| VaultError::Malformed)?;
        let cipher = self
            .keys
            .get(&key_id)
            .ok_or(VaultError::UnknownDataKey(key_id))?;
        decrypt(cipher, ctx.aad().as_bytes(), &sealed[17..])
    }

    /// Opens a sealed UTF-8 string.
    pub fn open_string(&self, ctx: &SealContext, sealed: &[u8]) -> Result<String, VaultError> {
        String::from_utf8(self.open(ctx, sealed)?).map_err(|_| VaultError::Malformed)
    }
}

async fn load_data_keys(db: &Db) -> Result<Vec<(Uuid, String, Vec<u8>)>> {
    use sqlx::Row;
    let rows = sqlx::query("SELECT id, kek_id, wrapped FROM data_keys ORDER BY id")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("id")?;
            let id =
                Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt("data_keys.id".into()))?;
            Ok((id, r.try_get("kek_id")?, r.try_get("wrapped")?))
        })
        .collect()
}

#[cfg(test)]
#[path = "vault_tests.rs"]
mod tests;
