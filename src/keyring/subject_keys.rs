//! Subject DEKs: created with a subject, wrapped by the tenant KEK, and unwrapped for
//! reads and writes through the bounded cache of `dek_cache.rs`.

use std::sync::Arc;

use crate::crypto::{Dek, Key, Sealed};
use crate::domain::{SubjectId, TenantId, Timestamp};
use crate::storage::{SubjectRecord, TenantRecord};

use super::{dek_aad, dek_cache, DekCacheStats, Keyring, KeyringError, LookupObserver};

impl Keyring {
    /// Sets the capacity of the unwrapped-DEK cache (0 disables it) and what each lookup
    /// reports to (default: `DEFAULT_DEK_CACHE_ENTRIES`, reporting nowhere).
    pub fn with_dek_cache(mut self, capacity: usize, observer: Option<LookupObserver>) -> Self {
        self.dek_cache = dek_cache::DekCache::new(capacity, observer);
        self
    }

    /// Hits, misses and size of the unwrapped-DEK cache.
    pub fn dek_cache_stats(&self) -> DekCacheStats {
        self.dek_cache.stats()
    }

    /// Drops cached DEKs unwrapped more than `max_age` ago (see `DekCache::forget_older_than`).
    pub fn forget_deks_cached_before(&self, max_age: std::time::Duration) -> usize {
        self.dek_cache.forget_older_than(max_age)
    }

    /// Drops a subject's cached DEKs: the subject was erased. (Its record is gone, so no
    /// read would reach them; this takes the key material out of memory now.)
    pub fn forget_subject_keys(&self, tenant: &TenantId, subject: &SubjectId) {
        self.dek_cache.forget_subject(tenant, subject);
    }

    /// Wraps a DEK under version `version` of the tenant's KEK, counting the use. If that
    /// version reached its limit the tenant KEK is rotated first and the DEK is wrapped
    /// under the new version (the returned wrap names it).
    pub(super) fn wrap_dek(
        &self, tenant: &TenantId, version: u32, subject: &SubjectId, dek: &Key<Dek>,
    ) -> Result<Sealed, KeyringError> {
        let mut version = version;
        for _ in 0..3 {
            match self
                .usage
                .count_kek_wrap(tenant, version, self.store.as_ref())
            {
                Ok(()) => {
                    let kek = self.kek(tenant, version)?;
                    return Ok(kek.wrap(dek, &dek_aad(tenant, subject))?);
                }
                Err(KeyringError::LimitReached(_)) => {
                    tracing::info!(%tenant, version, "tenant key reached its usage limit; rotating");
                    version = self.rotate_tenant(tenant)?.1;
                }
                Err(e) => return Err(e),
            }
        }
        Err(KeyringError::Contended("tenant key"))
    }

    /// A fresh DEK for a new subject and the record that stores it wrapped, with `seals`
    /// encryptions reserved (the record and the values it seals are stored together, so
    /// the reservation is durable exactly when they are).
    pub fn new_subject(
        &self, tenant: &TenantRecord, subject: &SubjectId, now: Timestamp, seals: usize,
    ) -> Result<(Key<Dek>, SubjectRecord), KeyringError> {
        let seals = self.usage.check_request(seals)?;
        let dek: Key<Dek> = self.generate(1)?;
        let wrapped_dek = self.wrap_dek(&tenant.id, tenant.kek_version, subject, &dek)?;
        let record = SubjectRecord {
            created_at: now,
            dek_version: dek.version(),
            wrapped_dek,
            categories: 0,
            index_entries: Vec::new(),
            older_deks: Vec::new(),
            dek_reserved: seals,
            state_seq: 0,
        };
        Ok((dek, record))
    }

    /// A subject's current DEK, from the cache or unwrapped. `record` must be the subject
    /// record just read from the store: the cache only saves the unwrap of its wrap.
    pub fn subject_dek(
        &self, tenant: &TenantId, subject: &SubjectId, record: &SubjectRecord,
    ) -> Result<Arc<Key<Dek>>, KeyringError> {
        self.cached_dek(tenant, subject, record.dek_version, &record.wrapped_dek)
    }

    /// The DEK of `dek_version` unwrapped from `wrapped`, from the cache if it holds exactly
    /// that wrap; otherwise unwrapped, and cached if the store still holds the wrap.
    pub(super) fn cached_dek(
        &self, tenant: &TenantId, subject: &SubjectId, dek_version: u32, wrapped: &Sealed,
    ) -> Result<Arc<Key<Dek>>, KeyringError> {
        let ticket = match self.dek_cache.get(tenant, subject, dek_version, wrapped) {
            Ok(key) => return Ok(key),
            Err(ticket) => ticket,
        };
        let key = Arc::new(self.unwrap_dek(tenant, subject, dek_version, wrapped)?);
        if self.dek_cache.capacity() > 0 {
            // The caller read the record before the ticket was taken: if an erasure or a
            // re-key committed in between, the store no longer holds this wrap and nothing is
            // cached; if one commits after this check, its invalidation voids the ticket.
            let still_stored = self
                .store
                .subject(tenant, subject)
                .ok()
                .flatten()
                .is_some_and(|rec| rec.wrapped_dek_version(dek_version) == Some(wrapped));
            if still_stored {
                self.dek_cache
                    .insert(ticket, tenant, subject, wrapped, key.clone());
            }
        }
        Ok(key)
    }

    pub(super) fn unwrap_dek(
        &self, tenant: &TenantId, subject: &SubjectId, dek_version: u32, wrapped: &Sealed,
    ) -> Result<Key<Dek>, KeyringError> {
        let kek = self.kek(tenant, wrapped.key_version())?;
        Ok(kek.unwrap_key(wrapped, dek_version, &dek_aad(tenant, subject))?)
    }
}
