//! Client secrets and passwords.
//!
//! Client secrets are 256 random bits, so a single SHA-256 is a sound hash for them (a slow
//! hash adds nothing against guessing 2^256 values, and costs every token request); they are
//! compared in constant time. Human passwords get argon2id.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const HASH_PREFIX: &str = "sha256:";

/// A fresh client secret: `ks_` + 256 random bits, base64url.
pub fn generate_client_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("ks_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a high-entropy secret (client secret, code, refresh token, cookie).
pub fn hash_secret(secret: &str) -> String {
    format!(
        "{HASH_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
    )
}

/// Whether `secret` matches `stored`, in time independent of where they differ.
pub fn verify_secret(secret: &str, stored: &str) -> bool {
    let candidate = hash_secret(secret);
    candidate.len() == stored.len() && bool::from(candidate.as_bytes().ct_eq(stored.as_bytes()))
}

/// argon2id PHC string of a password.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches an argon2 PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_secrets_verify_only_themselves() {
        let a = generate_client_secret();
        let b = generate_client_secret();
        assert_ne!(a, b);
        let stored = hash_secret(&a);
        assert!(!stored.contains(&a));
        assert!(verify_secret(&a, &stored));
        assert!(!verify_secret(&b, &stored));
        assert!(!verify_secret("", &stored));
    }

    #[test]
    fn passwords_use_argon2id() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong", &phc));
        assert!(!verify_password("x", "not a phc string"));
    }
}
