//! Where a tenant's records live in sled: its own trees (isolation), opened once and kept,
//! and the length-prefixed keys of every tree, so that no two tuples encode the same bytes.

use crate::codec::Writer;
use crate::domain::{FieldName, SubjectId, TenantId, Timestamp};
use crate::storage::{StoreError, StoreResult};

use super::{backend, SledStore};

/// The trees that hold one tenant's data.
#[derive(Clone)]
pub(super) struct TenantTrees {
    pub(super) subjects: sled::Tree,
    pub(super) fields: sled::Tree,
    pub(super) tombstones: sled::Tree,
    pub(super) state: sled::Tree,
    pub(super) index: sled::Tree,
    pub(super) expiry: sled::Tree,
    /// Idempotency records, by subject and scope (`idempotency_key`).
    pub(super) idempotency: sled::Tree,
    /// The idempotency records by expiry (`idempotency_expiry_key`), for pruning.
    pub(super) idempotency_expiry: sled::Tree,
}

pub(super) fn subject_key(subject: &SubjectId) -> Vec<u8> {
    Writer::new().str(subject.as_str()).finish()
}

pub(super) fn field_key(subject: &SubjectId, name: &FieldName) -> Vec<u8> {
    Writer::new()
        .str(subject.as_str())
        .str(name.as_str())
        .finish()
}

/// Expiry entries sort by time first, so the sweeper reads only what is due.
pub(super) fn expiry_key(at: Timestamp, subject: &SubjectId, name: &FieldName) -> Vec<u8> {
    Writer::new()
        .u64(at.0)
        .str(subject.as_str())
        .str(name.as_str())
        .finish()
}

/// An idempotency record's key: the subject's key first, so an erasure finds them all.
pub(super) fn idempotency_key(subject: &SubjectId, scope: &[u8]) -> Vec<u8> {
    Writer::new().str(subject.as_str()).bytes(scope).finish()
}

/// An idempotency record's expiry entry: by time first, then the record's key.
pub(super) fn idempotency_expiry_key(at: Timestamp, record_key: &[u8]) -> Vec<u8> {
    Writer::new().u64(at.0).bytes(record_key).finish()
}

/// Legal holds sort by their end, so the sweeper reads only what is due.
pub(super) fn legal_hold_key(until: Timestamp, tenant: &TenantId, shadow: &SubjectId) -> Vec<u8> {
    Writer::new()
        .u64(until.0)
        .str(tenant.as_str())
        .str(shadow.as_str())
        .finish()
}

pub(super) fn kek_key(tenant: &TenantId, version: u32) -> Vec<u8> {
    Writer::new().str(tenant.as_str()).u32(version).finish()
}

pub(super) fn decode_subject_key(key: &[u8]) -> StoreResult<SubjectId> {
    let mut r = crate::codec::Reader::new(key, "subject key");
    let id = SubjectId::parse(r.str()?).map_err(|_| StoreError::Corrupt("subject key"))?;
    r.finish()?;
    Ok(id)
}

/// A key that is a tenant id (the store-wide trees keyed by tenant).
pub(super) fn decode_tenant_key(key: &[u8], what: &'static str) -> StoreResult<TenantId> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|s| TenantId::parse(s).ok())
        .ok_or(StoreError::Corrupt(what))
}

impl SledStore {
    pub(super) fn trees(&self, tenant: &TenantId) -> StoreResult<TenantTrees> {
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
            idempotency: self
                .db
                .open_tree(format!("{base}idempotency"))
                .map_err(backend)?,
            idempotency_expiry: self
                .db
                .open_tree(format!("{base}idempotency_expiry"))
                .map_err(backend)?,
        };
        if let Ok(mut map) = self.tenant_trees.write() {
            map.insert(tenant.clone(), trees.clone());
        }
        Ok(trees)
    }

    /// Trees of a tenant that must exist.
    pub(super) fn existing_trees(&self, tenant: &TenantId) -> StoreResult<TenantTrees> {
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
