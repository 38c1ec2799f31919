//! Persistence of sealed records behind one narrow trait, so a networked backend can be
//! added without touching the layers above. The default backend is sled (`SledStore`).
//!
//! The store never sees a key or a value in the clear: only sealed envelopes and metadata.

pub mod backup;
pub mod faults;
mod group_commit;
mod records;
mod sled_store;

pub use group_commit::GroupCommit;
pub use records::{FieldRecord, SealedField, SubjectRecord, SubjectWrite, TenantRecord};
pub use sled_store::SledStore;

use crate::crypto::Sealed;
use crate::domain::{FieldMeta, FieldName, SubjectId, TenantId};

/// What can go wrong in storage. Messages never contain stored bytes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed to read or write (I/O error, disk full, backend down).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// A stored record did not decode: the data directory is damaged.
    #[error("stored {0} is corrupt")]
    Corrupt(&'static str),
    /// The subject changed between sealing and writing; the caller retries.
    #[error("concurrent update of the same subject")]
    Conflict,
    /// The tenant does not exist.
    #[error("tenant not found")]
    NoTenant,
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<crate::codec::CodecError> for StoreError {
    fn from(e: crate::codec::CodecError) -> Self {
        StoreError::Corrupt(e.0)
    }
}

/// The signed records that bound the audit chain (see `audit::ChainMark`).
#[derive(Clone, Debug, Default)]
pub struct AuditMarks {
    pub head: Option<Vec<u8>>,
    pub checkpoint: Option<Vec<u8>>,
}

/// The storage operations the vault needs, and nothing more.
///
/// Writes are applied atomically but are not durable until `flush` returns: callers
/// acknowledge a write only after a flush that started after it (see `GroupCommit`).
pub trait Store: Send + Sync + 'static {
    /// A value of the store-wide metadata map.
    fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Sets a metadata value unless one is present; returns the value now stored.
    fn meta_init(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>>;

    /// Creates a tenant with its first wrapped KEK. Returns false if it already exists.
    fn create_tenant(&self, tenant: &TenantRecord, wrapped_kek: &Sealed) -> StoreResult<bool>;
    fn tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>>;
    /// Tenants in id order, starting after `after`.
    fn tenants(&self, after: Option<&TenantId>, limit: usize) -> StoreResult<Vec<TenantRecord>>;
    /// A wrapped version of a tenant's KEK.
    fn kek(&self, tenant: &TenantId, version: u32) -> StoreResult<Option<Sealed>>;

    fn subject(&self, tenant: &TenantId, subject: &SubjectId)
        -> StoreResult<Option<SubjectRecord>>;
    /// Subjects of a tenant in id order, starting after `after`.
    fn subjects(
        &self,
        tenant: &TenantId,
        after: Option<&SubjectId>,
        limit: usize,
    ) -> StoreResult<Vec<SubjectId>>;

    /// Writes all fields of `write` or none, creating the subject if needed; bumps versions.
    fn put_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        write: &SubjectWrite,
    ) -> StoreResult<Vec<FieldMeta>>;
    /// Every field of a subject, in name order.
    fn fields(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Vec<FieldRecord>>;
    /// One field of a subject.
    fn field(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        name: &FieldName,
    ) -> StoreResult<Option<FieldRecord>>;
    /// Deletes the named fields atomically; returns how many existed.
    fn delete_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        names: &[FieldName],
    ) -> StoreResult<u32>;

    /// Appends audit events (sequence number, encoded event) and replaces the audit head
    /// record, atomically.
    fn audit_append(&self, events: &[(u64, Vec<u8>)], head: &[u8]) -> StoreResult<()>;
    /// Audit events with sequence numbers above `after`, in order, at most `limit`.
    fn audit_scan(&self, after: u64, limit: usize) -> StoreResult<Vec<(u64, Vec<u8>)>>;
    /// The newest audit event.
    fn audit_last(&self) -> StoreResult<Option<(u64, Vec<u8>)>>;
    /// The audit head and prune checkpoint records.
    fn audit_marks(&self) -> StoreResult<AuditMarks>;
    /// Records `checkpoint`, then deletes every audit event up to `through`. Returns how
    /// many were deleted.
    fn audit_prune(&self, through: u64, checkpoint: &[u8]) -> StoreResult<u64>;

    /// Makes every write that completed before this call durable.
    fn flush(&self) -> StoreResult<()>;

    /// Bytes the store occupies on disk, if the backend can tell (reported as a metric).
    fn disk_bytes(&self) -> StoreResult<Option<u64>> {
        Ok(None)
    }

    /// Writes a backup of the whole store (format and consistency: `backup`), handing the
    /// file's bytes to `emit` in order; stops when `emit` returns false. Blocking.
    fn backup(
        &self,
        _created_unix: u64,
        _emit: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> StoreResult<backup::Manifest> {
        Err(StoreError::Backend("this store cannot make backups".into()))
    }
}
