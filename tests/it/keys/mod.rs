//! Key management: tenant and root key rotation with online re-wrap (also across a real
//! process kill), usage limits, key epochs that make an erasure final even against a copy
//! of the data directory, tenant shredding, and the `keys` CLI.

mod backup_window;
mod dek_cache;
mod epochs;
mod forensic;
mod legacy_keys;
mod limits;
mod process_kill;
mod rotation;
mod shred;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pb::key_service_client::KeyServiceClient;
use pii_vault::crypto::{Aad, Key, KeyRole, Zeroizing};
use pii_vault::domain::{SubjectId, TenantId};
use pii_vault::proto::v1 as pb;
use pii_vault::storage::{FieldRecord, Store};
use tonic::transport::Channel;

use crate::util::{put, text, TestVault};

pub fn tid(s: &str) -> TenantId {
    TenantId::parse(s).expect("tenant id")
}

pub fn sid(s: &str) -> SubjectId {
    SubjectId::parse(s).expect("subject id")
}

pub async fn keys_client(vault: &TestVault) -> KeyServiceClient<Channel> {
    KeyServiceClient::new(vault.channel().await)
}

pub async fn status(
    client: &mut KeyServiceClient<Channel>, tenant: &str, count_deks: bool,
) -> pb::KeyStatus {
    client
        .get_key_status(pb::GetKeyStatusRequest {
            tenant_id: tenant.into(),
            count_deks,
        })
        .await
        .expect("key status")
        .into_inner()
}

/// Polls until the tenant has no re-wrap running; returns its counted status.
pub async fn wait_for_rewrap(
    client: &mut KeyServiceClient<Channel>, tenant: &str, within: Duration,
) -> pb::TenantKeyStatus {
    let deadline = Instant::now() + within;
    loop {
        let s = status(client, tenant, false).await;
        if s.tenants[0].rewrap.is_none() {
            return status(client, tenant, true).await.tenants.remove(0);
        }
        assert!(Instant::now() < deadline, "re-wrap did not finish: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn email(i: usize) -> String {
    format!("user{i}@example.com")
}

/// Writes `n` subjects `s0..` with one email field each, `streams` at a time.
pub async fn preload(channel: Channel, tenant: &str, n: usize, streams: usize) {
    let mut tasks = Vec::new();
    for w in 0..streams {
        let mut client = pb::record_service_client::RecordServiceClient::new(channel.clone());
        let tenant = tenant.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(streams) {
                put(
                    &mut client,
                    &tenant,
                    &format!("s{i}"),
                    vec![text("email", pb::Category::Account, &email(i))],
                )
                .await
                .expect("preload put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("preload task");
    }
}

/// Every wrapped DEK of a tenant in a stopped store, by the KEK version that wraps it.
pub fn wraps_by_kek(store: &dyn Store, tenant: &TenantId) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let mut after = None;
    loop {
        let page = store
            .subject_records(tenant, after.as_ref(), 1000)
            .expect("records");
        for (_, rec) in &page {
            for (_, w) in rec.wrapped_deks() {
                *out.entry(w.key_version()).or_default() += 1;
            }
        }
        if page.len() < 1000 {
            return out;
        }
        after = page.last().map(|(id, _)| id.clone());
    }
}

/// The AAD of a field ciphertext (the vault's documented field context).
pub fn field_aad(tenant: &str, subject: &str, f: &FieldRecord) -> Aad {
    Aad::new("field")
        .with(tenant.as_bytes())
        .with(subject.as_bytes())
        .with(f.meta.name.as_str().as_bytes())
        .with(&[f.meta.category.code(), f.kind])
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The key bytes of `key` relabelled as a key of role `R` and version `version`: lets the
/// test try every key the vault holds against a ciphertext, whatever it was made for.
pub fn as_key<R: KeyRole, S: KeyRole>(key: &Key<S>, version: u32) -> Key<R> {
    Key::from_secret_bytes(version, Zeroizing::new(*key.secret_bytes()))
}

/// A subject's copy as a stale page or a backup keeps it: its tenant's KEK wrapped under
/// the root, its wrapped DEK, its field ciphertexts.
pub struct StaleCopy<'a> {
    pub tenant: &'a str,
    pub subject: &'a str,
    pub kek: &'a pii_vault::crypto::Sealed,
    pub record: &'a pii_vault::storage::SubjectRecord,
    pub fields: &'a [FieldRecord],
}

/// Asserts that none of `raw_keys`, tried in every role (root, KEK, DEK) and at the
/// version each part names, opens any part of `copy`.
pub fn assert_no_key_opens(copy: &StaleCopy<'_>, raw_keys: &[Zeroizing<[u8; 32]>]) {
    use pii_vault::crypto::{Dek, Kek, Root};
    let (tenant, subject) = (tid(copy.tenant), sid(copy.subject));
    assert!(!raw_keys.is_empty(), "nothing was tried");
    for bytes in raw_keys {
        let any: Key<Dek> = Key::from_secret_bytes(1, bytes.clone());
        // The copied KEK by no root-role key...
        let as_root: Key<Root> = as_key(&any, copy.kek.key_version());
        assert!(as_root
            .unwrap_key::<Kek>(copy.kek, 1, &pii_vault::keyring::kek_aad(&tenant))
            .is_err());
        // ...the copied DEK by no KEK-role key...
        let as_kek: Key<Kek> = as_key(&any, copy.record.wrapped_dek.key_version());
        assert!(as_kek
            .unwrap_key::<Dek>(
                &copy.record.wrapped_dek,
                copy.record.dek_version,
                &pii_vault::keyring::dek_aad(&tenant, &subject)
            )
            .is_err());
        // ...and the copied ciphertexts by no DEK-role key.
        for f in copy.fields {
            let as_dek: Key<Dek> = as_key(&any, f.sealed.key_version());
            assert!(as_dek
                .open(&f.sealed, &field_aad(copy.tenant, copy.subject, f))
                .is_err());
        }
    }
}
