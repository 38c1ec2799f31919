//! The sled side of key management: wrapped KEK versions, tenant key states, and the
//! transactions that rotate, re-wrap and destroy keys.

use sled::transaction::{Transactional, TransactionalTree};

use crate::crypto::Sealed;
use crate::domain::{SubjectId, TenantId};
use crate::storage::records::{SubjectRecord, TenantRecord};
use crate::storage::{
    KeyChange, KeyUpdate, StoreError, StoreResult, SubjectUpdate, TenantKeyState,
};

use super::{
    abort, backend, decode_subject_key, decode_tenant_key, erasure, kek_key, subject_key, tx_error,
    SledStore, TxResult,
};
use crate::codec::Writer;

/// Inside a transaction: the tenant's current KEK version, `None` if the tenant is missing
/// or shredded (no wrap may be stored then).
pub(super) fn current_kek(tenants: &TransactionalTree, tenant: &[u8]) -> TxResult<Option<u32>> {
    let Some(bytes) = tenants.get(tenant)? else {
        return Ok(None);
    };
    let rec = TenantRecord::decode(&bytes).map_err(abort)?;
    Ok(rec.shredded_at.is_none().then_some(rec.kek_version))
}

impl SledStore {
    pub(super) fn tenant_keks(&self, tenant: &TenantId) -> StoreResult<Vec<(u32, Sealed)>> {
        let prefix = Writer::new().str(tenant.as_str()).finish();
        self.keks
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                let version = k
                    .get(prefix.len()..)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(u32::from_be_bytes)
                    .ok_or(StoreError::Corrupt("KEK key"))?;
                let wrapped = Sealed::decode(&v).map_err(|_| StoreError::Corrupt("wrapped KEK"))?;
                Ok((version, wrapped))
            })
            .collect()
    }

    pub(super) fn every_tenant_keys(&self) -> StoreResult<Vec<(TenantId, TenantKeyState)>> {
        self.key_state
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                let id = decode_tenant_key(&k, "key state key")?;
                Ok((id, TenantKeyState::decode(&v)?))
            })
            .collect()
    }

    pub(super) fn apply_key_update(
        &self, tenant: &TenantId, update: &KeyUpdate<'_>,
    ) -> StoreResult<Option<KeyChange>> {
        let tkey = tenant.as_str().as_bytes();
        (
            &self.tenants,
            &self.keks,
            &self.key_state,
            &self.epoch_pending,
        )
            .transaction(|(tenants, keks, states, pending)| {
                // Pure: reads and writes only the transaction's trees; `update` is pure too.
                let Some(bytes) = tenants.get(tkey)? else {
                    return Err(abort(StoreError::NoTenant));
                };
                let record = TenantRecord::decode(&bytes).map_err(abort)?;
                let state = match states.get(tkey)? {
                    Some(s) => TenantKeyState::decode(&s).map_err(abort)?,
                    None => TenantKeyState::initial(&record),
                };
                let Some(change) = update(&record, &state) else {
                    return Ok(None);
                };
                tenants.insert(tkey, change.tenant.encode())?;
                states.insert(tkey, change.state.encode())?;
                for (version, wrapped) in &change.put_keks {
                    keks.insert(kek_key(tenant, *version), wrapped.encode())?;
                }
                for version in &change.delete_keks {
                    keks.remove(kek_key(tenant, *version))?;
                }
                if change.mark_epoch {
                    erasure::mark_epoch(pending, tkey)?;
                }
                Ok(Some(change))
            })
            .map_err(tx_error)
    }

    pub(super) fn subject_page(
        &self, tenant: &TenantId, after: Option<&SubjectId>, limit: usize,
    ) -> StoreResult<Vec<(SubjectId, SubjectRecord)>> {
        let trees = self.existing_trees(tenant)?;
        let iter = match after {
            Some(a) => trees.subjects.range((
                std::ops::Bound::Excluded(subject_key(a)),
                std::ops::Bound::Unbounded,
            )),
            None => trees.subjects.iter(),
        };
        iter.take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                Ok((decode_subject_key(&k)?, SubjectRecord::decode(&v)?))
            })
            .collect()
    }

    pub(super) fn apply_subject_update(
        &self, tenant: &TenantId, subjects: &[SubjectId], update: &SubjectUpdate<'_>,
    ) -> StoreResult<Vec<bool>> {
        let trees = self.existing_trees(tenant)?;
        let tkey = tenant.as_str().as_bytes();
        let keys: Vec<Vec<u8>> = subjects.iter().map(subject_key).collect();
        (&self.tenants, &trees.subjects)
            .transaction(|(tenants, records)| {
                // Pure: `update` only computes; the writes go through the transaction.
                let Some(current) = current_kek(tenants, tkey)? else {
                    return Ok(vec![false; subjects.len()]);
                };
                let mut changed = Vec::with_capacity(subjects.len());
                for (id, key) in subjects.iter().zip(&keys) {
                    let Some(bytes) = records.get(key.as_slice())? else {
                        changed.push(false);
                        continue;
                    };
                    let stored = SubjectRecord::decode(&bytes).map_err(abort)?;
                    match update(id, &stored, current) {
                        Some(new) => {
                            records.insert(key.as_slice(), new.encode())?;
                            changed.push(true);
                        }
                        None => changed.push(false),
                    }
                }
                Ok(changed)
            })
            .map_err(tx_error)
    }
}
