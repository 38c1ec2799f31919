//! A `Store` wrapper that fails or stalls on command: fault injection for tests of the
//! fail-closed paths (audit log cannot be written, disk full, stuck I/O).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::crypto::Sealed;
use crate::domain::{FieldName, SubjectId, TenantId, Timestamp};

use super::{
    AuditMarks, Erasure, FieldRecord, KeyChange, KeyUpdate, LegacyPage, LegacySeal, SealBatch,
    StateRecord, StateUpdate, Store, StoreError, StoreResult, SubjectRecord, SubjectUpdate,
    SubjectWrite, TenantKeyState, TenantRecord, Tombstone, TombstoneSeal, Written,
};

/// Switches that make the wrapped store misbehave.
#[derive(Debug, Default)]
pub struct Faults {
    /// Audit appends fail (as on a full disk).
    pub fail_audit: AtomicBool,
    /// Audit appends block for `stall_millis` first (a stuck writer).
    pub stall_audit: AtomicBool,
    pub stall_millis: AtomicU64,
    /// Data writes (tenants, fields, deletes) fail.
    pub fail_writes: AtomicBool,
    /// Flushes fail.
    pub fail_flush: AtomicBool,
    /// Every tenant key update finds the keys changed by another writer first and is not
    /// applied, so the keyring runs out of retries (keys busy).
    pub lose_key_races: AtomicBool,
    /// One key write (tenant keys, subject re-wraps, metadata, epoch marks, index
    /// entries) fails once `key_writes_allowed` more have succeeded, and the switch turns
    /// itself off: a transient fault at each step of a key job in turn.
    pub fail_key_writes: AtomicBool,
    pub key_writes_allowed: AtomicU64,
    /// How many flushes ran (group commit makes this far lower than the writes).
    pub flushes: AtomicU64,
    /// How many times all fields of a subject were loaded at once (`Store::fields`).
    pub whole_field_loads: AtomicU64,
    /// The most field records one `Store::fields_page` call returned.
    pub largest_field_page: AtomicU64,
}

impl Faults {
    pub fn set(flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::SeqCst);
    }
}

/// A test's callback, run at a chosen point of a store call.
type Hook = Box<dyn Fn() + Send + Sync>;

/// The wrapper itself.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    pub faults: Arc<Faults>,
    /// Runs at the start of every `put_fields`, when the caller has already sealed the
    /// values: a test can take a crash image of the data directory there.
    put_hook: Mutex<Option<Hook>>,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("faults", &self.faults)
            .finish()
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            faults: Arc::new(Faults::default()),
            put_hook: Mutex::new(None),
        }
    }

    /// Runs `hook` at the start of every later `put_fields`.
    pub fn on_put_fields(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut h) = self.put_hook.lock() {
            *h = Some(Box::new(hook));
        }
    }

    fn check(flag: &AtomicBool, what: &str) -> StoreResult<()> {
        if flag.load(Ordering::SeqCst) {
            Err(StoreError::Backend(format!("injected fault: {what}")))
        } else {
            Ok(())
        }
    }

    /// An audit append stalls first if asked (a stuck writer), then fails if asked.
    fn audit_faults(&self) -> StoreResult<()> {
        if self.faults.stall_audit.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(
                self.faults.stall_millis.load(Ordering::SeqCst),
            ));
        }
        Self::check(&self.faults.fail_audit, "audit append failed (disk full)")
    }

    fn write(&self) -> StoreResult<()> {
        Self::check(&self.faults.fail_writes, "write failed (disk full)")
    }

    fn key_write(&self) -> StoreResult<()> {
        if !self.faults.fail_key_writes.load(Ordering::SeqCst) {
            return Ok(());
        }
        let left =
            self.faults
                .key_writes_allowed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match left {
            Ok(_) => Ok(()),
            Err(_) => {
                Faults::set(&self.faults.fail_key_writes, false);
                Err(StoreError::Backend(
                    "injected fault: key write failed (I/O error)".into(),
                ))
            }
        }
    }
}

impl Store for FaultyStore {
    fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.inner.meta(key)
    }
    fn meta_init(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        self.key_write()?;
        self.inner.meta_init(key, value)
    }
    fn meta_scan(&self, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.inner.meta_scan(prefix)
    }
    fn meta_remove(&self, key: &str) -> StoreResult<()> {
        self.key_write()?;
        self.inner.meta_remove(key)
    }
    fn expired(
        &self, tenant: &TenantId, now: Timestamp, limit: usize,
    ) -> StoreResult<Vec<(SubjectId, FieldName, Timestamp)>> {
        self.inner.expired(tenant, now, limit)
    }
    fn prune_idempotency(
        &self, tenant: &TenantId, now: Timestamp, limit: usize,
    ) -> StoreResult<usize> {
        self.write()?;
        self.inner.prune_idempotency(tenant, now, limit)
    }
    fn delete_expired(
        &self, tenant: &TenantId, subject: &SubjectId, name: &FieldName, expires_at: Timestamp,
    ) -> StoreResult<bool> {
        self.write()?;
        self.inner.delete_expired(tenant, subject, name, expires_at)
    }
    fn index_scan(&self, tenant: &TenantId, prefix: &[u8]) -> StoreResult<Vec<Vec<u8>>> {
        self.inner.index_scan(tenant, prefix)
    }
    fn clear_index(&self, tenant: &TenantId) -> StoreResult<u64> {
        self.write()?;
        self.key_write()?;
        self.inner.clear_index(tenant)
    }
    fn reindex_field(
        &self, tenant: &TenantId, subject: &SubjectId, name: &FieldName, entry: &[u8],
    ) -> StoreResult<()> {
        self.write()?;
        self.key_write()?;
        self.inner.reindex_field(tenant, subject, name, entry)
    }
    fn meta_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> StoreResult<bool> {
        self.key_write()?;
        self.inner.meta_swap(key, expected, value)
    }
    fn create_tenant(&self, tenant: &TenantRecord, wrapped_kek: &Sealed) -> StoreResult<bool> {
        self.write()?;
        self.inner.create_tenant(tenant, wrapped_kek)
    }
    fn tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>> {
        self.inner.tenant(id)
    }
    fn tenants(&self, after: Option<&TenantId>, limit: usize) -> StoreResult<Vec<TenantRecord>> {
        self.inner.tenants(after, limit)
    }
    fn kek(&self, tenant: &TenantId, version: u32) -> StoreResult<Option<Sealed>> {
        self.inner.kek(tenant, version)
    }
    fn keks(&self, tenant: &TenantId) -> StoreResult<Vec<(u32, Sealed)>> {
        self.inner.keks(tenant)
    }
    fn replace_kek(
        &self, tenant: &TenantId, version: u32, expected: &Sealed, new: &Sealed,
    ) -> StoreResult<bool> {
        self.key_write()?;
        self.inner.replace_kek(tenant, version, expected, new)
    }
    fn tenant_keys(&self, tenant: &TenantId) -> StoreResult<Option<TenantKeyState>> {
        self.inner.tenant_keys(tenant)
    }
    fn all_tenant_keys(&self) -> StoreResult<Vec<(TenantId, TenantKeyState)>> {
        self.inner.all_tenant_keys()
    }
    fn update_tenant_keys(
        &self, tenant: &TenantId, update: &KeyUpdate<'_>,
    ) -> StoreResult<Option<KeyChange>> {
        if self.faults.lose_key_races.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.key_write()?;
        self.inner.update_tenant_keys(tenant, update)
    }
    fn subject_records(
        &self, tenant: &TenantId, after: Option<&SubjectId>, limit: usize,
    ) -> StoreResult<Vec<(SubjectId, SubjectRecord)>> {
        self.inner.subject_records(tenant, after, limit)
    }
    fn update_subjects(
        &self, tenant: &TenantId, subjects: &[SubjectId], update: &SubjectUpdate<'_>,
    ) -> StoreResult<Vec<bool>> {
        self.key_write()?;
        self.inner.update_subjects(tenant, subjects, update)
    }
    fn subject(
        &self, tenant: &TenantId, subject: &SubjectId,
    ) -> StoreResult<Option<SubjectRecord>> {
        self.inner.subject(tenant, subject)
    }
    fn subjects(
        &self, tenant: &TenantId, after: Option<&SubjectId>, limit: usize,
    ) -> StoreResult<Vec<SubjectId>> {
        self.inner.subjects(tenant, after, limit)
    }
    fn put_fields(
        &self, tenant: &TenantId, subject: &SubjectId, write: &SubjectWrite,
    ) -> StoreResult<Vec<Written>> {
        if let Some(hook) = self
            .put_hook
            .lock()
            .ok()
            .as_deref()
            .and_then(Option::as_ref)
        {
            hook();
        }
        self.write()?;
        self.inner.put_fields(tenant, subject, write)
    }
    fn fields(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Vec<FieldRecord>> {
        self.faults.whole_field_loads.fetch_add(1, Ordering::SeqCst);
        self.inner.fields(tenant, subject)
    }
    fn fields_page(
        &self, tenant: &TenantId, subject: &SubjectId, after: Option<&FieldName>, limit: usize,
    ) -> StoreResult<Vec<FieldRecord>> {
        let page = self.inner.fields_page(tenant, subject, after, limit)?;
        let len = u64::try_from(page.len()).unwrap_or(u64::MAX);
        self.faults
            .largest_field_page
            .fetch_max(len, Ordering::SeqCst);
        Ok(page)
    }
    fn field(
        &self, tenant: &TenantId, subject: &SubjectId, name: &FieldName,
    ) -> StoreResult<Option<FieldRecord>> {
        self.inner.field(tenant, subject, name)
    }
    fn delete_fields(
        &self, tenant: &TenantId, subject: &SubjectId, names: &[FieldName],
    ) -> StoreResult<u32> {
        self.write()?;
        self.inner.delete_fields(tenant, subject, names)
    }
    fn subject_state(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<StateRecord> {
        self.inner.subject_state(tenant, subject)
    }
    fn update_subject_state(
        &self, tenant: &TenantId, subject: &SubjectId, update: &StateUpdate<'_>,
    ) -> StoreResult<StateRecord> {
        self.write()?;
        self.inner.update_subject_state(tenant, subject, update)
    }
    fn erase_subject(
        &self, tenant: &TenantId, subject: &SubjectId, tombstone: &Tombstone,
        seal: &TombstoneSeal<'_>,
    ) -> StoreResult<Erasure> {
        self.write()?;
        self.inner.erase_subject(tenant, subject, tombstone, seal)
    }
    fn tombstone(&self, tenant: &TenantId, subject: &SubjectId) -> StoreResult<Option<Tombstone>> {
        self.inner.tombstone(tenant, subject)
    }
    fn seal_legacy_tombstones(
        &self, tenant: &TenantId, after: Option<&SubjectId>, limit: usize, seal: &LegacySeal<'_>,
    ) -> StoreResult<LegacyPage> {
        self.write()?;
        self.inner
            .seal_legacy_tombstones(tenant, after, limit, seal)
    }
    fn purge_fields(
        &self, tenant: &TenantId, subject: &SubjectId, limit: usize,
    ) -> StoreResult<usize> {
        self.write()?;
        self.inner.purge_fields(tenant, subject, limit)
    }
    fn unpurged(&self) -> StoreResult<Vec<(TenantId, SubjectId)>> {
        self.inner.unpurged()
    }
    fn legal_holds_due(
        &self, now: Timestamp,
    ) -> StoreResult<Vec<(TenantId, SubjectId, Timestamp)>> {
        self.inner.legal_holds_due(now)
    }
    fn clear_legal_hold(
        &self, tenant: &TenantId, shadow: &SubjectId, until: Timestamp,
    ) -> StoreResult<()> {
        self.inner.clear_legal_hold(tenant, shadow, until)
    }
    fn epoch_pending(&self) -> StoreResult<Vec<(TenantId, u64)>> {
        self.inner.epoch_pending()
    }
    fn clear_epoch_pending(&self, tenant: &TenantId, seen: u64) -> StoreResult<()> {
        self.key_write()?;
        self.inner.clear_epoch_pending(tenant, seen)
    }
    fn audit_append(&self, events: &[(u64, Vec<u8>)], head: &[u8]) -> StoreResult<()> {
        self.audit_faults()?;
        self.inner.audit_append(events, head)
    }
    fn audit_new_node(&self, started: Timestamp) -> StoreResult<u64> {
        self.inner.audit_new_node(started)
    }
    fn audit_append_node(&self, node: u64, seal: SealBatch<'_>) -> StoreResult<()> {
        self.audit_faults()?;
        self.inner.audit_append_node(node, seal)
    }
    fn audit_scan(&self, after: u64, limit: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        self.inner.audit_scan(after, limit)
    }
    fn audit_last(&self) -> StoreResult<Option<(u64, Vec<u8>)>> {
        self.inner.audit_last()
    }
    fn audit_marks(&self) -> StoreResult<AuditMarks> {
        self.inner.audit_marks()
    }
    fn audit_prune(&self, through: u64, checkpoint: &[u8]) -> StoreResult<u64> {
        self.inner.audit_prune(through, checkpoint)
    }

    fn audit_tail_cuts(&self) -> Vec<super::TailCut> {
        self.inner.audit_tail_cuts()
    }

    fn audit_tail_cuts_recorded(&self) -> StoreResult<()> {
        self.inner.audit_tail_cuts_recorded()
    }
    fn flush(&self) -> StoreResult<()> {
        self.faults.flushes.fetch_add(1, Ordering::SeqCst);
        Self::check(&self.faults.fail_flush, "flush failed (I/O error)")?;
        self.inner.flush()
    }
}
