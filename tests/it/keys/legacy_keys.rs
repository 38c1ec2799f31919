//! A store written before purpose subkeys (every key legacy: the root key file entry without
//! `derivation`, 32-byte wraps, ciphertexts and MACs under the key bytes themselves) still
//! opens and reads after the change, and rotation moves it to HKDF subkeys: the new root
//! version's check value is not the legacy computation, a new tenant KEK is an HKDF key.
//! On sled and on PostgreSQL (which each phase connects to afresh).

use std::path::Path;
use std::sync::Arc;

use pii_vault::authz::{Authz, PeerIdentity, Policy, PurposeRules};
use pii_vault::crypto::{Derivation, Kek, Key, Root};
use pii_vault::domain::{
    Category, FieldName, FieldValue, ManualClock, NewField, Purpose, SubjectId, TenantId, Timestamp,
};
use pii_vault::keyring::{kek_aad, Keyring, RootKeys};
use pii_vault::service::{Call, StateChange, Vault, VaultSettings};
use pii_vault::storage::{PgStore, PgTls, SledStore, Store};

use super::{sid, tid};

/// A root key file as the vault wrote it before purpose subkeys: no `derivation` field.
fn write_legacy_root_file(path: &Path, key_hex: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create root key file");
    write!(
        file,
        "format = 1\ncurrent = 1\n\n[[versions]]\nversion = 1\nkey = \"{key_hex}\"\n"
    )
    .expect("write root key file");
}

fn open_vault(store: &Arc<dyn Store>, keys: Keyring) -> (Vault, Call) {
    let policy = Policy::parse(&Policy::dev_default_text("spiffe://test/admin")).expect("policy");
    let authz = Arc::new(Authz::fixed(policy, PurposeRules::default()));
    let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000_000)));
    let vault =
        Vault::open(store.clone(), keys, authz, clock, VaultSettings::default()).expect("vault");
    let call = Call {
        caller: PeerIdentity::parse("uri:spiffe://test/admin").expect("identity"),
        request_id: "r".into(),
    };
    (vault, call)
}

fn email(value: &str) -> NewField {
    NewField {
        expected_version: None,
        name: FieldName::parse("email").expect("name"),
        category: Category::Account,
        value: FieldValue::Email(value.into()),
        indexed: true,
        ttl: None,
        transaction_record: false,
    }
}

/// Reads back everything `write_legacy_store` wrote: the field (KEK, DEK, field
/// ciphertext), the blind index, the sealed consent record, the audit chain.
async fn reads_back(vault: &Vault, call: &Call, acme: &TenantId, alice: &SubjectId) {
    let support = Purpose::parse("support").expect("purpose");
    let fields = vault
        .get_fields(call, acme, alice, &[], &support)
        .await
        .expect("the legacy field reads");
    assert_eq!(
        fields[0].value,
        Some(FieldValue::Email("alice@example.com".into()))
    );
    let email = FieldName::parse("email").expect("name");
    let found = vault
        .find_subjects(
            call,
            acme,
            &email,
            &FieldValue::Email("alice@example.com".into()),
            &support,
        )
        .await
        .expect("lookup");
    assert_eq!(
        found,
        vec![alice.clone()],
        "the legacy index tag still matches"
    );
    let state = vault
        .subject_state(call, acme, alice, None)
        .await
        .expect("the legacy record seal checks");
    assert!(state.consents.iter().any(|c| c.granted));
    let verified = vault.verify_audit(call).await.expect("verify");
    assert!(verified.is_ok(), "{verified:?}");
}

/// The tenant's KEK versions, unwrapped, with their derivations.
fn kek_derivations(store: &dyn Store, root_file: &Path, acme: &TenantId) -> Vec<(u32, Derivation)> {
    let root = RootKeys::load(root_file).expect("root");
    store
        .keks(acme)
        .expect("keks")
        .into_iter()
        .map(|(v, wrapped)| {
            let r = root.version(wrapped.key_version()).expect("root version");
            let kek: Key<Kek> = r.unwrap_key(&wrapped, v, &kek_aad(acme)).expect("unwrap");
            (v, kek.derivation())
        })
        .collect()
}

/// The legacy check value of a root key: HMAC-SHA-256 under the key bytes of
/// `len(label) label len(4) version`, computed here by hand.
fn legacy_check_value(root: &Key<Root>) -> Vec<u8> {
    let label = b"pii-vault key check value v1";
    let mut msg = (label.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(label);
    msg.extend_from_slice(&4u32.to_be_bytes());
    msg.extend_from_slice(&root.version().to_be_bytes());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, root.secret_bytes());
    ring::hmac::sign(&key, &msg).as_ref().to_vec()
}

#[tokio::test]
async fn a_sled_store_written_with_legacy_keys_reads_and_rotation_moves_it_to_hkdf_subkeys() {
    let dir = tempfile::TempDir::new().expect("dir");
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&dir.path().join("store"), 1 << 22).expect("open"));
    legacy_round_trip(dir.path(), || store.clone()).await;
}

#[tokio::test]
async fn a_postgres_store_written_with_legacy_keys_reads_and_rotation_moves_it_to_hkdf_subkeys() {
    let Some(server) = crate::postgres::server_or_skip("keys::legacy_keys (PostgreSQL)") else {
        return;
    };
    let url = server.fresh_database();
    let dir = tempfile::TempDir::new().expect("dir");
    legacy_round_trip(dir.path(), || -> Arc<dyn Store> {
        Arc::new(PgStore::connect(&url, 4, &PgTls::Disable).expect("connect"))
    })
    .await;
}

/// Writes a store with legacy keys through `open()`, then opens it again (`open()` once
/// more) with this code's keyring, reads, rotates and reads.
async fn legacy_round_trip(dir: &Path, open: impl Fn() -> Arc<dyn Store>) {
    let root_file = dir.join("root.key");
    let mut raw = [0u8; 32];
    pii_vault::crypto::fill_random(&mut raw).expect("rng");
    write_legacy_root_file(&root_file, &hex::encode(raw));
    let (acme, alice) = (tid("acme"), sid("alice"));

    // Written as the code before purpose subkeys wrote it.
    {
        let store = open();
        let root = RootKeys::load(&root_file).expect("legacy root key file loads");
        assert_eq!(
            root.current().secret_file_key().map(Key::derivation),
            Some(Derivation::Legacy)
        );
        let keys = Keyring::open(root, store.clone())
            .expect("keys")
            .with_legacy_keys();
        let (vault, call) = open_vault(&store, keys);
        vault.create_tenant(&call, &acme).await.expect("tenant");
        vault
            .put_fields(&call, &acme, &alice, &[email("alice@example.com")])
            .await
            .expect("put");
        let consent = StateChange::Consent {
            purpose: Purpose::parse("marketing").expect("purpose"),
            granted: true,
            source: "form".into(),
        };
        vault
            .subject_state(&call, &acme, &alice, Some(consent))
            .await
            .expect("consent");
    }
    let store = open();
    assert_eq!(
        kek_derivations(store.as_ref(), &root_file, &acme),
        vec![(1, Derivation::Legacy)]
    );

    // Opened by this code: the legacy check value matches, everything reads.
    let keys = Keyring::open(RootKeys::load(&root_file).expect("root"), store.clone())
        .expect("the legacy root key check value still matches");
    assert_eq!(
        keys.audit_key().expect("audit").derivation(),
        Derivation::Legacy
    );
    let (vault, call) = open_vault(&store, keys);
    reads_back(&vault, &call, &acme, &alice).await;

    // A tenant key rotation adds an HKDF KEK; the legacy DEK is re-wrapped as it is.
    vault.rotate_tenant_key(&call, &acme).await.expect("rotate");
    let keks = kek_derivations(store.as_ref(), &root_file, &acme);
    assert_eq!(keks.last(), Some(&(2, Derivation::HkdfV1)), "{keks:?}");
    reads_back(&vault, &call, &acme, &alice).await;

    // A root rotation replaces the legacy root version with an HKDF one; the legacy one is
    // retired (it opens backups for the backup window) and wraps nothing any more.
    let rotation = vault.rotate_root_key(&call).await.expect("rotate root");
    assert_eq!(rotation.retired, vec![1]);
    assert!(rotation.destroyed.is_empty(), "kept for the backup window");
    let root = RootKeys::load(&root_file).expect("root");
    assert_eq!(root.version_numbers(), vec![1, 2]);
    assert_eq!(root.retired().len(), 1);
    let current = root.current().secret_file_key().expect("a file key");
    assert_eq!(current.derivation(), Derivation::HkdfV1);
    let stored = store
        .meta("root_key_check")
        .expect("meta")
        .expect("check value");
    assert_eq!(&stored[..4], &2u32.to_be_bytes());
    assert_eq!(&stored[4..], &current.check_value()[..]);
    assert_ne!(&stored[4..], &legacy_check_value(current)[..]);
    let text = std::fs::read_to_string(&root_file).expect("read");
    assert!(text.contains("derivation = \"hkdf-sha256-v1\""), "{text}");
    reads_back(&vault, &call, &acme, &alice).await;
    drop(vault);

    // And a fresh open after both rotations still reads.
    let keys = Keyring::open(root, store.clone()).expect("keys");
    let (vault, call) = open_vault(&store, keys);
    reads_back(&vault, &call, &acme, &alice).await;
}
