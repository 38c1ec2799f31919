//! Key epochs make an erasure final: a copy of the data directory taken before the
//! erasure cannot open the erased subject once the epoch ran.

use std::sync::Arc;

use pii_vault::config::RawConfig;
use pii_vault::crypto::{Kek, Key, Root, Zeroizing};
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::proto::v1 as pb;
use pii_vault::storage::{SledStore, Store};
use tempfile::TempDir;

use super::*;
use crate::erasure::erase;
use crate::util::{create_tenant, get, put, test_config, text, text_of, TestVault};

#[tokio::test]
async fn after_an_epoch_a_copy_of_the_data_directory_cannot_open_an_erased_subject() {
    // The root key lives outside the data directory, as in production: the copy is a
    // backup of the data directory, the root key file is not in it.
    let keydir = TempDir::new().expect("key dir");
    let root_file = keydir.path().join("root.key");
    let dir = TempDir::new().expect("dir");
    let config = test_config(dir.path(), |raw: &mut RawConfig| {
        raw.keys.root_key_file = Some(root_file.clone());
        // No backup window: the epoch destroys the old root version at once. With the
        // default window it is retired for 30 days first (backup_window.rs tests that).
        raw.backup.retention_days = Some(0);
    });
    let vault = TestVault::start_on(dir, config.clone(), None).await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "alice",
        vec![
            text("email", pb::Category::Account, "alice@example.com"),
            text("card", pb::Category::Payment, "4111111111111111"),
        ],
    )
    .await
    .expect("put alice");
    put(
        &mut client,
        "acme",
        "bob",
        vec![text("email", pb::Category::Account, "bob@example.com")],
    )
    .await
    .expect("put bob");
    drop(client);
    let dir = vault.stop().await;
    let backup = TempDir::new().expect("backup");
    copy_dir(dir.path(), backup.path());

    let vault = TestVault::start_on(dir, config.clone(), None).await;
    erase(vault.channel().await, "acme", "alice")
        .await
        .expect("erase");
    let dir = vault.stop().await;

    let (acme, alice) = (tid("acme"), sid("alice"));
    let old = SledStore::open(&backup.path().join("store"), 16 << 20).expect("backup store");
    let old_record = old
        .subject(&acme, &alice)
        .expect("read")
        .expect("in backup");
    let old_fields = old.fields(&acme, &alice).expect("fields");
    assert_eq!(old_fields.len(), 2);
    let old_kek = old.kek(&acme, 1).expect("read").expect("backup KEK");

    // Before the epoch: the KEK the vault still holds opens the copied wrapped DEK, and so
    // the copied ciphertexts. (Without this the test below could pass vacuously.)
    {
        let live: Arc<dyn Store> =
            Arc::new(SledStore::open(&dir.path().join("store"), 16 << 20).expect("live store"));
        assert!(
            live.subject(&acme, &alice).expect("read").is_none(),
            "erased"
        );
        let keys = Keyring::open(RootKeys::load(&root_file).expect("root"), live).expect("keys");
        let deks = keys
            .subject_deks(&acme, &alice, &old_record)
            .expect("before the epoch the copied DEK still unwraps");
        let mut opened = Vec::new();
        for f in &old_fields {
            let dek = deks.version(f.sealed.key_version()).expect("dek version");
            let plain = dek
                .open(&f.sealed, &field_aad("acme", "alice", f))
                .expect("copied ciphertext opens before the epoch");
            opened.push(String::from_utf8(plain.to_vec()).expect("utf8"));
        }
        opened.sort();
        assert_eq!(opened, ["4111111111111111", "alice@example.com"]);
    }

    let vault = TestVault::start_on(dir, config.clone(), None).await;
    let epoch = keys_client(&vault)
        .await
        .run_key_epoch(pb::RunKeyEpochRequest {})
        .await
        .expect("epoch")
        .into_inner();
    assert_eq!(epoch.tenants.len(), 1);
    assert_eq!(epoch.tenants[0].tenant_id, "acme");
    assert_eq!(epoch.tenants[0].destroyed_versions, [1]);
    assert_eq!(epoch.root_versions_destroyed, [1]);
    assert_eq!(epoch.root_version, 2);
    // Everyone else is untouched.
    let mut client = vault.records().await;
    let bob = get(&mut client, "acme", "bob", &[]).await.expect("bob");
    assert_eq!(text_of(&bob[0]), "bob@example.com");
    let s = status(&mut keys_client(&vault).await, "acme", true).await;
    assert!(!s.tenants[0].epoch_pending, "epoch mark cleared");
    assert!(s.last_epoch.is_some());
    drop(client);
    let dir = vault.stop().await;

    // After the epoch: everything the vault holds, root key file included.
    let root = RootKeys::load(&root_file).expect("root");
    assert_eq!(
        root.version_numbers(),
        [2],
        "old root version gone from the file"
    );
    let live: Arc<dyn Store> =
        Arc::new(SledStore::open(&dir.path().join("store"), 16 << 20).expect("live store"));
    assert!(
        live.kek(&acme, 1).expect("read").is_none(),
        "KEK v1 destroyed"
    );
    let keys =
        Keyring::open(RootKeys::load(&root_file).expect("root"), live.clone()).expect("keys");
    assert!(keys.subject_deks(&acme, &alice, &old_record).is_err());

    // Every key the vault holds, tried in every role against the copies: root versions,
    // every stored KEK version (unwrapped), the audit key, the other subjects' DEKs.
    let roots: Vec<&Key<Root>> = root
        .version_numbers()
        .into_iter()
        .filter_map(|v| root.version(v))
        .filter_map(|v| v.secret_file_key())
        .collect();
    let mut raw_keys: Vec<Zeroizing<[u8; 32]>> = roots
        .iter()
        .map(|k| Zeroizing::new(*k.secret_bytes()))
        .collect();
    for (v, wrapped) in live.keks(&acme).expect("keks") {
        let r = root.version(wrapped.key_version()).expect("live root");
        let kek: Key<Kek> = r
            .unwrap_key(&wrapped, v, &pii_vault::keyring::kek_aad(&acme))
            .expect("live KEK unwraps");
        raw_keys.push(Zeroizing::new(*kek.secret_bytes()));
    }
    raw_keys.push(Zeroizing::new(
        *keys.audit_key().expect("audit").secret_bytes(),
    ));
    let bob_rec = live
        .subject(&acme, &sid("bob"))
        .expect("read")
        .expect("bob");
    let bob_dek = keys
        .subject_dek(&acme, &sid("bob"), &bob_rec)
        .expect("bob dek");
    raw_keys.push(Zeroizing::new(*bob_dek.secret_bytes()));

    assert_no_key_opens(
        &StaleCopy {
            tenant: "acme",
            subject: "alice",
            kek: &old_kek,
            record: &old_record,
            fields: &old_fields,
        },
        &raw_keys,
    );
}

#[tokio::test]
async fn erasure_receipts_promise_finality_after_the_configured_epoch_interval() {
    let vault = TestVault::start_with(|raw| raw.keys.epoch_interval_hours = Some(6)).await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "a@example.com")],
    )
    .await
    .expect("put");
    let receipt = erase(vault.channel().await, "acme", "alice")
        .await
        .expect("erase");
    let erased = receipt.erased_at.expect("erased_at").seconds;
    let final_after = receipt.final_after.expect("final_after").seconds;
    // The next epoch retires the root version that wrapped the erased key's KEK; it is
    // destroyed the 30-day backup window later (backup_window.rs shows it happen).
    assert_eq!(final_after - erased, 6 * 3600 + 30 * 86_400);
    let s = status(&mut keys_client(&vault).await, "", false).await;
    assert_eq!(s.epoch_interval_seconds, 6 * 3600);
    let next = s.next_epoch.expect("next epoch").seconds;
    assert!(
        next <= final_after,
        "the next epoch comes no later than the promise"
    );
}
