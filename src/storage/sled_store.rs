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
//! - `audit`: sequence number (u64 BE) → encoded audit event.
//! - `key_state`: tenant → `TenantKeyState` (KEK versions, usage reservations, re-wrap
//!   progress); see `keys.rs`.

mod keys;

use std::collections::HashMap;
use std::ops::Bound::{Excluded, Unbounded};
use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::crypto::Sealed;
use crate::domain::{FieldName, SubjectId, SubjectState, TenantId, Timestamp};

use super::records::{
    decode_state, encode_state, Erasure, FieldRecord, SubjectRecord, SubjectWrite, TenantRecord,
    Tombstone, Written,
};
use super::{
    AuditMarks, KeyChange, KeyUpdate, Store, StoreError, StoreResult, SubjectUpdate, TenantKeyState,
};
use crate::codec::Writer;

const AUDIT_HEAD: &str = "audit_head";
const AUDIT_CHECKPOINT: &str = "audit_checkpoint";
/// Events deleted per batch when pruning, so a large prune never builds one huge batch.
const PRUNE_BATCH: usize = 4096;

/// The two trees that hold one tenant's data.
#[derive(Clone)]
struct TenantTrees {
    subjects: sled::Tree,
    fields: sled::Tree,
    tombstones: sled::Tree,
    state: sled::Tree,
    index: sled::Tree,
    expiry: sled::Tree,
}

/// sled-backed `Store`.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    tenants: sled::Tree,
    keks: sled::Tree,
    audit: sled::Tree,
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

fn subject_key(subject: &SubjectId) -> Vec<u8> {
    Writer::new().str(subject.as_str()).finish()
}

fn field_key(subject: &SubjectId, name: &FieldName) -> Vec<u8> {
    Writer::new()
        .str(subject.as_str())
        .str(name.as_str())
        .finish()
}

/// Expiry entries sort by time first, so the sweeper reads only what is due.
fn expiry_key(at: Timestamp, subject: &SubjectId, name: &FieldName) -> Vec<u8> {
    Writer::new()
        .u64(at.0)
        .str(subject.as_str())
        .str(name.as_str())
        .finish()
}

/// Legal holds sort by their end, so the sweeper reads only what is due.
fn legal_hold_key(until: Timestamp, tenant: &TenantId, shadow: &SubjectId) -> Vec<u8> {
    Writer::new()
        .u64(until.0)
        .str(tenant.as_str())
        .str(shadow.as_str())
        .finish()
}

fn kek_key(tenant: &TenantId, version: u32) -> Vec<u8> {
    Writer::new().str(tenant.as_str()).u32(version).finish()
}

fn decode_subject_key(key: &[u8]) -> StoreResult<SubjectId> {
    let mut r = crate::codec::Reader::new(key, "subject key");
    let id = SubjectId::parse(r.str()?).map_err(|_| StoreError::Corrupt("subject key"))?;
    r.finish()?;
    Ok(id)
}

/// How long an open waits for sled's file lock on the directory.
///
/// sled lets go of the lock only when its own I/O threads drop their last reference, which
/// can be a moment after the last `Db` handle is gone: a restart inside one process (tests,
/// restore) would otherwise fail at random on a loaded machine. A second process holding the
/// directory keeps it for longer and still gets the error, once this has passed.
const LOCK_WAIT: Duration = Duration::from_secs(20);

/// Opens `config`, retrying while its directory's lock is still held (see [`LOCK_WAIT`]).
pub fn open_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
        Self::open_with_flush_interval(dir, cache_bytes, Some(500))
    }

    /// Opens the store with sled's background flush every `flush_every_ms` (`None`: only
    /// explicit flushes make writes durable; tests use it to take crash images).
    pub fn open_with_flush_interval(
        dir: &Path,
        cache_bytes: u64,
        flush_every_ms: Option<u64>,
    ) -> StoreResult<Self> {
        let db = open_waiting_for_lock(
            &sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .mode(sled::Mode::HighThroughput)
                .flush_every_ms(flush_every_ms),
        )
        .map_err(backend)?;
        Ok(Self {
            meta: db.open_tree("meta").map_err(backend)?,
            tenants: db.open_tree("tenants").map_err(backend)?,
            keks: db.open_tree("keks").map_err(backend)?,
            audit: db.open_tree("audit").map_err(backend)?,
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

    fn trees(&self, tenant: &TenantId) -> StoreResult<TenantTrees> {
        if let Some(t) = self
            .tenant_trees
            .read()
            .ok()
            .and_then(|m| m.get(tenant).cloned())
        {
            return Ok(t);
        }
        let base = format!("t/{tenant}/");
        let trees = TenantTrees {
            subjects: self
                .db
                .open_tree(format!("{base}subjects"))
                .map_err(backend)?,
            fields: self
                .db
                .open_tree(format!("{base}fields"))
                .map_err(backend)?,
            tombstones: self
                .db
                .open_tree(format!("{base}tombstones"))
                .map_err(backend)?,
            state: self.db.open_tree(format!("{base}state")).map_err(backend)?,
            index: self.db.open_tree(format!("{base}index")).map_err(backend)?,
            expiry: self
                .db
                .open_tree(format!("{base}expiry"))
                .map_err(backend)?,
        };
        if let Ok(mut map) = self.tenant_trees.write() {
            map.insert(tenant.clone(), trees.clone());
        }
        Ok(trees)
    }

    /// Trees of a tenant that must exist.
    fn existing_trees(&self, tenant: &TenantId) -> StoreResult<TenantTrees> {
        if self
            .tenants
            .contains_key(tenant.as_str())
            .map_err(backend)?
        {
            self.trees(tenant)
        } else {
            Err(StoreError::NoTenant)
        }
    }
}

/// Removes a blind-index entry and its mention in the subject record; true if it was there.
fn unindex(
    index: &sled::transaction::TransactionalTree,
    record: &mut SubjectRecord,
    entry: &[u8],
) -> Result<bool, ConflictableTransactionError<StoreError>> {
    if entry.is_empty() {
        return Ok(false);
    }
    index.remove(entry)?;
    let before = record.index_entries.len();
    record.index_entries.retain(|e| e != entry);
    Ok(record.index_entries.len() != before)
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
        match self
            .meta
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))
            .map_err(backend)?
        {
            Ok(()) => Ok(value.to_vec()),
            Err(cas) => Ok(cas.current.map(|v| v.to_vec()).unwrap_or_default()),
        }
    }

    fn meta_scan(&self, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.meta
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                let key =
                    String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt("meta key"))?;
                Ok((key, v.to_vec()))
            })
            .collect()
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
        let id = tenant.id.as_str().as_bytes();
        let kek_key = kek_key(&tenant.id, tenant.kek_version);
        let created = (&self.tenants, &self.keks)
            .transaction(|(tenants, keks)| {
                if tenants.get(id)?.is_some() {
                    return Ok(false);
                }
                tenants.insert(id, tenant.encode())?;
                keks.insert(kek_key.as_slice(), wrapped_kek.encode())?;
                Ok(true)
            })
            .map_err(tx_error)?;
        if created {
            self.trees(&tenant.id)?;
        }
        Ok(created)
    }

    fn tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>> {
        self.tenants
            .get(id.as_str())
            .map_err(backend)?
            .map(|v| TenantRecord::decode(&v))
            .transpose()
    }

    fn tenants(&self, after: Option<&TenantId>, limit: usize) -> StoreResult<Vec<TenantRecord>> {
        let iter = match after {
            Some(a) => self.tenants.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_str().as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.tenants.iter(),
        };
        iter.take(limit)
            .map(|kv| TenantRecord::decode(&kv.map_err(backend)?.1))
            .collect()
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

    fn replace_kek(
        &self,
        tenant: &TenantId,
        version: u32,
        expected: &Sealed,
        new: &Sealed,
    ) -> StoreResult<bool> {
        Ok(self
            .keks
            .compare_and_swap(
                kek_key(tenant, version),
                Some(expected.encode()),
                Some(new.encode()),
            )
            .map_err(backend)?
            .is_ok())
    }

    fn tenant_keys(&self, tenant: &TenantId) -> StoreResult<Option<TenantKeyState>> {
        self.key_state
            .get(tenant.as_str())
            .map_err(backend)?
            .map(|v| TenantKeyState::decode(&v))
            .transpose()
    }

    fn all_tenant_keys(&self) -> StoreResult<Vec<(TenantId, TenantKeyState)>> {
        self.every_tenant_keys()
    }

    fn update_tenant_keys(
        &self,
        tenant: &TenantId,
        update: &KeyUpdate<'_>,
    ) -> StoreResult<Option<KeyChange>> {
        self.apply_key_update(tenant, update)
    }

    fn subject(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
    ) -> StoreResult<Option<SubjectRecord>> {
        self.existing_trees(tenant)?
            .subjects
            .get(subject_key(subject))
            .map_err(backend)?
            .map(|v| SubjectRecord::decode(&v))
            .transpose()
    }

    fn subjects(
        &self,
        tenant: &TenantId,
        after: Option<&SubjectId>,
        limit: usize,
    ) -> StoreResult<Vec<SubjectId>> {
        let trees = self.existing_trees(tenant)?;
        // Keys are length-prefixed, so key order is (length, id) order; pages follow it.
        let iter = match after {
            Some(a) => trees.subjects.range((
                std::ops::Bound::Excluded(subject_key(a)),
                std::ops::Bound::Unbounded,
            )),
            None => trees.subjects.iter(),
        };
        iter.take(limit)
            .map(|kv| decode_subject_key(&kv.map_err(backend)?.0))
            .collect()
    }

    fn subject_records(
        &self,
        tenant: &TenantId,
        after: Option<&SubjectId>,
        limit: usize,
    ) -> StoreResult<Vec<(SubjectId, SubjectRecord)>> {
        self.subject_page(tenant, after, limit)
    }

    fn update_subjects(
        &self,
        tenant: &TenantId,
        subjects: &[SubjectId],
        update: &SubjectUpdate<'_>,
    ) -> StoreResult<Vec<bool>> {
        self.apply_subject_update(tenant, subjects, update)
    }

    fn put_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        write: &SubjectWrite,
    ) -> StoreResult<Vec<Written>> {
        let trees = self.existing_trees(tenant)?;
        let tkey = tenant.as_str().as_bytes();
        let skey = subject_key(subject);
        let mask = write.categories();
        (
            &self.tenants,
            &trees.subjects,
            &trees.fields,
            &trees.tombstones,
            &trees.index,
            &trees.expiry,
        )
            .transaction(|(tenants, subjects, fields, tombstones, index, expiry)| {
                // Pure: this closure may run again on conflict, so it only reads and writes
                // the transaction's trees.
                if tombstones.get(&skey)?.is_some() {
                    return Err(abort(StoreError::Erased));
                }
                let stored = subjects
                    .get(&skey)?
                    .map(|v| SubjectRecord::decode(&v))
                    .transpose()
                    .map_err(abort)?;
                let mut dirty = stored.is_none();
                let mut record = match stored {
                    None => {
                        // A new DEK must be wrapped under the current KEK version: a version
                        // being retired never gains new wraps (see `TenantRecord`).
                        let current = keys::current_kek(tenants, tkey)?;
                        if current != Some(write.subject.wrapped_dek.key_version()) {
                            return Err(abort(StoreError::Conflict));
                        }
                        write.subject.clone()
                    }
                    Some(rec) if rec.same_key(&write.subject) => rec,
                    Some(_) => return Err(abort(StoreError::Conflict)),
                };
                if record.categories | mask != record.categories {
                    record.categories |= mask;
                    dirty = true;
                }
                let mut written = Vec::with_capacity(write.fields.len());
                for f in &write.fields {
                    let key = field_key(subject, &f.name);
                    let previous = fields
                        .get(&key)?
                        .map(|v| FieldRecord::decode(&v))
                        .transpose()
                        .map_err(abort)?;
                    if let Some(old) = previous.as_ref().filter(|p| p.index_entry != f.index_entry)
                    {
                        dirty |= unindex(index, &mut record, &old.index_entry)?;
                    }
                    if !f.index_entry.is_empty() && !record.index_entries.contains(&f.index_entry) {
                        index.insert(f.index_entry.as_slice(), &[] as &[u8])?;
                        record.index_entries.push(f.index_entry.clone());
                        dirty = true;
                    }
                    let meta = f.next_meta(previous.as_ref(), write);
                    if let Some(old) = previous.as_ref().filter(|p| p.expires_at.0 != 0) {
                        expiry.remove(expiry_key(old.expires_at, subject, &f.name))?;
                    }
                    if f.expires_at.0 != 0 {
                        expiry.insert(expiry_key(f.expires_at, subject, &f.name), &[] as &[u8])?;
                    }
                    let stored_field = f.record(meta.clone());
                    fields.insert(key, stored_field.encode())?;
                    written.push(Written {
                        meta,
                        previous: previous.map(|p| p.meta),
                    });
                }
                if dirty {
                    subjects.insert(skey.as_slice(), record.encode())?;
                }
                Ok(written)
            })
            .map_err(tx_error)
    }

    fn fields(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Vec<FieldRecord>> {
        self.existing_trees(tenant)?
            .fields
            .scan_prefix(subject_key(subject))
            .map(|kv| FieldRecord::decode(&kv.map_err(backend)?.1))
            .collect()
    }

    fn fields_page(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        after: Option<&FieldName>,
        limit: usize,
    ) -> StoreResult<Vec<FieldRecord>> {
        let fields = self.existing_trees(tenant)?.fields;
        let prefix = subject_key(subject);
        // A subject's keys are contiguous and share its length-prefixed id, so the page is a
        // range from just past `after` that stops at the first key of another subject.
        let rows = match after {
            None => fields.scan_prefix(&prefix),
            Some(name) => fields.range((Excluded(field_key(subject, name)), Unbounded)),
        };
        let mut page = Vec::with_capacity(limit.min(1024));
        for kv in rows {
            let (key, value) = kv.map_err(backend)?;
            if page.len() == limit || !key.starts_with(&prefix) {
                break;
            }
            page.push(FieldRecord::decode(&value)?);
        }
        Ok(page)
    }

    fn field(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        name: &FieldName,
    ) -> StoreResult<Option<FieldRecord>> {
        self.existing_trees(tenant)?
            .fields
            .get(field_key(subject, name))
            .map_err(backend)?
            .map(|v| FieldRecord::decode(&v))
            .transpose()
    }

    fn delete_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        names: &[FieldName],
    ) -> StoreResult<u32> {
        let trees = self.existing_trees(tenant)?;
        let keys: Vec<Vec<u8>> = names.iter().map(|n| field_key(subject, n)).collect();
        let skey = subject_key(subject);
        (&trees.subjects, &trees.fields, &trees.index)
            .transaction(|(subjects, fields, index)| {
                let mut record = subjects
                    .get(&skey)?
                    .map(|v| SubjectRecord::decode(&v))
                    .transpose()
                    .map_err(abort)?;
                let mut deleted = 0u32;
                let mut dirty = false;
                for key in &keys {
                    let Some(old) = fields.remove(key.as_slice())? else {
                        continue;
                    };
                    deleted += 1;
                    let old = FieldRecord::decode(&old).map_err(abort)?;
                    if let Some(rec) = record.as_mut() {
                        dirty |= unindex(index, rec, &old.index_entry)?;
                    }
                }
                if let (true, Some(rec)) = (dirty, record) {
                    subjects.insert(skey.as_slice(), rec.encode())?;
                }
                Ok(deleted)
            })
            .map_err(|e: TransactionError<StoreError>| tx_error(e))
    }

    fn expired(
        &self,
        tenant: &TenantId,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(SubjectId, FieldName, Timestamp)>> {
        let end = now.0.saturating_add(1).to_be_bytes();
        self.existing_trees(tenant)?
            .expiry
            .range(..&end[..])
            .keys()
            .take(limit)
            .map(|k| {
                let k = k.map_err(backend)?;
                let mut r = crate::codec::Reader::new(&k, "expiry entry");
                let at = Timestamp(r.u64()?);
                let subject =
                    SubjectId::parse(r.str()?).map_err(|_| StoreError::Corrupt("expiry entry"))?;
                let name =
                    FieldName::parse(r.str()?).map_err(|_| StoreError::Corrupt("expiry entry"))?;
                r.finish()?;
                Ok((subject, name, at))
            })
            .collect()
    }

    fn delete_expired(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        name: &FieldName,
        expires_at: Timestamp,
    ) -> StoreResult<bool> {
        let trees = self.existing_trees(tenant)?;
        let fkey = field_key(subject, name);
        let skey = subject_key(subject);
        let ekey = expiry_key(expires_at, subject, name);
        (&trees.subjects, &trees.fields, &trees.index, &trees.expiry)
            .transaction(|(subjects, fields, index, expiry)| {
                expiry.remove(ekey.as_slice())?;
                let Some(field) = fields.get(&fkey)? else {
                    return Ok(false);
                };
                let field = FieldRecord::decode(&field).map_err(abort)?;
                if field.expires_at != expires_at {
                    // Rewritten since: it has a new expiry entry of its own.
                    return Ok(false);
                }
                fields.remove(fkey.as_slice())?;
                if let Some(rec) = subjects.get(&skey)? {
                    let mut rec = SubjectRecord::decode(&rec).map_err(abort)?;
                    if unindex(index, &mut rec, &field.index_entry)? {
                        subjects.insert(skey.as_slice(), rec.encode())?;
                    }
                }
                Ok(true)
            })
            .map_err(|e: TransactionError<StoreError>| tx_error(e))
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
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        name: &FieldName,
        entry: &[u8],
    ) -> StoreResult<()> {
        let trees = self.existing_trees(tenant)?;
        let skey = subject_key(subject);
        let fkey = field_key(subject, name);
        (&trees.subjects, &trees.fields, &trees.index)
            .transaction(|(subjects, fields, index)| {
                let (Some(rec), Some(field)) = (subjects.get(&skey)?, fields.get(&fkey)?) else {
                    // Erased or deleted meanwhile: nothing to re-index.
                    return Ok(());
                };
                let mut rec = SubjectRecord::decode(&rec).map_err(abort)?;
                let mut field = FieldRecord::decode(&field).map_err(abort)?;
                unindex(index, &mut rec, &field.index_entry)?;
                index.insert(entry, &[] as &[u8])?;
                rec.index_entries.push(entry.to_vec());
                field.index_entry = entry.to_vec();
                fields.insert(fkey.as_slice(), field.encode())?;
                subjects.insert(skey.as_slice(), rec.encode())?;
                Ok(())
            })
            .map_err(|e: TransactionError<StoreError>| tx_error(e))
    }

    fn subject_state(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<SubjectState> {
        self.existing_trees(tenant)?
            .state
            .get(subject_key(subject))
            .map_err(backend)?
            .map_or(Ok(SubjectState::default()), |v| decode_state(&v))
    }

    fn set_subject_state(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        state: &SubjectState,
    ) -> StoreResult<()> {
        self.existing_trees(tenant)?
            .state
            .insert(subject_key(subject), encode_state(state))
            .map(|_| ())
            .map_err(backend)
    }

    fn erase_subject(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        tombstone: &Tombstone,
    ) -> StoreResult<Erasure> {
        let trees = self.existing_trees(tenant)?;
        let skey = subject_key(subject);
        let shadow = subject.legal_shadow();
        let shadow_key = subject_key(&shadow);
        let hold_key = legal_hold_key(tombstone.retained_until, tenant, &shadow);
        let tkey = tenant.as_str().as_bytes();
        (
            &trees.subjects,
            &trees.tombstones,
            &self.epoch_pending,
            &trees.state,
            &trees.index,
            &self.legal_holds,
        )
            .transaction(|(subjects, tombstones, pending, state, index, holds)| {
                if let Some(earlier) = tombstones.get(&skey)? {
                    return Ok(Erasure::AlreadyErased(
                        Tombstone::decode(&earlier).map_err(abort)?,
                    ));
                }
                let Some(record) = subjects.remove(skey.as_slice())? else {
                    return Ok(Erasure::NotFound);
                };
                let record = SubjectRecord::decode(&record).map_err(abort)?;
                let mut written = Tombstone {
                    categories: record.categories,
                    ..tombstone.clone()
                };
                match subjects.get(&shadow_key)? {
                    Some(shadow) => {
                        let shadow = SubjectRecord::decode(&shadow).map_err(abort)?;
                        written.retained_categories = shadow.categories;
                        holds.insert(hold_key.as_slice(), &[] as &[u8])?;
                    }
                    None => written.retained_until = Timestamp(0),
                }
                tombstones.insert(skey.as_slice(), written.encode())?;
                state.remove(skey.as_slice())?;
                for entry in &record.index_entries {
                    index.remove(entry.as_slice())?;
                }
                let count = pending
                    .get(tkey)?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map_or(0, u64::from_be_bytes);
                pending.insert(tkey, &(count + 1).to_be_bytes())?;
                Ok(Erasure::Erased(written))
            })
            .map_err(tx_error)
    }

    fn tombstone(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Option<Tombstone>> {
        self.existing_trees(tenant)?
            .tombstones
            .get(subject_key(subject))
            .map_err(backend)?
            .map(|v| Tombstone::decode(&v))
            .transpose()
    }

    fn purge_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        limit: usize,
    ) -> StoreResult<usize> {
        let trees = self.existing_trees(tenant)?;
        let prefix = subject_key(subject);
        let keys: Vec<sled::IVec> = trees
            .fields
            .scan_prefix(&prefix)
            .keys()
            .take(limit)
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        if keys.is_empty() {
            if let Some(t) = trees.tombstones.get(&prefix).map_err(backend)? {
                let mut t = Tombstone::decode(&t)?;
                if !t.purged {
                    t.purged = true;
                    trees
                        .tombstones
                        .insert(&prefix, t.encode())
                        .map_err(backend)?;
                }
            }
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        for k in &keys {
            batch.remove(k);
        }
        trees.fields.apply_batch(batch).map_err(backend)?;
        Ok(keys.len())
    }

    fn unpurged(&self) -> StoreResult<Vec<(TenantId, SubjectId)>> {
        let mut out = Vec::new();
        for tenant in self.tenants(None, usize::MAX)? {
            for kv in self.trees(&tenant.id)?.tombstones.iter() {
                let (k, v) = kv.map_err(backend)?;
                if !Tombstone::decode(&v)?.purged {
                    out.push((tenant.id.clone(), decode_subject_key(&k)?));
                }
            }
        }
        Ok(out)
    }

    fn legal_holds_due(
        &self,
        now: Timestamp,
    ) -> StoreResult<Vec<(TenantId, SubjectId, Timestamp)>> {
        let end = now.0.saturating_add(1).to_be_bytes();
        self.legal_holds
            .range(..&end[..])
            .keys()
            .map(|k| {
                let k = k.map_err(backend)?;
                let mut r = crate::codec::Reader::new(&k, "legal hold");
                let until = Timestamp(r.u64()?);
                let tenant =
                    TenantId::parse(r.str()?).map_err(|_| StoreError::Corrupt("legal hold"))?;
                let shadow =
                    SubjectId::parse(r.str()?).map_err(|_| StoreError::Corrupt("legal hold"))?;
                r.finish()?;
                Ok((tenant, shadow, until))
            })
            .collect()
    }

    fn clear_legal_hold(
        &self,
        tenant: &TenantId,
        shadow: &SubjectId,
        until: Timestamp,
    ) -> StoreResult<()> {
        self.legal_holds
            .remove(legal_hold_key(until, tenant, shadow))
            .map(|_| ())
            .map_err(backend)
    }

    fn epoch_pending(&self) -> StoreResult<Vec<(TenantId, u64)>> {
        self.epoch_pending
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                let id = std::str::from_utf8(&k)
                    .ok()
                    .and_then(|s| TenantId::parse(s).ok())
                    .ok_or(StoreError::Corrupt("epoch mark"))?;
                let count = <[u8; 8]>::try_from(v.as_ref())
                    .map_err(|_| StoreError::Corrupt("epoch mark"))?;
                Ok((id, u64::from_be_bytes(count)))
            })
            .collect()
    }

    fn clear_epoch_pending(&self, tenant: &TenantId, seen: u64) -> StoreResult<()> {
        // Only if no erasure happened since `seen` was read: a later one needs the next epoch.
        let _ = self
            .epoch_pending
            .compare_and_swap(
                tenant.as_str(),
                Some(&seen.to_be_bytes()[..]),
                None as Option<&[u8]>,
            )
            .map_err(backend)?;
        Ok(())
    }

    fn audit_append(&self, events: &[(u64, Vec<u8>)], head: &[u8]) -> StoreResult<()> {
        (&self.audit, &self.meta)
            .transaction(|(audit, meta)| {
                for (seq, bytes) in events {
                    audit.insert(&seq.to_be_bytes(), bytes.as_slice())?;
                }
                meta.insert(AUDIT_HEAD, head)?;
                Ok(())
            })
            .map_err(|e: TransactionError<StoreError>| tx_error(e))
    }

    fn audit_scan(&self, after: u64, limit: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let start = after.saturating_add(1).to_be_bytes();
        self.audit
            .range(start..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                let seq = <[u8; 8]>::try_from(k.as_ref())
                    .map_err(|_| StoreError::Corrupt("audit key"))?;
                Ok((u64::from_be_bytes(seq), v.to_vec()))
            })
            .collect()
    }

    fn audit_last(&self) -> StoreResult<Option<(u64, Vec<u8>)>> {
        match self.audit.last().map_err(backend)? {
            None => Ok(None),
            Some((k, v)) => {
                let seq = <[u8; 8]>::try_from(k.as_ref())
                    .map_err(|_| StoreError::Corrupt("audit key"))?;
                Ok(Some((u64::from_be_bytes(seq), v.to_vec())))
            }
        }
    }

    fn audit_marks(&self) -> StoreResult<AuditMarks> {
        Ok(AuditMarks {
            head: self.meta(AUDIT_HEAD)?,
            checkpoint: self.meta(AUDIT_CHECKPOINT)?,
        })
    }

    fn audit_prune(&self, through: u64, checkpoint: &[u8]) -> StoreResult<u64> {
        // The checkpoint goes first: if pruning stops half-way, the events left before it
        // are skipped by verification instead of being reported missing.
        self.meta
            .insert(AUDIT_CHECKPOINT, checkpoint)
            .map_err(backend)?;
        let end = through.saturating_add(1).to_be_bytes();
        let mut deleted = 0u64;
        loop {
            let keys: Vec<sled::IVec> = self
                .audit
                .range(..end)
                .keys()
                .take(PRUNE_BATCH)
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            if keys.is_empty() {
                return Ok(deleted);
            }
            let mut batch = sled::Batch::default();
            for k in &keys {
                batch.remove(k);
            }
            self.audit.apply_batch(batch).map_err(backend)?;
            deleted += keys.len() as u64;
        }
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
        &self,
        created_unix: u64,
        emit: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> StoreResult<super::backup::Manifest> {
        self.flush()?;
        super::backup::write(&self.db, created_unix, emit)
    }
}
