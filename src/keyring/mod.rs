//! The key hierarchy: root key → tenant KEK → subject DEK.
//!
//! - The root key comes from its file (`RootKeys`) and never enters the store.
//! - A tenant KEK is generated at tenant creation and stored wrapped by the root key, bound
//!   to the tenant id.
//! - A subject DEK is generated at the subject's first write and stored wrapped by the
//!   tenant KEK, bound to tenant and subject.
//!
//! Unwrapped KEKs are cached (there are few tenants); DEKs are unwrapped per request.

mod root_file;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub use root_file::RootKeys;

use crate::crypto::{mac_eq, Aad, Audit, CryptoError, Dek, Index, Kek, Key, Sealed, MAC_LEN};
use crate::domain::{SubjectId, TenantId, Timestamp};
use crate::storage::{Store, StoreError, SubjectRecord, TenantRecord};

/// Store metadata key holding the root key check value the data directory was created with.
const ROOT_CHECK: &str = "root_key_check";
/// Store metadata key holding the audit key, wrapped by the root key.
const AUDIT_KEY: &str = "audit_key";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("root key file {path}: {problem}")]
    RootFile { path: String, problem: String },
    #[error(
        "the root key file does not match this data directory (it was created with another root key)"
    )]
    RootMismatch,
    /// A wrapped key did not open: the store or key source is damaged or tampered with.
    #[error("a stored key failed to unwrap")]
    Unwrap,
    #[error("the {0} is missing from the store")]
    Missing(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CryptoError> for KeyringError {
    fn from(_: CryptoError) -> Self {
        KeyringError::Unwrap
    }
}

fn kek_aad(tenant: &TenantId) -> Aad {
    Aad::new("tenant-kek").with(tenant.as_str().as_bytes())
}

fn dek_aad(tenant: &TenantId, subject: &SubjectId) -> Aad {
    Aad::new("subject-dek")
        .with(tenant.as_str().as_bytes())
        .with(subject.as_str().as_bytes())
}

/// Unwrapped tenant KEKs by (tenant, KEK version).
type KekCache = HashMap<(TenantId, u32), Arc<Key<Kek>>>;
/// Unwrapped blind-index keys of a tenant, newest version first.
type IndexCache = HashMap<TenantId, Vec<Arc<Key<Index>>>>;

/// Store metadata key prefix of a tenant's wrapped index keys: `index_key/<tenant>/<version>`.
fn index_key_prefix(tenant: &TenantId) -> String {
    format!("index_key/{tenant}/")
}

fn index_aad(tenant: &TenantId) -> Aad {
    Aad::new("tenant-index-key").with(tenant.as_str().as_bytes())
}

/// Wraps and unwraps the vault's keys.
pub struct Keyring {
    root: RootKeys,
    store: Arc<dyn Store>,
    /// Unwrapped tenant KEKs by (tenant, version): unwrapping on every request would put a
    /// root-key operation on the hot path.
    keks: RwLock<KekCache>,
    index_keys: RwLock<IndexCache>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("root", &self.root).finish()
    }
}

impl Keyring {
    /// Binds the root keys to the store: the first open records the root key's check value;
    /// later opens refuse a root key that does not match it.
    pub fn open(root: RootKeys, store: Arc<dyn Store>) -> Result<Self, KeyringError> {
        let current = root.current();
        let mut mine = current.version().to_be_bytes().to_vec();
        mine.extend_from_slice(&current.check_value());
        let recorded = store.meta_init(ROOT_CHECK, &mine)?;
        if recorded.len() != 4 + MAC_LEN {
            return Err(KeyringError::Missing("root key check value"));
        }
        let mut version = [0u8; 4];
        version.copy_from_slice(&recorded[..4]);
        let matches = root
            .version(u32::from_be_bytes(version))
            .is_some_and(|k| mac_eq(&k.check_value(), &recorded[4..]));
        if !matches {
            return Err(KeyringError::RootMismatch);
        }
        Ok(Self {
            root,
            store,
            keks: RwLock::new(HashMap::new()),
            index_keys: RwLock::new(HashMap::new()),
        })
    }

    /// The key that MACs the audit chain: created (and stored wrapped by the root key) on
    /// first use, unwrapped on every later start.
    pub fn audit_key(&self) -> Result<Key<Audit>, KeyringError> {
        let aad = Aad::new("audit-key");
        let fresh: Key<Audit> = Key::generate(1)?;
        let candidate = self.root.current().wrap(&fresh, &aad)?.encode();
        let stored = self.store.meta_init(AUDIT_KEY, &candidate)?;
        let wrapped = Sealed::decode(&stored).map_err(|_| KeyringError::Missing("audit key"))?;
        let root = self
            .root
            .version(wrapped.key_version())
            .ok_or(KeyringError::Missing("root key version"))?;
        Ok(root.unwrap_key(&wrapped, 1, &aad)?)
    }

    /// A tenant's blind-index keys, newest (current) first; the first is created on first use.
    pub fn index_keys(&self, tenant: &TenantId) -> Result<Vec<Arc<Key<Index>>>, KeyringError> {
        if let Some(keys) = self
            .index_keys
            .read()
            .ok()
            .and_then(|m| m.get(tenant).cloned())
        {
            return Ok(keys);
        }
        let prefix = index_key_prefix(tenant);
        let mut stored = self.store.meta_scan(&prefix)?;
        if stored.is_empty() {
            self.add_index_key(tenant, 1)?;
            stored = self.store.meta_scan(&prefix)?;
        }
        let mut keys = Vec::new();
        for (name, bytes) in stored {
            let version: u32 = name[prefix.len()..]
                .parse()
                .map_err(|_| KeyringError::Missing("index key version"))?;
            let wrapped = Sealed::decode(&bytes).map_err(|_| KeyringError::Missing("index key"))?;
            let root = self
                .root
                .version(wrapped.key_version())
                .ok_or(KeyringError::Missing("root key version"))?;
            keys.push(Arc::new(root.unwrap_key::<Index>(
                &wrapped,
                version,
                &index_aad(tenant),
            )?));
        }
        keys.sort_by_key(|k| std::cmp::Reverse(k.version()));
        if let Ok(mut cache) = self.index_keys.write() {
            cache.insert(tenant.clone(), keys.clone());
        }
        Ok(keys)
    }

    fn add_index_key(&self, tenant: &TenantId, version: u32) -> Result<(), KeyringError> {
        let key: Key<Index> = Key::generate(version)?;
        let wrapped = self.root.current().wrap(&key, &index_aad(tenant))?;
        // Zero-padded so the store's key order is version order.
        self.store.meta_init(
            &format!("{}{version:010}", index_key_prefix(tenant)),
            &wrapped.encode(),
        )?;
        Ok(())
    }

    /// Adds a new current index key version; older versions stay until `drop_index_keys`.
    pub fn rotate_index_key(&self, tenant: &TenantId) -> Result<u32, KeyringError> {
        let newest = self.index_keys(tenant)?.first().map_or(0, |k| k.version());
        self.add_index_key(tenant, newest + 1)?;
        self.forget_index_keys(tenant);
        Ok(newest + 1)
    }

    /// Destroys every index key version older than `keep`.
    pub fn drop_index_keys(&self, tenant: &TenantId, keep: u32) -> Result<(), KeyringError> {
        for key in self.index_keys(tenant)? {
            if key.version() < keep {
                self.store.meta_remove(&format!(
                    "{}{:010}",
                    index_key_prefix(tenant),
                    key.version()
                ))?;
            }
        }
        self.forget_index_keys(tenant);
        Ok(())
    }

    fn forget_index_keys(&self, tenant: &TenantId) {
        if let Ok(mut cache) = self.index_keys.write() {
            cache.remove(tenant);
        }
    }

    /// A new tenant record and its first KEK, wrapped by the current root key.
    pub fn new_tenant(
        &self,
        id: &TenantId,
        now: Timestamp,
    ) -> Result<(TenantRecord, Sealed), KeyringError> {
        let kek: Key<Kek> = Key::generate(1)?;
        let wrapped = self.root.current().wrap(&kek, &kek_aad(id))?;
        let record = TenantRecord {
            id: id.clone(),
            created_at: now,
            kek_version: kek.version(),
        };
        Ok((record, wrapped))
    }

    fn kek(&self, tenant: &TenantId, version: u32) -> Result<Arc<Key<Kek>>, KeyringError> {
        let cache_key = (tenant.clone(), version);
        if let Some(k) = self
            .keks
            .read()
            .ok()
            .and_then(|m| m.get(&cache_key).cloned())
        {
            return Ok(k);
        }
        let wrapped = self
            .store
            .kek(tenant, version)?
            .ok_or(KeyringError::Missing("tenant key"))?;
        let root = self
            .root
            .version(wrapped.key_version())
            .ok_or(KeyringError::Missing("root key version"))?;
        let kek = Arc::new(root.unwrap_key::<Kek>(&wrapped, version, &kek_aad(tenant))?);
        if let Ok(mut map) = self.keks.write() {
            map.insert(cache_key, kek.clone());
        }
        Ok(kek)
    }

    /// A fresh DEK for a new subject and the record that stores it wrapped.
    pub fn new_subject(
        &self,
        tenant: &TenantRecord,
        subject: &SubjectId,
        now: Timestamp,
    ) -> Result<(Key<Dek>, SubjectRecord), KeyringError> {
        let kek = self.kek(&tenant.id, tenant.kek_version)?;
        let dek: Key<Dek> = Key::generate(1)?;
        let wrapped_dek = kek.wrap(&dek, &dek_aad(&tenant.id, subject))?;
        let record = SubjectRecord {
            created_at: now,
            dek_version: dek.version(),
            wrapped_dek,
            categories: 0,
            index_entries: Vec::new(),
        };
        Ok((dek, record))
    }

    /// Unwraps a subject's DEK.
    pub fn subject_dek(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        record: &SubjectRecord,
    ) -> Result<Key<Dek>, KeyringError> {
        let kek = self.kek(tenant, record.wrapped_dek.key_version())?;
        Ok(kek.unwrap_key(
            &record.wrapped_dek,
            record.dek_version,
            &dek_aad(tenant, subject),
        )?)
    }
}
