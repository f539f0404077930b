//! Unit tests of the vault: sealing binds a row, rotation rewraps, key size is checked.

use super::*;

async fn temp_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}/t.db", dir.path().display()), 2)
        .await
        .unwrap();
    db.migrate().await.unwrap();
    (dir, db)
}

fn ctx(org: OrgId, integration: IntegrationId) -> SealContext {
    SealContext {
        purpose: Purpose::ServerToken,
        org: Some(org),
        integration: Some(integration),
        user: None,
    }
}

#[tokio::test]
async fn seal_binds_ciphertext_to_its_row() {
    let (_dir, db) = temp_db().await;
    let kek = Kek::from_base64(&Kek::generate_base64()).unwrap();
    let vault = Vault::unlock(&db, &kek).await.unwrap();
    let (org, a, b) = (OrgId::new(), IntegrationId::new(), IntegrationId::new());
    let sealed = vault.seal(&ctx(org, a), b"ghp_secret");
    assert_eq!(vault.open(&ctx(org, a), &sealed).unwrap(), b"ghp_secret");
    assert!(matches!(
        vault.open(&ctx(org, b), &sealed),
        Err(VaultError::Open)
    ));
    let other_purpose = SealContext {
        purpose: Purpose::UserToken,
        ..ctx(org, a)
    };
    assert!(vault.open(&other_purpose, &sealed).is_err());
    let mut tampered = sealed.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(vault.open(&ctx(org, a), &tampered).is_err());
}

#[tokio::test]
async fn rotation_rewraps_and_old_key_no_longer_unlocks() {
    let (_dir, db) = temp_db().await;
    let old = Kek::from_base64(&Kek::generate_base64()).unwrap();
    let new = Kek::from_base64(&Kek::generate_base64()).unwrap();
    let sealed = Vault::unlock(&db, &old)
        .await
        .unwrap()
        .seal(&ctx(OrgId::new(), IntegrationId::new()), b"x");
    assert_eq!(Vault::rotate_kek(&db, &old, &new).await.unwrap(), 1);
    assert!(matches!(
        Vault::unlock(&db, &old).await.err().unwrap(),
        StoreError::Vault(VaultError::WrongKek { .. })
    ));
    let vault = Vault::unlock(&db, &new).await.unwrap();
    assert_eq!(vault.keys.len(), 1);
    assert_eq!(sealed[1..17], *vault.active.as_bytes());
}

#[test]
fn kek_must_be_32_bytes() {
    assert!(matches!(
        Kek::from_base64("c2hvcnQ="),
        Err(VaultError::BadKek)
    ));
    assert!(Kek::from_base64("not base64 at all").is_err());
}
