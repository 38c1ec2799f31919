//! The embedded sled backend.
//!
//! Trees:
//! - `meta`: store-wide settings (schema version, root key check value).
//! - `tenants`: tenant id → `TenantRecord`.
//! - `keks`: (tenant, version) → wrapped KEK.
//! - `t/<tenant>/subjects`: subject → `SubjectRecord` (one tree per tenant: isolation).
//! - `t/<tenant>/fields`: (subject, field name) → `FieldRecord`.
//! - `t/<tenant>/expiry`: (expiry time, subject, field) of fields with a retention limit.
//! - `t/<tenant>/index`: blind-index entry keys (version, field, HMAC tag, subject).
//! - `t/<tenant>/state`: subject → consents and restriction.
//! - `t/<tenant>/tombstones`: subject → `Tombstone` of an erased subject.
//! - `epoch_pending`: tenant → erasure counter, for tenants with erasures since their last
//!   key epoch.
//! - `legal_holds`: (end, tenant, shadow subject) of records kept under a legal duty after
//!   their subject's erasure.
//! - `audit`: empty; an earlier version's audit events, moved at open into the audit log's
//!   segment files in `<store>/audit/` (`audit.rs`, `storage::segments`).
//! - `key_state`: tenant → `TenantKeyState` (KEK versions, usage reservations, re-wrap
//!   progress); see `keys.rs`.
//!
//! The rules of what a write changes are in `rules`; this backend reads what they need and
//! applies their plan inside one sled transaction (`fields.rs`, `erasure.rs`). The
//! transactions' closures may run again on a conflict: they only read and write the
//! transaction's trees. Where the trees live and how keys are encoded: `trees.rs`.

mod audit;
mod erasure;
mod fields;
mod keys;
mod meta;
mod state;
mod trees;

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::SegmentLog;

use self::trees::{
    decode_subject_key, decode_tenant_key, expiry_key, field_key, idempotency_expiry_key,
    idempotency_key, kek_key, legal_hold_key, subject_key, TenantTrees,
};
use crate::crypto::Sealed;
use crate::domain::{FieldName, SubjectId, TenantId, Timestamp};

use super::backup::Manifest;
use super::records::{
    Erasure, FieldRecord, StateRecord, SubjectRecord, SubjectWrite, TenantRecord, Tombstone,
    Written,
};
use super::{
    AuditMarks, KeyChange, KeyUpdate, LegacyPage, LegacySeal, StateUpdate, Store, StoreError,
    StoreResult, SubjectUpdate, TenantKeyState, TombstoneSeal,
};

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// sled-backed `Store`.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    tenants: sled::Tree,
    keks: sled::Tree,
    /// The audit log, in segment files of its own (`audit.rs`).
    audit: SegmentLog,
    epoch_pending: sled::Tree,
    legal_holds: sled::Tree,
    key_state: sled::Tree,
    /// Open handles of per-tenant trees; opening a tree takes a lock inside sled.
    tenant_trees: RwLock<HashMap<TenantId, TenantTrees>>,
    /// sled's log file. sled's own flush ends in `sync_file_range`, which neither empties
    /// the drive's write cache nor records the file's new length; `flush` follows it with
    /// an fdatasync of this file, so an acknowledged write survives a power loss.
    log_file: std::fs::File,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// How long an open waits for sled's file lock on the directory.
///
/// sled lets go of the lock only when its own I/O threads drop their last reference, which
/// can be a moment after the last `Db` handle is gone: a restart inside one process (tests,
/// restore) would otherwise fail at random on a loaded machine. A second process holding the
/// directory keeps it for longer and still gets the error, once this has passed.
const LOCK_WAIT: Duration = Duration::from_secs(20);
/// How long a server's open waits for the lock (`SledStore::open_unshared`).
const SERVE_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens `config`, retrying while its directory's lock is still held (see [`LOCK_WAIT`]).
pub fn open_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    open_waiting(config, LOCK_WAIT)
}

fn open_waiting(config: &sled::Config, wait: Duration) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + wait;
    loop {
        match config.open() {
            Err(e) if is_locked(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether sled failed because another process holds the directory's lock.
fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Why `SledStore::open_unshared` failed.
#[derive(Debug, thiserror::Error)]
pub enum SledOpenError {
    /// Another process has the store open.
    #[error("in use by another process")]
    InUse,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
        Self::open_with_flush_interval(dir, cache_bytes, Some(500))
    }

    /// Opens the store as a server does, or `InUse` when another process holds it. Waits
    /// for the lock for `SERVE_LOCK_WAIT` only: enough for a restart inside one process,
    /// short for a person who started a second server by mistake.
    pub fn open_unshared(dir: &Path, cache_bytes: u64) -> Result<Self, SledOpenError> {
        match open_waiting(&Self::config(dir, cache_bytes, Some(500)), SERVE_LOCK_WAIT) {
            Ok(db) => Ok(Self::over(db, dir)?),
            Err(e) if is_locked(&e) => Err(SledOpenError::InUse),
            Err(e) => Err(backend(e).into()),
        }
    }

    /// Opens the store with sled's background flush every `flush_every_ms` (`None`: only
    /// explicit flushes make writes durable; tests use it to take crash images).
    pub fn open_with_flush_interval(
        dir: &Path, cache_bytes: u64, flush_every_ms: Option<u64>,
    ) -> StoreResult<Self> {
        let db = open_waiting_for_lock(&Self::config(dir, cache_bytes, flush_every_ms))
            .map_err(backend)?;
        Self::over(db, dir)
    }

    fn config(dir: &Path, cache_bytes: u64, flush_every_ms: Option<u64>) -> sled::Config {
        sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(flush_every_ms)
    }

    fn over(db: sled::Db, dir: &Path) -> StoreResult<Self> {
        let meta = db.open_tree("meta").map_err(backend)?;
        let audit = audit::open_log(dir, &db.open_tree("audit").map_err(backend)?, &meta)?;
        Ok(Self {
            meta,
            audit,
            tenants: db.open_tree("tenants").map_err(backend)?,
            keks: db.open_tree("keks").map_err(backend)?,
            epoch_pending: db.open_tree("epoch_pending").map_err(backend)?,
            legal_holds: db.open_tree("legal_holds").map_err(backend)?,
            key_state: db.open_tree("key_state").map_err(backend)?,
            log_file: std::fs::File::open(dir.join("db"))
                .map_err(|e| StoreError::Backend(format!("cannot open sled's log file: {e}")))?,
            db,
            tenant_trees: RwLock::new(HashMap::new()),
        })
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> StoreResult<u64> {
        self.db.size_on_disk().map_err(backend)
    }
}

/// Inside a transaction: the record stored under `key`, decoded.
fn get<T>(
    tree: &TransactionalTree, key: &[u8], decode: fn(&[u8]) -> StoreResult<T>,
) -> TxResult<Option<T>> {
    tree.get(key)?
        .map(|v| decode(&v))
        .transpose()
        .map_err(abort)
}

/// `get` outside a transaction: the record stored under `key` in `tree`, decoded.
fn stored<T>(
    tree: &sled::Tree, key: impl AsRef<[u8]>, decode: fn(&[u8]) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    tree.get(key)
        .map_err(backend)?
        .map(|v| decode(&v))
        .transpose()
}

/// Converts a failed sled transaction into a `StoreError`.
fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

impl Store for SledStore {
    fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.meta.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn meta_init(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        self.init_meta(key, value)
    }

    fn meta_scan(&self, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.scan_meta(prefix)
    }

    fn meta_remove(&self, key: &str) -> StoreResult<()> {
        self.meta.remove(key).map(|_| ()).map_err(backend)
    }

    fn meta_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> StoreResult<bool> {
        Ok(self
            .meta
            .compare_and_swap(key, expected, Some(value))
            .map_err(backend)?
            .is_ok())
    }

    fn create_tenant(&self, tenant: &TenantRecord, wrapped_kek: &Sealed) -> StoreResult<bool> {
        self.add_tenant(tenant, wrapped_kek)
    }

    fn tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>> {
        stored(&self.tenants, id.as_str(), TenantRecord::decode)
    }

    fn tenants(&self, after: Option<&TenantId>, limit: usize) -> StoreResult<Vec<TenantRecord>> {
        self.tenant_page(after, limit)
    }

    fn kek(&self, tenant: &TenantId, version: u32) -> StoreResult<Option<Sealed>> {
        self.keks
            .get(kek_key(tenant, version))
            .map_err(backend)?
            .map(|v| Sealed::decode(&v).map_err(|_| StoreError::Corrupt("wrapped KEK")))
            .transpose()
    }

    fn keks(&self, tenant: &TenantId) -> StoreResult<Vec<(u32, Sealed)>> {
        self.tenant_keks(tenant)
    }

    fn replace_kek(&self, t: &TenantId, v: u32, old: &Sealed, new: &Sealed) -> StoreResult<bool> {
        let swapped = self
            .keks
            .compare_and_swap(kek_key(t, v), Some(old.encode()), Some(new.encode()))
            .map_err(backend)?;
        Ok(swapped.is_ok())
    }

    fn tenant_keys(&self, tenant: &TenantId) -> StoreResult<Option<TenantKeyState>> {
        stored(&self.key_state, tenant.as_str(), TenantKeyState::decode)
    }

    fn all_tenant_keys(&self) -> StoreResult<Vec<(TenantId, TenantKeyState)>> {
        self.every_tenant_keys()
    }

    fn update_tenant_keys(
        &self, t: &TenantId, f: &KeyUpdate<'_>,
    ) -> StoreResult<Option<KeyChange>> {
        self.apply_key_update(t, f)
    }

    fn subject(&self, t: &TenantId, s: &SubjectId) -> StoreResult<Option<SubjectRecord>> {
        stored(
            &self.existing_trees(t)?.subjects,
            subject_key(s),
            SubjectRecord::decode,
        )
    }

    fn subjects(
        &self, t: &TenantId, after: Option<&SubjectId>, n: usize,
    ) -> StoreResult<Vec<SubjectId>> {
        self.subject_ids(t, after, n)
    }

    fn subject_records(
        &self, tenant: &TenantId, after: Option<&SubjectId>, limit: usize,
    ) -> StoreResult<Vec<(SubjectId, SubjectRecord)>> {
        self.subject_page(tenant, after, limit)
    }

    fn update_subjects(
        &self, tenant: &TenantId, subjects: &[SubjectId], update: &SubjectUpdate<'_>,
    ) -> StoreResult<Vec<bool>> {
        self.apply_subject_update(tenant, subjects, update)
    }

    fn put_fields(
        &self, t: &TenantId, s: &SubjectId, w: &SubjectWrite,
    ) -> StoreResult<Vec<Written>> {
        fields::put(&self.tenants, &self.existing_trees(t)?, t, s, w)
    }

    fn fields(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Vec<FieldRecord>> {
        self.existing_trees(tenant)?
            .fields
            .scan_prefix(subject_key(subject))
            .map(|kv| FieldRecord::decode(&kv.map_err(backend)?.1))
            .collect()
    }

    fn fields_page(
        &self, tenant: &TenantId, subject: &SubjectId, after: Option<&FieldName>, limit: usize,
    ) -> StoreResult<Vec<FieldRecord>> {
        self.field_page(tenant, subject, after, limit)
    }

    fn field(
        &self, t: &TenantId, s: &SubjectId, n: &FieldName,
    ) -> StoreResult<Option<FieldRecord>> {
        stored(
            &self.existing_trees(t)?.fields,
            field_key(s, n),
            FieldRecord::decode,
        )
    }

    fn delete_fields(&self, t: &TenantId, s: &SubjectId, names: &[FieldName]) -> StoreResult<u32> {
        self.field_tx(t, |tx| fields::delete(tx, s, names))
    }

    fn subject_state(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<StateRecord> {
        state::read(&self.existing_trees(tenant)?, subject)
    }

    fn update_subject_state(
        &self, t: &TenantId, s: &SubjectId, update: &StateUpdate<'_>,
    ) -> StoreResult<StateRecord> {
        state::update(&self.existing_trees(t)?, s, update)
    }

    fn expired(
        &self, tenant: &TenantId, now: Timestamp, limit: usize,
    ) -> StoreResult<Vec<(SubjectId, FieldName, Timestamp)>> {
        self.expiry_page(tenant, now, limit)
    }

    fn prune_idempotency(
        &self, tenant: &TenantId, now: Timestamp, limit: usize,
    ) -> StoreResult<usize> {
        fields::prune_idempotency(&self.existing_trees(tenant)?, now, limit)
    }

    fn delete_expired(
        &self, tenant: &TenantId, subject: &SubjectId, name: &FieldName, expires_at: Timestamp,
    ) -> StoreResult<bool> {
        self.field_tx(tenant, |tx| fields::expire(tx, subject, name, expires_at))
    }

    fn clear_index(&self, tenant: &TenantId) -> StoreResult<u64> {
        let index = self.existing_trees(tenant)?.index;
        let n = index.len() as u64;
        index.clear().map_err(backend)?;
        Ok(n)
    }

    fn index_scan(&self, tenant: &TenantId, prefix: &[u8]) -> StoreResult<Vec<Vec<u8>>> {
        self.existing_trees(tenant)?
            .index
            .scan_prefix(prefix)
            .keys()
            .map(|k| k.map(|k| k.to_vec()).map_err(backend))
            .collect()
    }

    fn reindex_field(
        &self, t: &TenantId, s: &SubjectId, n: &FieldName, e: &[u8],
    ) -> StoreResult<()> {
        self.field_tx(t, |tx| fields::reindex(tx, s, n, e))
    }

    fn erase_subject(
        &self, t: &TenantId, s: &SubjectId, stone: &Tombstone, seal: &TombstoneSeal<'_>,
    ) -> StoreResult<Erasure> {
        self.erase(t, s, stone, seal)
    }

    fn tombstone(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Option<Tombstone>> {
        stored(
            &self.existing_trees(tenant)?.tombstones,
            subject_key(subject),
            Tombstone::decode,
        )
    }

    fn seal_legacy_tombstones(
        &self, t: &TenantId, after: Option<&SubjectId>, limit: usize, seal: &LegacySeal<'_>,
    ) -> StoreResult<LegacyPage> {
        self.seal_legacy(t, after, limit, seal)
    }

    fn purge_fields(&self, t: &TenantId, s: &SubjectId, limit: usize) -> StoreResult<usize> {
        self.purge(t, s, limit)
    }

    fn unpurged(&self) -> StoreResult<Vec<(TenantId, SubjectId)>> {
        self.not_purged()
    }

    fn legal_holds_due(
        &self, now: Timestamp,
    ) -> StoreResult<Vec<(TenantId, SubjectId, Timestamp)>> {
        self.holds_due(now)
    }

    fn clear_legal_hold(
        &self, t: &TenantId, shadow: &SubjectId, until: Timestamp,
    ) -> StoreResult<()> {
        let key = legal_hold_key(until, t, shadow);
        self.legal_holds.remove(key).map(|_| ()).map_err(backend)
    }

    fn epoch_pending(&self) -> StoreResult<Vec<(TenantId, u64)>> {
        self.epoch_marks()
    }

    fn clear_epoch_pending(&self, tenant: &TenantId, seen: u64) -> StoreResult<()> {
        self.clear_epoch_mark(tenant, seen)
    }

    fn audit_append(&self, events: &[(u64, Vec<u8>)], head: &[u8]) -> StoreResult<()> {
        self.audit.append(events, head)
    }

    fn audit_scan(&self, after: u64, limit: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        self.audit.scan(after, limit)
    }

    fn audit_last(&self) -> StoreResult<Option<(u64, Vec<u8>)>> {
        Ok(self.audit.last())
    }

    fn audit_marks(&self) -> StoreResult<AuditMarks> {
        Ok(self.audit.marks())
    }

    fn audit_prune(&self, through: u64, checkpoint: &[u8]) -> StoreResult<u64> {
        self.audit.prune(through, checkpoint)
    }

    fn audit_tail_cuts(&self) -> Vec<super::TailCut> {
        self.audit.tail_cuts()
    }

    fn audit_tail_cuts_recorded(&self) -> StoreResult<()> {
        self.audit.tail_cuts_recorded()
    }

    fn flush(&self) -> StoreResult<()> {
        self.db.flush().map_err(backend)?;
        self.log_file
            .sync_data()
            .map_err(|e| StoreError::Backend(format!("fdatasync of sled's log failed: {e}")))
    }

    fn disk_bytes(&self) -> StoreResult<Option<u64>> {
        self.size_on_disk().map(Some)
    }

    fn backup(
        &self, stamp: super::backup::Stamp, emit: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> StoreResult<Manifest> {
        self.flush()?;
        super::backup::write(&self.db, &self.audit, stamp, emit)
    }
}
