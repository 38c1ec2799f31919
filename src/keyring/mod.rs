//! The key hierarchy: root key → tenant KEK → subject DEK.
//!
//! - The root key comes from its file or a PKCS#11 token (`RootKeys`, `root_source.rs`)
//!   and never enters the store. It has versions; rotation adds one, re-wraps every tenant
//!   KEK, index key and the audit key under it, and retires the old versions: they open
//!   what backups hold for the backup window, then are destroyed (`root_keys.rs`).
//! - A tenant KEK is generated at tenant creation and stored wrapped by the root key, bound
//!   to the tenant id and its version. Rotation adds a version that wraps new DEKs; a
//!   background re-wrap moves every DEK to it, and then the old versions are destroyed
//!   (`tenant_keys.rs`). Shredding destroys every version at once.
//! - A subject DEK is generated at the subject's first write and stored wrapped by the
//!   tenant KEK, bound to tenant, subject and DEK version. A DEK that reaches its usage
//!   limit is replaced by a new version; older versions stay (wrapped in the subject
//!   record) only while some field is still sealed under them.
//! - Every key counts its encryptions, reserving them in the store before use (`usage.rs`).
//!
//! Unwrapped KEKs are cached (there are few tenants); unwrapped DEKs are cached in a bounded
//! cache keyed by the exact wrap the store returned (`dek_cache.rs`).

mod dek_cache;
mod index_keys;
mod ledger_key;
mod record_keys;
mod root_file;
mod root_keys;
mod root_pkcs11;
mod root_source;
mod subject_keys;
mod tenant_keys;
mod usage;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use index_keys::{index_aad, parse_index_key_name, INDEX_KEY_PREFIX};

pub use dek_cache::{DekCacheStats, LookupObserver};
pub use ledger_key::{LedgerKey, LEDGER_TAG_LEN};
pub use record_keys::{LegacySeals, RecordSealer};
pub use root_file::{check_key_location, on_memory_fs};
pub use root_keys::RetiredRoot;
pub use root_keys::RootRotation;
pub use root_pkcs11::{
    PinSource, Pkcs11Settings, TokenKey, TokenRoot, TokenSelector, TokenVersionInfo,
};
pub use root_source::{RootKeys, RootSource, RootVersion};
pub use tenant_keys::{RewrapBatch, SubjectDeks};
pub use usage::{KeyLimits, SealGrant};

use crate::crypto::{
    Aad, Audit, CryptoError, Derivation, Index, Kek, Key, KeyRole, RecordMac, Sealed,
};
use crate::domain::{Clock, SubjectId, SystemClock, TenantId, Timestamp};
use crate::storage::{Fence, FenceMode, Store, StoreError, TenantRecord};

/// Store metadata key holding the root key version the data directory is bound to and that
/// version's check value (what a backup needs to be opened).
pub const ROOT_CHECK: &str = "root_key_check";
/// Store metadata key holding the audit key, wrapped by the root key.
const AUDIT_KEY: &str = "audit_key";
/// Store metadata key counting destructions of tenant KEK versions and index keys (8 bytes,
/// big-endian): on a shared store, other nodes drop their cached keys when it moves.
const DESTROYED_SEQ: &str = "keys_destroyed_seq";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("root key file {path}: {problem}")]
    RootFile { path: String, problem: String },
    /// The root key file or its directory is unsafe to write (others could read or replace
    /// the keys): an operator must fix it, nothing was changed.
    #[error("root key file {path}: {problem}")]
    UnsafeRootFile { path: String, problem: String },
    /// The root key file cannot be rewritten where it is (or would not survive a restart):
    /// rotation and key epochs cannot run until an operator moves it.
    #[error("root key file directory {path}: {problem}")]
    RootNotWritable { path: String, problem: String },
    #[error(
        "the root key does not match this data directory (it was created with another root key)"
    )]
    RootMismatch,
    /// The data directory was last bound to a root key version the source no longer holds:
    /// another key source, or (a restored backup) a version destroyed since.
    #[error(
        "this data directory needs root key version {version}, which the root key source no \
         longer holds (it holds {held}): it is another key source's, or the version was \
         destroyed when the backup window passed"
    )]
    RootVersionGone { version: u32, held: String },
    /// A wrapped key did not open: the store or key source is damaged or tampered with.
    #[error("a stored key failed to unwrap")]
    Unwrap,
    #[error("the {0} is missing from the store")]
    Missing(&'static str),
    /// The tenant was shredded: it has no keys any more.
    #[error("the tenant was shredded")]
    Shredded,
    /// The KEK version a record names was destroyed after the record was read (a re-wrap
    /// finished meanwhile): read the record again.
    #[error("the tenant key version was retired; read again")]
    Retired,
    /// A key cannot do what was asked without passing its usage limit.
    #[error("key usage limit: {0}")]
    LimitReached(String),
    /// The root keys were not loaded from a file, so they cannot be rotated.
    #[error("the root key has no file to rewrite, so it cannot be rotated")]
    NoRootFile,
    /// The store holds keys wrapped under a root key version this node's root key file
    /// does not have: another node rotated the root key in a file this node does not share.
    #[error(
        "root key version {0} is not in this node's root key file: every vault node that \
         shares the store must use the same root key file (keys.root_key_file)"
    )]
    RootFileNotShared(u32),
    /// The PKCS#11 token holding the root key refused or failed (it is named, never a
    /// key): at start an operator must fix the configuration or the token; later, the token
    /// may be back on a retry.
    #[error("PKCS#11 root key token: {0}")]
    Token(String),
    /// A concurrent change kept winning; the operation may be retried.
    #[error("the {0} kept changing concurrently")]
    Contended(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CryptoError> for KeyringError {
    fn from(_: CryptoError) -> Self {
        KeyringError::Unwrap
    }
}

/// Key versions as operators read them, `v1,v2` (empty for none): in audit reasons and as
/// plain values in logs.
pub fn version_list(versions: &[u32]) -> String {
    versions
        .iter()
        .map(|v| format!("v{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A store's `ROOT_CHECK` value read apart: the root key version the store is bound to and
/// that version's check value; `None` for a value too short to hold a version.
pub fn parse_root_check(value: &[u8]) -> Option<(u32, &[u8])> {
    value
        .split_first_chunk::<4>()
        .map(|(version, check)| (u32::from_be_bytes(*version), check))
}

/// The context a tenant KEK is wrapped in (the KEK version is bound by the wrap itself).
pub fn kek_aad(tenant: &TenantId) -> Aad {
    Aad::new("tenant-kek").with(tenant.as_str().as_bytes())
}

/// The context a subject DEK is wrapped in (the DEK version is bound by the wrap itself).
pub fn dek_aad(tenant: &TenantId, subject: &SubjectId) -> Aad {
    Aad::new("subject-dek")
        .with(tenant.as_str().as_bytes())
        .with(subject.as_str().as_bytes())
}

/// The context the audit key is wrapped in.
fn audit_aad() -> Aad {
    Aad::new("audit-key")
}

/// How long retired root key versions are kept unless configured otherwise
/// (`backup.retention_days`): the privacy policy's 30-day backup window.
pub const DEFAULT_BACKUP_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// Unwrapped DEKs the cache holds unless configured otherwise (`keys.dek_cache_entries`).
pub const DEFAULT_DEK_CACHE_ENTRIES: usize = 16_384;

/// Unwrapped tenant KEKs by (tenant, KEK version).
type KekCache = HashMap<(TenantId, u32), Arc<Key<Kek>>>;
/// Unwrapped blind-index keys of a tenant, newest version first.
type IndexCache = HashMap<TenantId, Vec<Arc<Key<Index>>>>;

/// Wraps and unwraps the vault's keys, rotates and destroys them, and counts their use.
pub struct Keyring {
    /// The root key versions. Readers wrap and unwrap under a read guard; rotation holds
    /// the write guard while it re-wraps and destroys, so no wrap under a version being
    /// destroyed can slip in.
    root: RwLock<RootKeys>,
    store: Arc<dyn Store>,
    /// Unwrapped KEKs by (tenant, version): unwrapping on every request would put a
    /// root-key operation on the hot path. Destroyed versions are evicted.
    keks: RwLock<KekCache>,
    index_keys: RwLock<IndexCache>,
    /// Record integrity keys by tenant, derived once (`record_keys.rs`).
    record_keys: RwLock<HashMap<TenantId, Arc<Key<RecordMac>>>>,
    /// True on a store created before records were sealed, until `seal_legacy_records` has
    /// sealed them (`record_keys.rs`): unsealed records are still accepted meanwhile.
    legacy_records: AtomicBool,
    /// Unwrapped subject DEKs, so a hot read does no unwrap and no key schedule.
    dek_cache: dek_cache::DekCache,
    /// Usage limits and counters of every key.
    usage: usage::Usage,
    /// Serialises root key rotations (adding a version, converging, destroying).
    root_rotation: Mutex<()>,
    /// The store's `DESTROYED_SEQ` as this node last saw it (shared stores).
    destroyed_seen: Mutex<Option<Vec<u8>>>,
    /// Creation and destruction times of key versions.
    clock: Arc<dyn Clock>,
    /// The derivation of every key this keyring generates: purpose subkeys, except in tests
    /// that write a store the way the code before them did (`with_legacy_keys`).
    new_keys: Derivation,
    /// How long a retired root key version still opens backups before it is destroyed.
    backup_window: Duration,
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
        // A token's check value is a seal by the token: made only for a store without one.
        let recorded = match store.meta(ROOT_CHECK)? {
            Some(recorded) => recorded,
            None => {
                let current = root.current();
                let mut mine = current.version().to_be_bytes().to_vec();
                mine.extend_from_slice(&current.check_value()?);
                store.meta_init(ROOT_CHECK, &mine)?
            }
        };
        let Some((version, check)) = parse_root_check(&recorded) else {
            return Err(KeyringError::Missing("root key check value"));
        };
        let matches = root
            .version(version)
            .is_some_and(|k| k.check_matches(check));
        if !matches {
            return Err(if root.version(version).is_none() {
                KeyringError::RootVersionGone {
                    version,
                    held: version_list(&root.version_numbers()),
                }
            } else {
                KeyringError::RootMismatch
            });
        }
        // Read before any key is cached, so a destruction after this point is noticed.
        let destroyed_seen = store.meta(DESTROYED_SEQ)?;
        // A store without tenants holds no record written before seals existed.
        if store.tenants(None, 1)?.is_empty() {
            store.meta_init(record_keys::RECORD_SEALS, b"required")?;
        }
        let legacy_records = store.meta(record_keys::RECORD_SEALS)?.is_none();
        Ok(Self {
            root: RwLock::new(root),
            store,
            keks: RwLock::new(HashMap::new()),
            index_keys: RwLock::new(HashMap::new()),
            record_keys: RwLock::new(HashMap::new()),
            legacy_records: AtomicBool::new(legacy_records),
            dek_cache: dek_cache::DekCache::new(DEFAULT_DEK_CACHE_ENTRIES, None),
            usage: usage::Usage::new(KeyLimits::default()),
            root_rotation: Mutex::new(()),
            destroyed_seen: Mutex::new(destroyed_seen),
            clock: Arc::new(SystemClock),
            new_keys: Derivation::HkdfV1,
            backup_window: DEFAULT_BACKUP_WINDOW,
        })
    }

    /// Sets how long a retired root key version is kept to open backups (default 30 days;
    /// zero destroys old versions as soon as a rotation has re-wrapped what they wrapped).
    pub fn with_backup_window(mut self, window: Duration) -> Self {
        self.backup_window = window;
        self
    }

    /// How long a retired root key version is kept to open backups.
    pub fn backup_window(&self) -> Duration {
        self.backup_window
    }

    /// Test only: every key this keyring generates (KEKs, DEKs, index and audit keys) is a
    /// legacy key, as the code before purpose subkeys wrote them, so that tests can build
    /// the stores that code left behind and check that they still open.
    #[cfg(any(test, feature = "testing"))]
    pub fn with_legacy_keys(mut self) -> Self {
        self.new_keys = Derivation::Legacy;
        self
    }

    /// A fresh random key of version `version`, with the derivation new keys get.
    fn generate<R: KeyRole>(&self, version: u32) -> Result<Key<R>, KeyringError> {
        Ok(Key::generate(version)?.with_derivation(self.new_keys))
    }

    /// Sets the clock that dates key versions (default: the system clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the usage limits (default: `KeyLimits::default()`).
    pub fn with_limits(mut self, limits: KeyLimits) -> Self {
        self.usage = usage::Usage::new(limits);
        self
    }

    /// The usage limits in force.
    pub fn limits(&self) -> KeyLimits {
        self.usage.limits()
    }

    fn root(&self) -> Result<RwLockReadGuard<'_, RootKeys>, KeyringError> {
        self.root
            .read()
            .map_err(|_| KeyringError::Missing("root key (lock poisoned)"))
    }

    /// The key that MACs the audit chain: created (and stored wrapped by the root key) on
    /// first use, unwrapped on every later start.
    pub fn audit_key(&self) -> Result<Key<Audit>, KeyringError> {
        if self.store.meta(AUDIT_KEY)?.is_none() {
            let fresh: Key<Audit> = self.generate(1)?;
            let (_fence, root) = self.root_for_wrap()?;
            let candidate = self.wrap_under_root(&root, &fresh, &audit_aad())?.encode();
            // Another node may have stored its own first: every node uses the stored one.
            self.store.meta_init(AUDIT_KEY, &candidate)?;
        }
        self.open_under_root(
            || {
                let stored = self
                    .store
                    .meta(AUDIT_KEY)?
                    .ok_or(KeyringError::Missing("audit key"))?;
                Sealed::decode(&stored).map_err(|_| KeyringError::Missing("audit key"))
            },
            |root, wrapped| Ok(root.unwrap_key(wrapped, 1, &audit_aad())?),
        )
    }

    /// Creates a tenant and its first KEK, wrapped by the current root key, in the store.
    /// Returns `None` if the tenant already exists.
    pub fn create_tenant(
        &self, id: &TenantId, now: Timestamp,
    ) -> Result<Option<TenantRecord>, KeyringError> {
        let kek: Key<Kek> = self.generate(1)?;
        let record = TenantRecord {
            id: id.clone(),
            created_at: now,
            kek_version: kek.version(),
            shredded_at: None,
        };
        // The fence and read guard span wrap and store: a root rotation cannot destroy the
        // version this KEK is wrapped under before it is stored where the rotation will
        // find it.
        let (_fence, root) = self.root_for_wrap()?;
        let wrapped = self.wrap_under_root(&root, &kek, &kek_aad(id))?;
        let created = self.store.create_tenant(&record, &wrapped)?;
        Ok(created.then_some(record))
    }

    /// The root key fence and a read guard on root keys whose current version may wrap one
    /// more key; hold both until the wrapped key is in the store. Rotates the root key first
    /// (adding a version) if the current one reached its limit.
    ///
    /// On a store shared by several nodes the fence keeps every other node from destroying
    /// a root key version meanwhile, and the root key file is read again first if another
    /// node changed it, so the wrap is under the version current for every node.
    fn root_for_wrap(&self) -> Result<(Fence<'_>, RwLockReadGuard<'_, RootKeys>), KeyringError> {
        for _ in 0..3 {
            let fence = self.store.root_fence(FenceMode::Shared)?;
            self.sync_root()?;
            let root = self.root()?;
            if self.usage.root_has_room(&root, self.store.as_ref())? {
                return Ok((fence, root));
            }
            drop(root);
            drop(fence);
            tracing::info!("root key reached its usage limit; adding a new version");
            self.add_root_version()?;
        }
        Err(KeyringError::Contended("root key"))
    }

    /// Opens a key wrapped under the root key, as `fetch` reads it from the store. A copy
    /// under a version this node does not hold may have been read just before a root
    /// rotation re-wrapped it and destroyed that version: it is read again once. On a shared
    /// store the version may also be one another node added: the root key file is read
    /// again first.
    fn open_under_root<T>(
        &self, fetch: impl Fn() -> Result<Sealed, KeyringError>,
        open: impl Fn(&RootVersion, &Sealed) -> Result<T, KeyringError>,
    ) -> Result<T, KeyringError> {
        let mut wrapped = fetch()?;
        for again in [true, false] {
            if let Some(key) = self.root()?.version(wrapped.key_version()) {
                return open(key, &wrapped);
            }
            if again {
                if self.store.shared() {
                    self.reload_root()?;
                }
                wrapped = fetch()?;
            }
        }
        Err(if self.store.shared() {
            KeyringError::RootFileNotShared(wrapped.key_version())
        } else {
            KeyringError::Missing("root key version")
        })
    }

    fn wrap_under_root<C: KeyRole>(
        &self, root: &RootKeys, child: &Key<C>, aad: &Aad,
    ) -> Result<Sealed, KeyringError> {
        let current = root.current();
        self.usage
            .count_root_wrap(current.version(), self.store.as_ref())?;
        Ok(current.wrap(child, aad)?)
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
        let fetch = || match self.store.kek(tenant, version)? {
            Some(wrapped) => Ok(wrapped),
            None => Err(match self.store.tenant(tenant)? {
                Some(t) if t.shredded_at.is_some() => KeyringError::Shredded,
                Some(t) if version < t.kek_version => KeyringError::Retired,
                _ => KeyringError::Missing("tenant key"),
            }),
        };
        let kek = Arc::new(self.open_under_root(fetch, |root, wrapped| {
            Ok(root.unwrap_key::<Kek>(wrapped, version, &kek_aad(tenant))?)
        })?);
        if let Ok(mut map) = self.keks.write() {
            map.insert(cache_key, kek.clone());
        }
        Ok(kek)
    }

    /// Rewrites the store metadata `key` to what `edit` makes of its stored value, by
    /// compare-and-swap, again while another writer wins (at most 10 times: then
    /// `Contended(what)`). Returns the value written.
    fn edit_meta(
        &self, key: &str, what: &'static str,
        edit: impl Fn(Option<&[u8]>) -> Result<Vec<u8>, KeyringError>,
    ) -> Result<Vec<u8>, KeyringError> {
        for _ in 0..10 {
            let stored = self.store.meta(key)?;
            let value = edit(stored.as_deref())?;
            if self.store.meta_swap(key, stored.as_deref(), &value)? {
                return Ok(value);
            }
        }
        Err(KeyringError::Contended(what))
    }

    /// Tells the other nodes of a shared store that keys were destroyed here, so that they
    /// drop theirs from memory (`sync_caches`).
    fn announce_destroyed(&self) {
        if !self.store.shared() {
            return;
        }
        let counted = self.edit_meta(DESTROYED_SEQ, "key destruction count", |stored| {
            let next = stored
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes)
                .wrapping_add(1);
            Ok(next.to_be_bytes().to_vec())
        });
        if let Ok(written) = counted {
            if let Ok(mut seen) = self.destroyed_seen.lock() {
                *seen = Some(written);
            }
            return;
        }
        tracing::warn!(
            "cannot record a key destruction for the other nodes; they drop the destroyed \
             keys from memory at their next restart or the next recorded destruction"
        );
    }

    /// On a shared store: if another node destroyed keys since this node last looked, drops
    /// every cached KEK, index key and DEK, so no destroyed key stays in this node's memory.
    /// Returns whether it did.
    pub fn sync_caches(&self) -> Result<bool, KeyringError> {
        if !self.store.shared() {
            return Ok(false);
        }
        let now = self.store.meta(DESTROYED_SEQ)?;
        let mut seen = self
            .destroyed_seen
            .lock()
            .map_err(|_| KeyringError::Missing("key cache state (lock poisoned)"))?;
        if *seen == now {
            return Ok(false);
        }
        if let Ok(mut keks) = self.keks.write() {
            keks.clear();
        }
        if let Ok(mut index) = self.index_keys.write() {
            index.clear();
        }
        self.dek_cache.forget_all();
        *seen = now;
        tracing::info!("another node destroyed keys; cached keys dropped");
        Ok(true)
    }

    /// Forgets cached KEKs of `tenant` for which `destroyed` is true.
    fn evict_keks(&self, tenant: &TenantId, destroyed: impl Fn(u32) -> bool) {
        if let Ok(mut map) = self.keks.write() {
            map.retain(|(t, v), _| t != tenant || !destroyed(*v));
        }
    }
}
