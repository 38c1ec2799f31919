//! The sled side of erasure: the erasure transaction (its decisions are `rules::erase`),
//! purging an erased subject's field ciphertexts, legal holds and key epoch marks.

use sled::transaction::{Transactional, TransactionalTree};

use crate::domain::{SubjectId, TenantId, Timestamp};
use crate::storage::records::{Erasure, SubjectRecord, Tombstone};
use crate::storage::{rules, LegacyPage, LegacySeal, StoreError, StoreResult, TombstoneSeal};

use super::{
    backend, decode_subject_key, decode_tenant_key, get, legal_hold_key, subject_key, tx_error,
    SledStore, TxResult,
};

/// Inside a transaction: counts one more erasure of the tenant `tenant` since its last key
/// epoch.
pub(super) fn mark_epoch(pending: &TransactionalTree, tenant: &[u8]) -> TxResult<()> {
    let count = pending
        .get(tenant)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes);
    pending.insert(tenant, &(count + 1).to_be_bytes())?;
    Ok(())
}

impl SledStore {
    pub(super) fn erase(
        &self, tenant: &TenantId, subject: &SubjectId, tombstone: &Tombstone,
        seal: &TombstoneSeal<'_>,
    ) -> StoreResult<Erasure> {
        let trees = self.existing_trees(tenant)?;
        let skey = subject_key(subject);
        let shadow = subject.legal_shadow();
        let shadow_key = subject_key(&shadow);
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
                let earlier = get(tombstones, &skey, Tombstone::decode)?;
                let record = get(subjects, &skey, SubjectRecord::decode)?;
                let shadow_record = get(subjects, &shadow_key, SubjectRecord::decode)?;
                let (answer, plan) =
                    rules::erase(earlier, record, shadow_record.as_ref(), tombstone, seal);
                let Some(plan) = plan else {
                    return Ok(answer);
                };
                subjects.remove(skey.as_slice())?;
                if let Some(rec) = &plan.shadow {
                    subjects.insert(shadow_key.as_slice(), rec.encode())?;
                }
                if let Some(until) = plan.hold_until {
                    holds.insert(legal_hold_key(until, tenant, &shadow), &[] as &[u8])?;
                }
                tombstones.insert(skey.as_slice(), plan.tombstone.encode())?;
                state.remove(skey.as_slice())?;
                for entry in &plan.unindex {
                    index.remove(entry.as_slice())?;
                }
                mark_epoch(pending, tkey)?;
                Ok(answer)
            })
            .map_err(tx_error)
    }

    pub(super) fn purge(
        &self, tenant: &TenantId, subject: &SubjectId, limit: usize,
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
            super::fields::drop_idempotency(&trees, subject)?;
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

    pub(super) fn seal_legacy(
        &self, tenant: &TenantId, after: Option<&SubjectId>, limit: usize, seal: &LegacySeal<'_>,
    ) -> StoreResult<LegacyPage> {
        use std::ops::Bound::{Excluded, Unbounded};
        let tombstones = &self.existing_trees(tenant)?.tombstones;
        let page = match after {
            Some(s) => tombstones.range::<Vec<u8>, _>((Excluded(subject_key(s)), Unbounded)),
            None => tombstones.iter(),
        };
        let mut done = LegacyPage::default();
        for kv in page.take(limit) {
            let (key, mut current) = kv.map_err(backend)?;
            let subject = decode_subject_key(&key)?;
            // Compare-and-swap: the purger may set `purged` meanwhile; then seal its copy.
            loop {
                let stone = Tombstone::decode(&current)?;
                if stone.seal.is_some() {
                    break;
                }
                let sealed = seal(&subject, stone).encode();
                match tombstones
                    .compare_and_swap(&key, Some(&current), Some(sealed))
                    .map_err(backend)?
                {
                    Ok(()) => {
                        done.sealed += 1;
                        break;
                    }
                    Err(changed) => match changed.current {
                        Some(now) => current = now,
                        None => break,
                    },
                }
            }
            done.last = Some(subject);
        }
        Ok(done)
    }

    pub(super) fn not_purged(&self) -> StoreResult<Vec<(TenantId, SubjectId)>> {
        let mut out = Vec::new();
        for tenant in self.tenant_page(None, usize::MAX)? {
            for kv in self.trees(&tenant.id)?.tombstones.iter() {
                let (k, v) = kv.map_err(backend)?;
                if !Tombstone::decode(&v)?.purged {
                    out.push((tenant.id.clone(), decode_subject_key(&k)?));
                }
            }
        }
        Ok(out)
    }

    pub(super) fn holds_due(
        &self, now: Timestamp,
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

    pub(super) fn epoch_marks(&self) -> StoreResult<Vec<(TenantId, u64)>> {
        self.epoch_pending
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                let id = decode_tenant_key(&k, "epoch mark")?;
                let count = <[u8; 8]>::try_from(v.as_ref())
                    .map_err(|_| StoreError::Corrupt("epoch mark"))?;
                Ok((id, u64::from_be_bytes(count)))
            })
            .collect()
    }

    pub(super) fn clear_epoch_mark(&self, tenant: &TenantId, seen: u64) -> StoreResult<()> {
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
}
