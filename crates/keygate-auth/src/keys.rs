//! ES256 signing keys: generated on first start, sealed in the store so every replica signs
//! and verifies with the same keys, published as a JWKS. Rotation keeps retired keys in the
//! JWKS (and accepted) until tokens signed with them have expired.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keygate_core::{Secret, Timestamp};
use keygate_store::{Store, StoreError, StoredSigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::claims::Claims;

/// Retired keys stay published this long (longer than any token lives).
const RETIRED_KEY_GRACE_SECS: i64 = 2 * 86_400;

/// Why a token was refused. Deliberately coarse: callers answer 401 either way.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is invalid")]
    Invalid,
    #[error("the access token has been revoked")]
    Revoked,
    /// The revocation state could not be read; fail closed.
    #[error("the access token could not be checked")]
    Unavailable,
}

struct Keys {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    jwks: serde_json::Value,
}

/// The gateway's signing keys.
pub struct KeyRing {
    store: Store,
    issuer: String,
    keys: ArcSwap<Keys>,
}

impl KeyRing {
    /// Loads the keys from the store, generating the first one if there is none.
    pub async fn load(store: Store, issuer: String) -> Result<Self, StoreError> {
        let keys = load_keys(&store).await?;
        let keys = match keys {
            Some(k) => k,
            None => {
                store.insert_signing_key(&generate()).await?;
                load_keys(&store).await?.expect("a key was just stored")
            }
        };
        Ok(Self {
            store,
            issuer,
            keys: ArcSwap::from_pointee(keys),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Generates a new signing key, retires the others, and reloads.
    pub async fn rotate(&self) -> Result<String, StoreError> {
        let key = generate();
        self.store.insert_signing_key(&key).await?;
        self.store.retire_signing_keys_except(&key.kid).await?;
        self.reload().await?;
        Ok(key.kid)
    }

    /// Re-reads the keys from the store (another replica may have rotated).
    pub async fn reload(&self) -> Result<(), StoreError> {
        if let Some(keys) = load_keys(&self.store).await? {
            self.keys.store(Arc::new(keys));
        }
        Ok(())
    }

    /// Signs claims with the current key.
    pub fn sign(&self, claims: &Claims) -> String {
        let keys = self.keys.load();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(keys.signing_kid.clone());
        header.typ = Some("at+jwt".to_owned());
        jsonwebtoken::encode(&header, claims, &keys.signing)
            .expect("signing with a loaded ES256 key cannot fail")
    }

    /// Verifies signature, issuer, audience and expiry.
    pub async fn verify(&self, token: &str, audience: &str) -> Result<Claims, VerifyError> {
        let claims = self.verify_signature(token).await?;
        if claims.aud == audience {
            Ok(claims)
        } else {
            Err(VerifyError::Invalid)
        }
    }

    /// Verifies signature, issuer and expiry, and that an audience is present; the caller
    /// checks which audience it is (a resource server may accept several).
    pub async fn verify_signature(&self, token: &str) -> Result<Claims, VerifyError> {
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|_| VerifyError::Invalid)?
            .kid
            .ok_or(VerifyError::Invalid)?;
        if !self.keys.load().verifying.contains_key(&kid) {
            // A replica may have rotated since we loaded; one reload, then give up.
            let _ = self.reload().await;
        }
        let keys = self.keys.load();
        let key = keys.verifying.get(&kid).ok_or(VerifyError::Invalid)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => VerifyError::Expired,
                _ => VerifyError::Invalid,
            })
    }

    /// Claims of a token signed by us, whatever its audience or expiry (for revocation).
    pub async fn decode_unverified_audience(&self, token: &str) -> Option<Claims> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let keys = self.keys.load();
        let key = keys.verifying.get(&kid)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_aud = false;
        validation.validate_exp = false;
        validation.set_required_spec_claims::<&str>(&[]);
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .ok()
            .map(|d| d.claims)
    }

    /// The JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.load().jwks.clone()
    }
}

async fn load_keys(store: &Store) -> Result<Option<Keys>, StoreError> {
    let since = Timestamp::now().plus_seconds(-RETIRED_KEY_GRACE_SECS);
    let stored = store.signing_keys(since).await?;
    let Some(current) = stored.iter().find(|k| k.retired_at.is_none()) else {
        return Ok(None);
    };
    let signing = encoding_key(&current.private_pem)
        .ok_or_else(|| StoreError::Corrupt(format!("signing key {} is unreadable", current.kid)))?;
    let mut verifying = HashMap::new();
    let mut published = Vec::new();
    for key in &stored {
        let (Some(x), Some(y)) = (key.public_jwk["x"].as_str(), key.public_jwk["y"].as_str())
        else {
            return Err(StoreError::Corrupt(format!(
                "signing key {} has no x/y",
                key.kid
            )));
        };
        let decoding = DecodingKey::from_ec_components(x, y)
            .map_err(|e| StoreError::Corrupt(format!("signing key {}: {e}", key.kid)))?;
        verifying.insert(key.kid.clone(), decoding);
        published.push(key.public_jwk.clone());
    }
    Ok(Some(Keys {
        signing_kid: current.kid.clone(),
        signing,
        verifying,
        jwks: json!({ "keys": published }),
    }))
}

/// The signer of a PKCS#8 PEM P-256 key.
fn encoding_key(pem: &Secret) -> Option<EncodingKey> {
    let key = p256::SecretKey::from_pkcs8_pem(pem.expose()).ok()?;
    Some(EncodingKey::from_ec_der(
        key.to_pkcs8_der().ok()?.as_bytes(),
    ))
}

/// A fresh P-256 key; its kid is the RFC 7638 thumbprint of the public JWK.
fn generate() -> StoredSigningKey {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    let x = URL_SAFE_NO_PAD.encode(point.x().expect("uncompressed point has x"));
    let y = URL_SAFE_NO_PAD.encode(point.y().expect("uncompressed point has y"));
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .expect("PKCS#8 encoding of a P-256 key");
    StoredSigningKey {
        public_jwk: json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "sig", "alg": "ES256",
        }),
        kid,
        alg: "ES256".to_owned(),
        private_pem: Secret::new(pem.as_str()),
        created_at: Timestamp::now(),
        retired_at: None,
    }
}
