//! Persistence of sealed records behind one narrow trait, so a networked backend can be
//! added without touching the layers above. The default backend is sled (`SledStore`).
//!
//! The store never sees a key or a value in the clear: only sealed envelopes and metadata.
//!
//! The layout: `records` (and `key_records`) are the stored formats; `rules` decides what
//! each write changes, for both backends; `sled` and `postgres` read what the rules need and
//! apply their plans in their own transactions; `group_commit` shares flushes; `backup`
//! writes and restores whole stores; `faults` (feature `testing`) injects failures in tests.

pub mod backup;
#[cfg(feature = "testing")]
pub mod faults;
mod group_commit;
mod key_records;
mod postgres;
mod records;
mod rules;
mod segments;
mod sled;

/// The PostgreSQL backend's TLS connector, for the load generator's PostgreSQL peer.
#[cfg(feature = "testing")]
pub use self::postgres::MakeRustls;
pub use self::postgres::{PgStore, PgTls};
pub use self::sled::{open_waiting_for_lock, SledOpenError, SledStore};
pub use group_commit::{stored_mark, FlushMark, GroupCommit, DATA_MARK};
pub use key_records::{KeyChange, KeyVersionInfo, RewrapJob, RootKeyState, TenantKeyState};
pub use records::{
    categories_in, category_bit, Erasure, FieldRecord, Idempotency, IdempotencyRecord, OlderDek,
    RecordKind, Seal, SealedField, StateRecord, SubjectRecord, SubjectWrite, TenantRecord,
    Tombstone, Written,
};
pub use segments::{SegmentLog, TailCut, DEFAULT_SEGMENT_BYTES};

use crate::crypto::Sealed;
use crate::domain::{Category, FieldName, SubjectId, TenantId, Timestamp};

/// What can go wrong in storage. Messages never contain stored bytes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed to read or write (I/O error, disk full, backend down).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// A stored record did not decode: the data directory is damaged.
    #[error("stored {0} is corrupt")]
    Corrupt(&'static str),
    /// An audit event in the audit log's files failed its checksum or was cut short, where
    /// the log must be whole (not its unacknowledged tail): reported at the sequence number
    /// the damaged frame should hold.
    #[error("audit event {seq} is damaged ({what})")]
    AuditDamaged { seq: u64, what: &'static str },
    /// A subject's state record or tombstone decoded but is not the one last written for
    /// it: a bad seal, or a sequence number behind its anchor (`records::sealed`). Says
    /// why in a few fixed words, never what the record holds.
    #[error("subject state record failed its integrity check ({0})")]
    Integrity(&'static str),
    /// The subject changed between sealing and writing; the caller retries.
    #[error("concurrent update of the same subject")]
    Conflict,
    /// The tenant does not exist.
    #[error("tenant not found")]
    NoTenant,
    /// The subject was erased; its id cannot be written again.
    #[error("subject was erased")]
    Erased,
    /// A write would replace a stored field of a category the writer may not write. Names
    /// the field and its category, never its value.
    #[error("no grant to replace field {field} of category {}", category.name())]
    NotGranted {
        field: FieldName,
        category: Category,
    },
    /// A field's stored version is not the one the write expected (`SealedField::expected`);
    /// nothing of the write was stored. `stored` is 0 for a field that does not exist.
    #[error("field {field} is at version {stored}, not the version the write expected")]
    VersionMismatch { field: FieldName, stored: u64 },
    /// The write's idempotency key holds the record of a different request (another
    /// fingerprint); nothing of the write was stored.
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<crate::codec::CodecError> for StoreError {
    fn from(e: crate::codec::CodecError) -> Self {
        StoreError::Corrupt(e.0)
    }
}

/// Computes a tenant's key change from its current records (tenant record, key state); `None`
/// changes nothing. Runs inside a transaction and may run more than once: it must be pure.
pub type KeyUpdate<'a> = dyn Fn(&TenantRecord, &TenantKeyState) -> Option<KeyChange> + 'a;

/// Computes a subject's new record from its stored one and the tenant's current KEK
/// version; `None` leaves it as it is. Runs inside a transaction: it must be pure.
pub type SubjectUpdate<'a> = dyn Fn(&SubjectId, &SubjectRecord, u32) -> Option<SubjectRecord> + 'a;

/// Computes a subject's new state record (consents, restriction, seal) from the stored one;
/// `None` changes nothing, an error (the stored record failed its check) aborts. Runs
/// inside a transaction and may run more than once: it must be pure.
pub type StateUpdate<'a> = dyn Fn(&StateRecord) -> StoreResult<Option<StateRecord>> + 'a;

/// Seals the tombstone an erasure writes, given the sequence number it takes (one past the
/// subject's state record). Runs inside a transaction: it must be pure.
pub type TombstoneSeal<'a> = dyn Fn(Tombstone, u64) -> Tombstone + 'a;

/// Seals one legacy tombstone of the named subject (`Store::seal_legacy_tombstones`).
pub type LegacySeal<'a> = dyn Fn(&SubjectId, Tombstone) -> Tombstone + 'a;

/// What one `Store::seal_legacy_tombstones` call did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LegacyPage {
    /// Tombstones sealed.
    pub sealed: usize,
    /// The last subject examined; `None` when there were none left.
    pub last: Option<SubjectId>,
}

/// The signed records that bound the audit chain (see `audit::ChainMark`).
#[derive(Clone, Debug, Default)]
pub struct AuditMarks {
    /// The single chain's head.
    pub head: Option<Vec<u8>>,
    pub checkpoint: Option<Vec<u8>>,
    /// In a log several nodes append to, each node's chain: (node, its head once it
    /// appended). Empty for a log of one writer.
    pub nodes: Vec<(u64, Option<Vec<u8>>)>,
}

/// Seals a batch for `Store::audit_append_node`: given the place of its first event in the
/// merged order, returns the rows to store and the node's new head.
pub type SealBatch<'a> = &'a mut dyn FnMut(u64) -> (Vec<(u64, Vec<u8>)>, Vec<u8>);

/// How `Store::root_fence` is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceMode {
    /// Wrapping under the current root key version; many holders at once.
    Shared,
    /// Changing the root key file; one holder, and no shared holder.
    Exclusive,
}

/// A held fence of a store shared by several nodes (released when dropped).
pub trait FenceHold: Send {
    /// False once the fence was lost (its database session ended): whatever relied on it
    /// must not be finished.
    fn held(&self) -> bool;
}

/// A held `root_fence`; empty for a store that has nothing to fence.
#[derive(Default)]
pub struct Fence<'a>(Option<Box<dyn FenceHold + 'a>>);

impl<'a> Fence<'a> {
    /// A fence that `hold` releases when dropped.
    pub fn new(hold: Box<dyn FenceHold + 'a>) -> Self {
        Self(Some(hold))
    }

    /// True while the fence still holds (always, for an empty fence).
    pub fn held(&self) -> bool {
        self.0.as_ref().is_none_or(|h| h.held())
    }
}

impl std::fmt::Debug for Fence<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence").field("held", &self.held()).finish()
    }
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
    /// Metadata entries whose key starts with `prefix`, in key order.
    fn meta_scan(&self, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>>;
    /// Removes a metadata entry.
    fn meta_remove(&self, key: &str) -> StoreResult<()>;
    /// Replaces a metadata value if it still equals `expected` (`None`: absent); returns
    /// whether it did.
    fn meta_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> StoreResult<bool>;

    /// Creates a tenant with its first wrapped KEK. Returns false if it already exists.
    fn create_tenant(&self, tenant: &TenantRecord, wrapped_kek: &Sealed) -> StoreResult<bool>;
    fn tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>>;
    /// Tenants in id order, starting after `after`.
    fn tenants(&self, after: Option<&TenantId>, limit: usize) -> StoreResult<Vec<TenantRecord>>;
    /// A wrapped version of a tenant's KEK.
    fn kek(&self, tenant: &TenantId, version: u32) -> StoreResult<Option<Sealed>>;
    /// Every stored (not destroyed) KEK version of a tenant, wrapped, in version order.
    fn keks(&self, tenant: &TenantId) -> StoreResult<Vec<(u32, Sealed)>>;
    /// Replaces a wrapped KEK if it is still stored as `expected` (root key re-wrap);
    /// returns whether it did. A destroyed version is never brought back.
    fn replace_kek(
        &self, tenant: &TenantId, version: u32, expected: &Sealed, new: &Sealed,
    ) -> StoreResult<bool>;
    /// A tenant's key state as stored; `None` if it never had one written.
    fn tenant_keys(&self, tenant: &TenantId) -> StoreResult<Option<TenantKeyState>>;
    /// Every stored tenant key state (tenants that were ever rotated or counted).
    fn all_tenant_keys(&self) -> StoreResult<Vec<(TenantId, TenantKeyState)>>;
    /// Applies `update` to a tenant's records atomically (tenant record, key state, wrapped
    /// KEKs, epoch mark). Returns the change applied, if any. `NoTenant` if it does not exist.
    fn update_tenant_keys(
        &self, tenant: &TenantId, update: &KeyUpdate<'_>,
    ) -> StoreResult<Option<KeyChange>>;

    fn subject(&self, tenant: &TenantId, subject: &SubjectId)
        -> StoreResult<Option<SubjectRecord>>;
    /// Subjects of a tenant in id order, starting after `after`.
    fn subjects(
        &self, tenant: &TenantId, after: Option<&SubjectId>, limit: usize,
    ) -> StoreResult<Vec<SubjectId>>;

    /// Subject records of a tenant in id order, starting after `after` (re-wrap, key status).
    fn subject_records(
        &self, tenant: &TenantId, after: Option<&SubjectId>, limit: usize,
    ) -> StoreResult<Vec<(SubjectId, SubjectRecord)>>;
    /// Applies `update` to each named subject that exists, in one transaction that also
    /// reads the tenant's current KEK version. Returns, per subject, whether it changed.
    fn update_subjects(
        &self, tenant: &TenantId, subjects: &[SubjectId], update: &SubjectUpdate<'_>,
    ) -> StoreResult<Vec<bool>>;

    /// Writes all fields of `write` or none, creating the subject if needed; bumps versions.
    /// Creating the subject requires its DEK to be wrapped under the tenant's current KEK
    /// version (else `Conflict`: the caller wraps again). With `write.idempotency`, the
    /// record stored under its scope, while it lasts, answers instead: the same fingerprint
    /// gets the first answer and nothing is written, another gets `IdempotencyKeyReused`;
    /// else the write stores the record with the fields, in the same transaction.
    fn put_fields(
        &self, tenant: &TenantId, subject: &SubjectId, write: &SubjectWrite,
    ) -> StoreResult<Vec<Written>>;
    /// Every field of a subject, in name order.
    fn fields(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Vec<FieldRecord>>;
    /// At most `limit` fields of a subject in the order of `fields`, starting after the
    /// field named `after` (from the first when `None`): scans a subject of any size in
    /// bounded memory. An empty page means there are no more.
    fn fields_page(
        &self, tenant: &TenantId, subject: &SubjectId, after: Option<&FieldName>, limit: usize,
    ) -> StoreResult<Vec<FieldRecord>>;
    /// One field of a subject.
    fn field(
        &self, tenant: &TenantId, subject: &SubjectId, name: &FieldName,
    ) -> StoreResult<Option<FieldRecord>>;
    /// Deletes the named fields atomically; returns how many existed.
    fn delete_fields(
        &self, tenant: &TenantId, subject: &SubjectId, names: &[FieldName],
    ) -> StoreResult<u32>;

    /// A subject's state record (default when never set), read together with its subject
    /// record: `Integrity` if its sequence number is not the one the subject record anchors
    /// (`records::sealed`). The seal's tag is the caller's to check.
    fn subject_state(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<StateRecord>;
    /// Changes a subject's state record by compare-and-swap: `update` computes the new
    /// record from the stored one (`None` keeps it), in one transaction with the write, so
    /// no concurrent change is lost; the subject record's anchor (`state_seq`) moves with it.
    /// Returns the record stored afterwards. `Erased` if the subject has a tombstone,
    /// `Integrity` as for `subject_state`.
    fn update_subject_state(
        &self, tenant: &TenantId, subject: &SubjectId, update: &StateUpdate<'_>,
    ) -> StoreResult<StateRecord>;

    /// Fields of a tenant whose expiry is at or before `now`: (subject, field, expiry).
    fn expired(
        &self, tenant: &TenantId, now: Timestamp, limit: usize,
    ) -> StoreResult<Vec<(SubjectId, FieldName, Timestamp)>>;
    /// Deletes a field if it still expires at `expires_at` (not rewritten since); true if deleted.
    fn delete_expired(
        &self, tenant: &TenantId, subject: &SubjectId, name: &FieldName, expires_at: Timestamp,
    ) -> StoreResult<bool>;

    /// Deletes up to `limit` idempotency records of a tenant that expired by `now`; returns
    /// how many.
    fn prune_idempotency(
        &self, tenant: &TenantId, now: Timestamp, limit: usize,
    ) -> StoreResult<usize>;

    /// Deletes every blind-index entry of a tenant (a shredded one); returns how many.
    fn clear_index(&self, tenant: &TenantId) -> StoreResult<u64>;
    /// Blind-index entry keys of a tenant that start with `prefix`.
    fn index_scan(&self, tenant: &TenantId, prefix: &[u8]) -> StoreResult<Vec<Vec<u8>>>;
    /// Replaces the blind-index entry of one field (after an index key rotation).
    fn reindex_field(
        &self, tenant: &TenantId, subject: &SubjectId, name: &FieldName, entry: &[u8],
    ) -> StoreResult<()>;

    /// Erases a subject atomically: deletes its record (and so its wrapped DEK) and state,
    /// writes `tombstone` (completed from the record, then sealed by `seal`), and marks the
    /// tenant for the next key epoch. If the subject has a legal shadow (records under a
    /// retention duty), the shadow's erasure is scheduled for `tombstone.retained_until` in
    /// the same transaction. Idempotent.
    fn erase_subject(
        &self, tenant: &TenantId, subject: &SubjectId, tombstone: &Tombstone,
        seal: &TombstoneSeal<'_>,
    ) -> StoreResult<Erasure>;
    fn tombstone(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Option<Tombstone>>;
    /// Deletes up to `limit` field records of an erased subject; returns how many. When none
    /// are left, deletes the subject's idempotency records and marks the tombstone purged.
    fn purge_fields(
        &self, tenant: &TenantId, subject: &SubjectId, limit: usize,
    ) -> StoreResult<usize>;
    /// The one-time migration of a store an earlier version wrote: seals, with `seal`, each
    /// tombstone stored without a seal among the next `limit` tombstones of `tenant` after
    /// `after` (in the backend's id order). A tombstone sealed meanwhile is left as it is. Returns how many were sealed and the last subject
    /// examined; `last` is `None` when there were no more.
    fn seal_legacy_tombstones(
        &self, tenant: &TenantId, after: Option<&SubjectId>, limit: usize, seal: &LegacySeal<'_>,
    ) -> StoreResult<LegacyPage>;
    /// Erased subjects whose field ciphertexts are not purged yet (resumed after a restart).
    fn unpurged(&self) -> StoreResult<Vec<(TenantId, SubjectId)>>;
    /// Legal retention duties that ended by `now`: (tenant, shadow subject, end).
    fn legal_holds_due(&self, now: Timestamp)
        -> StoreResult<Vec<(TenantId, SubjectId, Timestamp)>>;
    /// Removes a legal hold entry (after its shadow subject was erased).
    fn clear_legal_hold(
        &self, tenant: &TenantId, shadow: &SubjectId, until: Timestamp,
    ) -> StoreResult<()>;

    /// Tenants with erasures since their last key epoch, with an erasure counter.
    fn epoch_pending(&self) -> StoreResult<Vec<(TenantId, u64)>>;
    /// Clears a tenant's epoch mark if no erasure happened since the counter was `seen`.
    fn clear_epoch_pending(&self, tenant: &TenantId, seen: u64) -> StoreResult<()>;

    /// Appends audit events (sequence number, encoded event) and replaces the audit head
    /// record, atomically, and returns once they are durable (the audit log answers its
    /// callers on that alone; it does not flush the store). A backend shared by several writers answers `Conflict` when the
    /// batch does not continue the newest stored event (the writer re-chains and retries).
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
    /// Starts a chain of its own for this node in a log several nodes append to (`shared`):
    /// its node number, new and never reused.
    fn audit_new_node(&self, _started: Timestamp) -> StoreResult<u64> {
        Err(StoreError::Backend(
            "this store's audit log has one writer and one chain".into(),
        ))
    }
    /// Appends a batch to node `node`'s chain, in the order merged from every node: `seal`
    /// is given the place of the batch's first event (right after the newest stored event,
    /// whichever node wrote it; no other node appends in between) and returns the rows and
    /// the node's new head. Durable on return.
    fn audit_append_node(&self, _node: u64, _seal: SealBatch<'_>) -> StoreResult<()> {
        Err(StoreError::Backend(
            "this store's audit log has one writer and one chain".into(),
        ))
    }
    /// The torn tails cut off the audit log (events never acknowledged) and not yet
    /// recorded, for the audit log to record; none for a backend whose appends are
    /// transactions.
    fn audit_tail_cuts(&self) -> Vec<TailCut> {
        Vec::new()
    }
    /// Forgets the cuts `audit_tail_cuts` returned, once the audit log recorded them.
    fn audit_tail_cuts_recorded(&self) -> StoreResult<()> {
        Ok(())
    }

    /// True when several vault nodes may share this store. They then share one root key
    /// file too, and coordinate its changes through `root_fence`.
    fn shared(&self) -> bool {
        false
    }

    /// Holds the root key fence until the returned guard is dropped. Every wrap under the
    /// root key, up to the store write that keeps it, holds it `Shared`; adding or
    /// destroying a root key version holds it `Exclusive`, so no node wraps under a version
    /// while another destroys it. A store of one node has nothing to fence (the keyring's
    /// own lock orders its threads).
    fn root_fence(&self, _mode: FenceMode) -> StoreResult<Fence<'_>> {
        Ok(Fence::default())
    }

    /// Whether this node may run the background job `job` (re-wraps and key epochs,
    /// retention sweeps, audit pruning) now. A store shared by several nodes grants each job
    /// to one node at a time, until that node is gone; a store of one node always grants.
    fn job_lease(&self, _job: &str) -> StoreResult<bool> {
        Ok(true)
    }

    /// Makes every write that completed before this call durable.
    fn flush(&self) -> StoreResult<()>;

    /// Bytes the store occupies on disk, if the backend can tell (reported as a metric).
    fn disk_bytes(&self) -> StoreResult<Option<u64>> {
        Ok(None)
    }

    /// Writes a backup of the whole store (format and consistency: `backup`), handing the
    /// file's bytes to `emit` in order; stops when `emit` returns false. Blocking.
    fn backup(
        &self, _stamp: backup::Stamp, _emit: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> StoreResult<backup::Manifest> {
        Err(StoreError::Backend("this store cannot make backups".into()))
    }
}

/// Replaces the file at `path` with `bytes` atomically: a temporary file beside it
/// (`<path>.tmp`), synced, renamed over it, the directory synced. A crash leaves the old
/// content or the new.
pub fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates `dir` (and missing parents) readable by the owner only, whatever the process
/// umask; a directory that already exists is left as the operator made it.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        // The mode passed to mkdir is masked by the umask; set it exactly.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    builder.create(dir)
}
