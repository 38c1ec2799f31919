//! Tenant KEK versions and subject DEK versions: rotate, re-wrap, destroy, shred.
//!
//! The invariant that makes destruction safe: a transaction that stores a DEK wrapped under
//! KEK version `v` checks, inside the transaction, that `v` is the tenant's current version
//! (`Store::put_fields` for new subjects, `Store::update_subjects` for everything else).
//! Once a rotation has committed, the old version never gains a wrap again, so a scan that
//! starts after the rotation and finds no DEK under it proves nothing needs it any more.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::crypto::{Dek, Kek, Key, Sealed};
use crate::domain::{SubjectId, TenantId};
use crate::storage::{
    KeyChange, KeyVersionInfo, OlderDek, RewrapJob, SubjectRecord, TenantKeyState, TenantRecord,
};

use super::usage::SealGrant;
use super::{dek_aad, kek_aad, Keyring, KeyringError};

/// Subjects read per page when counting.
const COUNT_PAGE: usize = 2000;
/// Subjects re-wrapped per store transaction. sled commits a transaction under a global
/// lock, so a small one keeps the pause it imposes on live requests short.
const REWRAP_TX: usize = 64;

/// Every DEK version of one subject, unwrapped: opens fields sealed under any of them.
pub struct SubjectDeks {
    deks: Vec<Arc<Key<Dek>>>,
}

impl std::fmt::Debug for SubjectDeks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.deks).finish()
    }
}

impl SubjectDeks {
    /// The DEK of `version` (a field ciphertext names it: `Sealed::key_version`).
    pub fn version(&self, version: u32) -> Option<&Key<Dek>> {
        self.deks
            .iter()
            .find(|k| k.version() == version)
            .map(|k| &**k)
    }
}

/// What one re-wrap batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapBatch {
    /// Subjects examined.
    pub scanned: u64,
    /// Subjects whose DEKs were re-wrapped.
    pub rewrapped: u64,
    /// Subjects that changed while being re-wrapped (a later pass takes them).
    pub stale: u64,
    /// The last subject examined: where the next batch starts.
    pub last: Option<SubjectId>,
    /// True when this batch reached the end of the tenant's subjects.
    pub end_of_pass: bool,
}

/// How many wrapped DEKs each KEK version of a tenant wraps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrapCounts {
    pub subjects: u64,
    /// Wrapped DEKs (current and older DEK versions) by KEK version.
    pub by_kek: BTreeMap<u32, u64>,
}

/// `stored` with the wraps of `new` (by DEK version) in place of its own.
fn with_wraps(stored: &SubjectRecord, new: &[(u32, Sealed)]) -> SubjectRecord {
    let wrap_of = |version: u32, old: &Sealed| {
        new.iter()
            .find(|(v, _)| *v == version)
            .map_or_else(|| old.clone(), |(_, w)| w.clone())
    };
    SubjectRecord {
        wrapped_dek: wrap_of(stored.dek_version, &stored.wrapped_dek),
        older_deks: stored
            .older_deks
            .iter()
            .map(|d| OlderDek {
                version: d.version,
                wrapped: wrap_of(d.version, &d.wrapped),
            })
            .collect(),
        ..stored.clone()
    }
}

impl Keyring {
    /// Every DEK version of a subject, from the cache or unwrapped. `record` must be the
    /// subject record just read from the store.
    pub fn subject_deks(
        &self, tenant: &TenantId, subject: &SubjectId, record: &SubjectRecord,
    ) -> Result<SubjectDeks, KeyringError> {
        let deks = record
            .wrapped_deks()
            .map(|(v, w)| self.cached_dek(tenant, subject, v, w))
            .collect::<Result<_, _>>()?;
        Ok(SubjectDeks { deks })
    }

    /// Asks for `n` seals under the subject's current DEK (see `SealGrant`).
    pub fn reserve_seals(
        &self, tenant: &TenantId, subject: &SubjectId, record: &SubjectRecord, n: usize,
    ) -> Result<SealGrant, KeyringError> {
        self.usage
            .reserve_seals(tenant, subject, record, n, self.store.as_ref())
    }

    /// Tells the counters that the reservation `token` of `SealGrant::Granted` is durable.
    pub fn seals_durable(
        &self, tenant: &TenantId, subject: &SubjectId, dek_version: u32, token: u64,
    ) {
        self.usage
            .seals_durable(tenant, subject, dek_version, token);
    }

    /// Seals counted under a subject's current DEK.
    pub fn dek_encryptions(
        &self, tenant: &TenantId, subject: &SubjectId, rec: &SubjectRecord,
    ) -> u64 {
        self.usage.dek_count(tenant, subject, rec)
    }

    /// Replaces a subject's current DEK (which reached its limit) with a new version. The
    /// old one is kept, wrapped, for the fields it sealed; versions older than it that no
    /// stored field uses any more are dropped (no write can use them again). Returns false
    /// if the record changed meanwhile (read it again).
    pub fn rotate_dek(
        &self, tenant: &TenantRecord, subject: &SubjectId, record: &SubjectRecord,
    ) -> Result<bool, KeyringError> {
        let in_use: BTreeSet<u32> = self
            .store
            .fields(&tenant.id, subject)?
            .iter()
            .map(|f| f.sealed.key_version())
            .collect();
        let next = record
            .wrapped_deks()
            .map(|(v, _)| v)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or(KeyringError::LimitReached("no DEK version left".into()))?;
        let dek: Key<Dek> = self.generate(next)?;
        let wrapped = self.wrap_dek(&tenant.id, tenant.kek_version, subject, &dek)?;
        let kek_version = wrapped.key_version();
        let retired = record.dek_version;
        let changed = self.store.update_subjects(
            &tenant.id,
            std::slice::from_ref(subject),
            &|_, stored, current| {
                if current != kek_version || !stored.same_key(record) {
                    return None;
                }
                let mut older_deks: Vec<OlderDek> = stored
                    .older_deks
                    .iter()
                    .filter(|d| in_use.contains(&d.version))
                    .cloned()
                    .collect();
                older_deks.push(OlderDek {
                    version: retired,
                    wrapped: stored.wrapped_dek.clone(),
                });
                Some(SubjectRecord {
                    dek_version: next,
                    wrapped_dek: wrapped.clone(),
                    older_deks,
                    dek_reserved: 0,
                    ..stored.clone()
                })
            },
        )?;
        let changed = changed.first().copied().unwrap_or(false);
        if changed {
            self.dek_cache.forget_subject(&tenant.id, subject);
        }
        Ok(changed)
    }

    /// The tenant's record and key state (its initial state if none was stored yet).
    pub fn tenant_keys(
        &self, tenant: &TenantId,
    ) -> Result<(TenantRecord, TenantKeyState), KeyringError> {
        let record = self
            .store
            .tenant(tenant)?
            .ok_or(KeyringError::Missing("tenant"))?;
        let state = self
            .store
            .tenant_keys(tenant)?
            .unwrap_or_else(|| TenantKeyState::initial(&record));
        Ok((record, state))
    }

    /// Encryptions counted under a tenant KEK version with `reserved` persisted.
    pub fn kek_encryptions(&self, tenant: &TenantId, version: u32, reserved: u64) -> u64 {
        self.usage.kek_count(tenant, version, reserved)
    }

    /// Adds a new KEK version, makes it current and starts a re-wrap job towards it (a job
    /// still running is re-targeted). Returns (previous, new) version.
    pub fn rotate_tenant(&self, tenant: &TenantId) -> Result<(u32, u32), KeyringError> {
        for _ in 0..5 {
            let (record, state) = self.tenant_keys(tenant)?;
            if record.shredded_at.is_some() {
                return Err(KeyringError::Shredded);
            }
            let next = state
                .versions
                .iter()
                .map(|v| v.version)
                .chain(std::iter::once(record.kek_version))
                .max()
                .unwrap_or(0)
                .checked_add(1)
                .ok_or(KeyringError::LimitReached("no KEK version left".into()))?;
            let kek: Key<Kek> = self.generate(next)?;
            let now = self.clock.now();
            let (fence, root) = self.root_for_wrap()?;
            let wrapped = self.wrap_under_root(&root, &kek, &kek_aad(tenant))?;
            let previous = record.kek_version;
            let change = self.store.update_tenant_keys(tenant, &|rec, st| {
                if rec.shredded_at.is_some()
                    || rec.kek_version != previous
                    || st.versions.iter().any(|v| v.version >= next)
                {
                    return None;
                }
                let mut st = st.clone();
                st.versions.push(KeyVersionInfo::new(next, now));
                st.rewrap = Some(RewrapJob {
                    target: next,
                    started_at: now,
                    cursor: None,
                    scanned: 0,
                    rewrapped: 0,
                    total: 0,
                    passes: 0,
                });
                Some(KeyChange {
                    tenant: TenantRecord {
                        kek_version: next,
                        ..rec.clone()
                    },
                    state: st,
                    put_keks: vec![(next, wrapped.clone())],
                    delete_keks: Vec::new(),
                    mark_epoch: false,
                })
            })?;
            drop(root);
            drop(fence);
            if change.is_some() {
                if let Ok(mut map) = self.keks.write() {
                    map.insert((tenant.clone(), next), Arc::new(kek));
                }
                // Every DEK of the tenant is about to be re-wrapped.
                self.dek_cache.forget_tenant(tenant);
                tracing::info!(%tenant, previous, version = next, "tenant key rotated; re-wrap started");
                return Ok((previous, next));
            }
        }
        Err(KeyringError::Contended("tenant key"))
    }

    /// Re-wraps the DEKs of up to `limit` subjects after `after` under KEK version
    /// `target`. Subjects already under it are skipped; subjects that change meanwhile are
    /// left for a later pass. If `target` is no longer current nothing is written.
    pub fn rewrap_batch(
        &self, tenant: &TenantId, target: u32, after: Option<&SubjectId>, limit: usize,
    ) -> Result<RewrapBatch, KeyringError> {
        let page = self.store.subject_records(tenant, after, limit)?;
        let mut batch = RewrapBatch {
            scanned: page.len() as u64,
            last: page.last().map(|(id, _)| id.clone()),
            end_of_pass: page.len() < limit,
            ..RewrapBatch::default()
        };
        let mut plans: HashMap<SubjectId, (SubjectRecord, Vec<(u32, Sealed)>)> = HashMap::new();
        for (id, rec) in page {
            if rec.wrapped_deks().all(|(_, w)| w.key_version() == target) {
                continue;
            }
            let mut wraps = Vec::new();
            for (version, wrapped) in rec.wrapped_deks() {
                if wrapped.key_version() == target {
                    continue;
                }
                let dek = self.unwrap_dek(tenant, &id, version, wrapped)?;
                self.usage
                    .count_kek_wrap(tenant, target, self.store.as_ref())?;
                let kek = self.kek(tenant, target)?;
                wraps.push((version, kek.wrap(&dek, &dek_aad(tenant, &id))?));
            }
            plans.insert(id, (rec, wraps));
        }
        if plans.is_empty() {
            return Ok(batch);
        }
        let ids: Vec<SubjectId> = plans.keys().cloned().collect();
        for chunk in ids.chunks(REWRAP_TX) {
            let changed = self
                .store
                .update_subjects(tenant, chunk, &|id, stored, current| {
                    let (read, wraps) = plans.get(id)?;
                    (current == target && stored.same_deks(read)).then(|| with_wraps(stored, wraps))
                })?;
            let done = changed.iter().filter(|c| **c).count() as u64;
            batch.rewrapped += done;
            batch.stale += changed.len() as u64 - done;
        }
        Ok(batch)
    }

    /// Counts the tenant's wrapped DEKs by KEK version (a scan of every subject record).
    pub fn count_wraps(&self, tenant: &TenantId) -> Result<WrapCounts, KeyringError> {
        let mut counts = WrapCounts::default();
        let mut after: Option<SubjectId> = None;
        loop {
            let page = self
                .store
                .subject_records(tenant, after.as_ref(), COUNT_PAGE)?;
            for (_, rec) in &page {
                counts.subjects += 1;
                for (_, w) in rec.wrapped_deks() {
                    *counts.by_kek.entry(w.key_version()).or_default() += 1;
                }
            }
            if page.len() < COUNT_PAGE {
                return Ok(counts);
            }
            after = page.last().map(|(id, _)| id.clone());
        }
    }

    /// The KEK versions the store holds for a tenant.
    fn stored_kek_versions(&self, tenant: &TenantId) -> Result<Vec<u32>, KeyringError> {
        Ok(self
            .store
            .keks(tenant)?
            .into_iter()
            .map(|(v, _)| v)
            .collect())
    }

    /// Saves a job's progress, if the job is still the tenant's current one.
    pub fn save_rewrap_progress(
        &self, tenant: &TenantId, job: &RewrapJob,
    ) -> Result<bool, KeyringError> {
        let change = self.store.update_tenant_keys(tenant, &|rec, st| {
            if st.rewrap.as_ref().map(|j| j.target) != Some(job.target) {
                return None;
            }
            let mut st = st.clone();
            st.rewrap = Some(job.clone());
            Some(KeyChange::records(rec.clone(), st))
        })?;
        Ok(change.is_some())
    }

    /// Ends the re-wrap towards `target` by destroying every other KEK version: deletes
    /// them from the store and the cache. The caller has just counted no DEK under them
    /// (after the rotation to `target` committed). Returns the versions destroyed, or
    /// `None` if `target` is no longer current (a newer rotation took over).
    pub fn finish_rewrap(
        &self, tenant: &TenantId, target: u32,
    ) -> Result<Option<Vec<u32>>, KeyringError> {
        let now = self.clock.now();
        let stored = self.stored_kek_versions(tenant)?;
        let change = self.store.update_tenant_keys(tenant, &|rec, st| {
            if rec.kek_version != target || rec.shredded_at.is_some() {
                return None;
            }
            let mut st = st.clone();
            let old: Vec<u32> = st
                .live_versions()
                .map(|v| v.version)
                .chain(stored.iter().copied())
                .filter(|v| *v != target)
                .collect::<BTreeSet<u32>>()
                .into_iter()
                .collect();
            for v in &old {
                st.destroy(*v, now);
            }
            st.rewrap = None;
            Some(KeyChange {
                tenant: rec.clone(),
                state: st,
                put_keks: Vec::new(),
                delete_keks: old,
                mark_epoch: false,
            })
        })?;
        let Some(change) = change else {
            return Ok(None);
        };
        let gone = change.delete_keks;
        self.evict_keks(tenant, |v| gone.contains(&v));
        self.dek_cache.forget_tenant(tenant);
        self.announce_destroyed();
        Ok(Some(gone))
    }

    /// Destroys every KEK version of a tenant at once: all its subjects become unreadable.
    /// Marks the tenant for the next key epoch (stale copies of the KEKs, wrapped by the
    /// root key, die with the root version). Destroys its index keys and deletes its
    /// blind-index entries (again if it was shredded before). Returns the versions destroyed.
    pub fn shred_tenant(&self, tenant: &TenantId) -> Result<Vec<u32>, KeyringError> {
        let now = self.clock.now();
        let stored = self.stored_kek_versions(tenant)?;
        let change = self.store.update_tenant_keys(tenant, &|rec, st| {
            if rec.shredded_at.is_some() {
                return None;
            }
            let mut st = st.clone();
            let mut live: BTreeSet<u32> = st.live_versions().map(|v| v.version).collect();
            live.extend(stored.iter().copied());
            live.insert(rec.kek_version);
            for v in &live {
                st.destroy(*v, now);
            }
            st.rewrap = None;
            Some(KeyChange {
                tenant: TenantRecord {
                    shredded_at: Some(now),
                    ..rec.clone()
                },
                state: st,
                put_keks: Vec::new(),
                delete_keks: live.into_iter().collect(),
                mark_epoch: true,
            })
        })?;
        self.evict_keks(tenant, |_| true);
        self.dek_cache.forget_tenant(tenant);
        self.usage.forget_tenant(tenant);
        // Nothing of the tenant's blind index outlives it: its keys and entries go too, also
        // when a shred that stopped in between is run again.
        self.destroy_index_keys(tenant)?;
        self.store.clear_index(tenant)?;
        self.announce_destroyed();
        match change {
            Some(c) => Ok(c.delete_keks),
            None => Err(KeyringError::Shredded),
        }
    }
}
