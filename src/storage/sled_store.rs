//! The embedded sled backend.
//!
//! Trees:
//! - `meta`: store-wide settings (schema version, root key check value).
//! - `tenants`: tenant id → `TenantRecord`.
//! - `keks`: (tenant, version) → wrapped KEK.
//! - `t/<tenant>/subjects`: subject → `SubjectRecord` (one tree per tenant: isolation).
//! - `t/<tenant>/fields`: (subject, field name) → `FieldRecord`.
//! - `audit`: sequence number (u64 BE) → encoded audit event.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::crypto::Sealed;
use crate::domain::{FieldMeta, FieldName, SubjectId, TenantId};

use super::records::{FieldRecord, SubjectRecord, SubjectWrite, TenantRecord};
use super::{AuditMarks, Store, StoreError, StoreResult};
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
}

/// sled-backed `Store`.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    tenants: sled::Tree,
    keks: sled::Tree,
    audit: sled::Tree,
    /// Open handles of per-tenant trees; opening a tree takes a lock inside sled.
    tenant_trees: RwLock<HashMap<TenantId, TenantTrees>>,
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

fn kek_key(tenant: &TenantId, version: u32) -> Vec<u8> {
    Writer::new().str(tenant.as_str()).u32(version).finish()
}

fn decode_subject_key(key: &[u8]) -> StoreResult<SubjectId> {
    let mut r = crate::codec::Reader::new(key, "subject key");
    let id = SubjectId::parse(r.str()?).map_err(|_| StoreError::Corrupt("subject key"))?;
    r.finish()?;
    Ok(id)
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(backend)?;
        Ok(Self {
            meta: db.open_tree("meta").map_err(backend)?,
            tenants: db.open_tree("tenants").map_err(backend)?,
            keks: db.open_tree("keks").map_err(backend)?,
            audit: db.open_tree("audit").map_err(backend)?,
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

    fn put_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        write: &SubjectWrite,
    ) -> StoreResult<Vec<FieldMeta>> {
        let trees = self.existing_trees(tenant)?;
        let skey = subject_key(subject);
        let new_subject = write.subject.encode();
        (&trees.subjects, &trees.fields)
            .transaction(|(subjects, fields)| {
                // Pure: this closure may run again on conflict, so it only reads and writes
                // the transaction's trees.
                match subjects.get(&skey)? {
                    None => {
                        subjects.insert(skey.as_slice(), new_subject.as_slice())?;
                    }
                    Some(stored) if stored.as_ref() == new_subject.as_slice() => {}
                    Some(_) => return Err(abort(StoreError::Conflict)),
                }
                let mut written = Vec::with_capacity(write.fields.len());
                for f in &write.fields {
                    let key = field_key(subject, &f.name);
                    let previous = fields
                        .get(&key)?
                        .map(|v| FieldRecord::decode(&v))
                        .transpose()
                        .map_err(abort)?;
                    let meta = FieldMeta {
                        name: f.name.clone(),
                        category: f.category,
                        version: previous.as_ref().map_or(1, |p| p.meta.version + 1),
                        created_at: previous.as_ref().map_or(write.now, |p| p.meta.created_at),
                        updated_at: write.now,
                    };
                    let record = FieldRecord {
                        meta: meta.clone(),
                        kind: f.kind,
                        sealed: f.sealed.clone(),
                    };
                    fields.insert(key, record.encode())?;
                    written.push(meta);
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
        trees
            .fields
            .transaction(|fields| {
                let mut deleted = 0u32;
                for key in &keys {
                    if fields.remove(key.as_slice())?.is_some() {
                        deleted += 1;
                    }
                }
                Ok(deleted)
            })
            .map_err(|e: TransactionError<StoreError>| tx_error(e))
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
        self.db.flush().map(|_| ()).map_err(backend)
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
