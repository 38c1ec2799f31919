//! Backups restorable for the backup window, erasures final after it, with the root key in a
//! file and in a PKCS#11 token (SoftHSM2): backup → erase one subject → shred one tenant →
//! two key epochs → restore with the current keys. The live subjects read back, the erased
//! one and the shredded tenant stay gone (the erasure ledger is applied), also after a
//! restart. Once the clock passes the window, the retired root versions are destroyed, the
//! backup is refused, and nothing the vault holds opens the erased subject's copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pii_vault::config::{Config, RawConfig};
use pii_vault::crypto::{Kek, Key, Root, Zeroizing};
use pii_vault::domain::{
    Category, Clock, FieldName, FieldValue, ManualClock, NewField, Purpose, Timestamp,
};
use pii_vault::keyring::{kek_aad, Keyring, RootKeys, RootSource};
use pii_vault::service::{run_key_jobs, Call, LedgerApplied, ServiceError, Vault, VaultSettings};
use pii_vault::storage::{backup, SledStore, Store};
use tempfile::TempDir;

use super::{assert_no_key_opens, sid, tid, StaleCopy};
use crate::softhsm;
use crate::util::{admin_authz, admin_call, pkcs11_root};

const DAY: u64 = 86_400 * 1_000_000;
const START: Timestamp = Timestamp(1_700_000_000_000_000);

/// Where the root key is kept in a run of the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Custody {
    File,
    Token,
}

/// The keys of the scenario: the root key source, with the erasure ledger beside it.
struct Keys {
    source: RootSource,
    ledger: PathBuf,
    /// Keeps the key directory (file custody) alive.
    _dir: TempDir,
}

impl Keys {
    fn new(custody: Custody, test: &str) -> Option<Self> {
        let dir = TempDir::new().expect("key dir");
        let source = match custody {
            Custody::File => {
                let file = dir.path().join("root.key");
                RootKeys::generate()
                    .expect("rng")
                    .save(&file)
                    .expect("save");
                RootSource::File(file)
            }
            Custody::Token => RootSource::Pkcs11(softhsm::token(test)?.settings),
        };
        let ledger = dir.path().join("erasure.ledger");
        Some(Self {
            source,
            ledger,
            _dir: dir,
        })
    }

    /// A configuration naming these keys, for the restore checks.
    fn config(&self, data: &Path) -> Config {
        let mut raw = RawConfig {
            data_dir: Some(data.to_path_buf()),
            ..RawConfig::default()
        };
        match &self.source {
            RootSource::File(file) => raw.keys.root_key_file = Some(file.clone()),
            RootSource::Pkcs11(s) => raw.keys.root = Some(pkcs11_root(s)),
        }
        raw.validate().expect("config")
    }

    fn root(&self) -> RootKeys {
        self.source.load().expect("root keys")
    }
}

/// One vault over one data directory, its key worker running.
struct Node {
    vault: Arc<Vault>,
    store: Arc<dyn Store>,
    worker: tokio::task::JoinHandle<()>,
}

fn open(data: &Path, keys: &Keys, clock: &Arc<ManualClock>) -> Result<Node, String> {
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&data.join("store"), 16 << 20).expect("store"));
    let keyring = Keyring::open(
        keys.source
            .load_for(store.as_ref())
            .map_err(|e| e.to_string())?,
        store.clone(),
    )
    .map_err(|e| e.to_string())?;
    let settings = VaultSettings {
        erasure_ledger: Some(keys.ledger.clone()),
        // Epochs when the test asks for them: a scheduled one comes only after 30 days.
        key_epoch_interval: Duration::from_secs(30 * 86_400),
        ..VaultSettings::default()
    };
    let vault = Arc::new(
        Vault::open(
            store.clone(),
            keyring,
            admin_authz(),
            clock.clone(),
            settings,
        )
        .map_err(|e| e.to_string())?,
    );
    let worker = tokio::spawn(run_key_jobs(vault.clone()));
    Ok(Node {
        vault,
        store,
        worker,
    })
}

impl Node {
    async fn close(self) {
        self.worker.abort();
        let _ = self.worker.await;
        let tasks = self.vault.tasks();
        drop(self.vault);
        pii_vault::service::closed(tasks).await;
        self.store.flush().expect("flush");
    }
}

fn call() -> Call {
    admin_call()
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

async fn read(vault: &Vault, tenant: &str, subject: &str) -> Result<String, ServiceError> {
    let purpose = Purpose::parse("support").expect("purpose");
    let fields = vault
        .get_fields(&call(), &tid(tenant), &sid(subject), &[], &purpose)
        .await?;
    match &fields[0].value {
        Some(FieldValue::Email(e)) => Ok(e.clone()),
        other => panic!("unexpected value {other:?}"),
    }
}

async fn write_backup(vault: &Vault, file: &Path) -> backup::Manifest {
    let mut chunks = vault.backup(&call()).await.expect("backup");
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        bytes.extend(chunk.expect("chunk"));
    }
    std::fs::write(file, &bytes).expect("write backup");
    backup::verify(file).expect("a whole backup")
}

/// Waits for the key worker to destroy every one of `gone`.
async fn root_versions_destroyed(keys: &Keys, gone: &[u32]) {
    for _ in 0..100 {
        if !keys
            .root()
            .version_numbers()
            .iter()
            .any(|v| gone.contains(v))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "root key versions stayed {:?}; expected {gone:?} destroyed",
        keys.root().version_numbers()
    );
}

async fn scenario(custody: Custody) {
    let test = format!("keys::backup_window::{custody:?}");
    let Some(keys) = Keys::new(custody, &test) else {
        return;
    };
    let clock = Arc::new(ManualClock::new(START));
    let live_dir = TempDir::new().expect("live dir");
    let node = open(live_dir.path(), &keys, &clock).expect("open");
    let c = call();
    let (acme, beta) = (tid("acme"), tid("beta"));
    node.vault.create_tenant(&c, &acme).await.expect("acme");
    node.vault.create_tenant(&c, &beta).await.expect("beta");
    for (t, s) in [(&acme, "alice"), (&acme, "bob"), (&beta, "carol")] {
        node.vault
            .put_fields(&c, t, &sid(s), &[email(&format!("{s}@example.com"))])
            .await
            .expect("put");
    }
    let files = TempDir::new().expect("backups");
    let backup_file = files.path().join("before.backup");
    let manifest = write_backup(&node.vault, &backup_file).await;
    assert_eq!(
        manifest.restorable_until_unix,
        Some(START.0 / 1_000_000 + 30 * 86_400),
        "the backup says until when it opens"
    );

    // Erase alice, shred beta, then two epochs a day apart.
    let receipt = node
        .vault
        .erase_subject(&c, &acme, &sid("alice"))
        .await
        .expect("erase");
    assert_eq!(
        receipt.final_after.0 - receipt.erased_at.0,
        30 * DAY + 30 * DAY,
        "final after the next scheduled epoch (30 days here) and the backup window"
    );
    node.vault.shred_tenant(&c, &beta).await.expect("shred");
    clock.advance_micros(DAY);
    let first = node.vault.run_key_epoch(&c).await.expect("epoch 1");
    assert_eq!(first.root.retired, [1]);
    assert!(
        first.root.destroyed.is_empty(),
        "kept for the backup window"
    );
    clock.advance_micros(DAY);
    let second = node.vault.run_key_epoch(&c).await.expect("epoch 2");
    assert_eq!(
        (second.root.current, second.root.retired.as_slice()),
        (3, &[2][..])
    );
    let retired: Vec<u32> = keys.root().retired().iter().map(|(v, _)| *v).collect();
    assert_eq!(
        retired,
        [1, 2],
        "both retired versions kept, recorded with the key"
    );
    node.close().await;

    // Restore with the current keys: the ledger erases alice and shreds beta again.
    let restored_dir = TempDir::new().expect("restore dir");
    let config = keys.config(restored_dir.path());
    let now = clock.now().0 / 1_000_000;
    let (_, needed) = tokio::task::block_in_place(|| {
        pii_vault::server::check_restorable(&backup_file, &config, now)
    })
    .expect("restorable within the window");
    assert_eq!(needed, 1, "the backup was bound to root key version 1");
    backup::restore(&backup_file, &restored_dir.path().join("store")).expect("restore");
    let restored = open(restored_dir.path(), &keys, &clock).expect("open restored");
    let applied = restored
        .vault
        .apply_erasure_ledger()
        .await
        .expect("apply the ledger");
    assert_eq!(
        applied,
        LedgerApplied {
            entries: 2,
            subjects_erased: 1,
            tenants_shredded: 1
        }
    );
    for restart in [false, true] {
        let v = &restored.vault;
        assert_eq!(
            read(v, "acme", "bob").await.expect("bob reads back"),
            "bob@example.com",
            "restart {restart}"
        );
        let alice = read(v, "acme", "alice").await.expect_err("alice erased");
        assert!(
            matches!(alice, ServiceError::SubjectErased { .. }),
            "restart {restart}: {alice:?}"
        );
        let carol = read(v, "beta", "carol").await.expect_err("beta shredded");
        assert!(
            matches!(carol, ServiceError::TenantShredded),
            "restart {restart}: {carol:?}"
        );
        if !restart {
            break;
        }
    }
    restored.close().await;
    let restored = open(restored_dir.path(), &keys, &clock).expect("reopen restored");
    assert_eq!(
        restored.vault.apply_erasure_ledger().await.expect("again"),
        LedgerApplied::default(),
        "nothing left to apply"
    );
    assert_eq!(
        read(&restored.vault, "acme", "bob").await.expect("bob"),
        "bob@example.com"
    );
    assert!(matches!(
        read(&restored.vault, "acme", "alice").await,
        Err(ServiceError::SubjectErased { .. })
    ));
    assert!(matches!(
        read(&restored.vault, "beta", "carol").await,
        Err(ServiceError::TenantShredded)
    ));

    // Past the window: the worker destroys the retired versions (v1 retired on day 1,
    // v2 on day 2), alice's receipt has come due, and the backup is refused.
    clock.advance_micros(31 * DAY);
    root_versions_destroyed(&keys, &[1, 2]).await;
    assert!(
        clock.now() <= receipt.final_after,
        "final no later than the receipt said"
    );
    restored.close().await;
    let now = clock.now().0 / 1_000_000;
    let refused = tokio::task::block_in_place(|| {
        pii_vault::server::check_restorable(&backup_file, &config, now)
    })
    .expect_err("too old");
    assert!(
        refused.to_string().contains("more than the backup window"),
        "{refused}"
    );
    // Restored anyway, behind the check's back, the store does not open.
    let late_dir = TempDir::new().expect("late dir");
    backup::restore(&backup_file, &late_dir.path().join("store")).expect("raw restore");
    let err = open(late_dir.path(), &keys, &clock).err().expect("refused");
    assert!(err.contains("root key version 1"), "{err}");

    nothing_opens_alice(&keys, live_dir.path(), late_dir.path());

    // A ledger that lost entries (a truncated copy, another vault's) is refused before
    // anything is served from the store that saw them.
    std::fs::remove_file(&keys.ledger).expect("remove the ledger");
    let restored = open(restored_dir.path(), &keys, &clock).expect("open with a new ledger");
    let err = restored
        .vault
        .apply_erasure_ledger()
        .await
        .expect_err("a shorter ledger");
    assert!(
        err.to_string()
            .contains("holds 0 entries, but this store has applied 2"),
        "{err}"
    );
    restored.close().await;
}

/// The copy of alice in the backup (her wrapped DEK, her ciphertext, acme's KEK v1 wrapped
/// under root v1) opens under no key the vault holds: no root version (a token's keys are
/// tried through the token), no live KEK, the audit key.
fn nothing_opens_alice(keys: &Keys, live: &Path, copy: &Path) {
    let (acme, alice) = (tid("acme"), sid("alice"));
    let old = SledStore::open(&copy.join("store"), 16 << 20).expect("copy");
    let old_record = old.subject(&acme, &alice).expect("read").expect("in copy");
    let old_fields = old.fields(&acme, &alice).expect("fields");
    let old_kek = old.kek(&acme, 1).expect("read").expect("KEK v1 in copy");
    assert_eq!(old_kek.key_version(), 1, "wrapped under root v1");

    let root = keys.root();
    assert!(!root.version_numbers().is_empty());
    for v in root.version_numbers() {
        let r = root.version(v).expect("held");
        assert!(r.unwrap_key::<Kek>(&old_kek, 1, &kek_aad(&acme)).is_err());
    }
    let live: Arc<dyn Store> =
        Arc::new(SledStore::open(&live.join("store"), 16 << 20).expect("live"));
    assert!(
        live.kek(&acme, 1).expect("read").is_none(),
        "KEK v1 destroyed"
    );
    let keyring = Keyring::open(keys.root(), live.clone()).expect("keys");
    let mut raw_keys: Vec<Zeroizing<[u8; 32]>> = root
        .version_numbers()
        .into_iter()
        .filter_map(|v| root.version(v)?.secret_file_key())
        .map(|k: &Key<Root>| Zeroizing::new(*k.secret_bytes()))
        .collect();
    for (v, wrapped) in live.keks(&acme).expect("keks") {
        let r = root.version(wrapped.key_version()).expect("live root");
        let kek: Key<Kek> = r
            .unwrap_key(&wrapped, v, &kek_aad(&acme))
            .expect("live KEK unwraps");
        raw_keys.push(Zeroizing::new(*kek.secret_bytes()));
    }
    raw_keys.push(Zeroizing::new(
        *keyring.audit_key().expect("audit").secret_bytes(),
    ));
    assert!(raw_keys.len() >= 2, "something was tried");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_for_the_window_without_its_erasures_and_not_after_it_file() {
    scenario(Custody::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_for_the_window_without_its_erasures_and_not_after_it_pkcs11() {
    scenario(Custody::Token).await;
}
