//! The sled side of writing fields: each write reads what its rule in `rules` needs and
//! applies the rule's plan in the same transaction; and the field and expiry scans.

use std::ops::Bound::{Excluded, Unbounded};

use sled::transaction::{Transactional, TransactionalTree};

use crate::codec::{Reader, Writer};
use crate::domain::{FieldName, SubjectId, TenantId, Timestamp};
use crate::storage::records::{
    FieldRecord, IdempotencyRecord, SubjectRecord, SubjectWrite, Written,
};
use crate::storage::rules::{self, Changes, PutReads};
use crate::storage::{StoreError, StoreResult};

use super::{
    abort, backend, expiry_key, field_key, get, idempotency_expiry_key, idempotency_key, keys,
    subject_key, tx_error, SledStore, TenantTrees, TxResult,
};

/// A tenant's trees that hold a subject's fields and what points at them, inside a
/// transaction.
pub(super) struct FieldTrees<'a> {
    pub subjects: &'a TransactionalTree,
    pub fields: &'a TransactionalTree,
    pub index: &'a TransactionalTree,
    pub expiry: &'a TransactionalTree,
}

impl FieldTrees<'_> {
    /// Applies a rule's changes of `subject`'s records.
    fn apply(&self, subject: &SubjectId, changes: &Changes) -> TxResult<()> {
        for entry in &changes.index.removed {
            self.index.remove(entry.as_slice())?;
        }
        for entry in &changes.index.added {
            self.index.insert(entry.as_slice(), &[] as &[u8])?;
        }
        for (at, name) in &changes.expiry.removed {
            self.expiry.remove(expiry_key(*at, subject, name))?;
        }
        for (at, name) in &changes.expiry.added {
            self.expiry
                .insert(expiry_key(*at, subject, name), &[] as &[u8])?;
        }
        for name in &changes.delete_fields {
            self.fields.remove(field_key(subject, name))?;
        }
        for field in &changes.put_fields {
            self.fields
                .insert(field_key(subject, &field.meta.name), field.encode())?;
        }
        if let Some(record) = &changes.subject {
            self.subjects
                .insert(subject_key(subject), record.encode())?;
        }
        Ok(())
    }

    fn subject(&self, subject: &SubjectId) -> TxResult<Option<SubjectRecord>> {
        get(self.subjects, &subject_key(subject), SubjectRecord::decode)
    }

    fn field(&self, subject: &SubjectId, name: &FieldName) -> TxResult<Option<FieldRecord>> {
        get(self.fields, &field_key(subject, name), FieldRecord::decode)
    }
}

/// `Store::put_fields` on the trees of the subject's tenant (`tenants`: the tenants tree,
/// for the current KEK version).
pub(super) fn put(
    tenants: &sled::Tree, trees: &TenantTrees, tenant: &TenantId, subject: &SubjectId,
    write: &SubjectWrite,
) -> StoreResult<Vec<Written>> {
    let tkey = tenant.as_str().as_bytes();
    let skey = subject_key(subject);
    let record_key = write
        .idempotency
        .as_ref()
        .map(|claim| idempotency_key(subject, &claim.scope));
    (
        tenants,
        &trees.subjects,
        &trees.fields,
        &trees.tombstones,
        &trees.index,
        &trees.expiry,
        &trees.idempotency,
        &trees.idempotency_expiry,
    )
        .transaction(
            |(tenants, subjects, fields, tombstones, index, expiry, idem, idem_expiry)| {
                // Pure: this closure may run again on conflict, so it only reads and writes
                // the transaction's trees.
                let tx = FieldTrees {
                    subjects,
                    fields,
                    index,
                    expiry,
                };
                let erased = tombstones.get(&skey)?.is_some();
                let stored = tx.subject(subject)?;
                let current_kek = match (erased, &stored) {
                    (false, None) => keys::current_kek(tenants, tkey)?,
                    _ => None,
                };
                let previous = write
                    .fields
                    .iter()
                    .map(|f| tx.field(subject, &f.name))
                    .collect::<TxResult<_>>()?;
                let replay = match &record_key {
                    Some(key) => get(idem, key, IdempotencyRecord::decode)?,
                    None => None,
                };
                let reads = PutReads {
                    erased,
                    stored,
                    current_kek,
                    previous,
                    replay,
                };
                let plan = rules::put(reads, write).map_err(abort)?;
                tx.apply(subject, &plan.changes)?;
                if let (Some(change), Some(key)) = (&plan.idempotency, &record_key) {
                    if let Some(old) = change.replaces {
                        idem_expiry.remove(idempotency_expiry_key(old, key))?;
                    }
                    idem.insert(key.as_slice(), change.record.encode())?;
                    idem_expiry.insert(
                        idempotency_expiry_key(change.record.expires_at, key),
                        &[] as &[u8],
                    )?;
                }
                Ok(plan.written)
            },
        )
        .map_err(tx_error)
}

/// `Store::delete_fields`, in a transaction.
pub(super) fn delete(
    tx: &FieldTrees<'_>, subject: &SubjectId, names: &[FieldName],
) -> TxResult<u32> {
    let record = tx.subject(subject)?;
    let stored = names
        .iter()
        .map(|name| tx.field(subject, name))
        .collect::<TxResult<_>>()?;
    let (changes, deleted) = rules::delete_fields(record, names, stored);
    tx.apply(subject, &changes)?;
    Ok(deleted)
}

/// `Store::delete_expired`, in a transaction.
pub(super) fn expire(
    tx: &FieldTrees<'_>, subject: &SubjectId, name: &FieldName, at: Timestamp,
) -> TxResult<bool> {
    let field = tx.field(subject, name)?;
    let record = tx.subject(subject)?;
    let (changes, deleted) = rules::delete_expired(name, at, field, record);
    tx.apply(subject, &changes)?;
    Ok(deleted)
}

/// `Store::reindex_field`, in a transaction.
pub(super) fn reindex(
    tx: &FieldTrees<'_>, subject: &SubjectId, name: &FieldName, entry: &[u8],
) -> TxResult<()> {
    let changes = rules::reindex(tx.subject(subject)?, tx.field(subject, name)?, entry);
    tx.apply(subject, &changes)
}

impl SledStore {
    /// Runs `body` in a transaction over the tenant's field trees.
    pub(super) fn field_tx<T>(
        &self, tenant: &TenantId, body: impl Fn(&FieldTrees<'_>) -> TxResult<T>,
    ) -> StoreResult<T> {
        let trees = self.existing_trees(tenant)?;
        (&trees.subjects, &trees.fields, &trees.index, &trees.expiry)
            .transaction(|(subjects, fields, index, expiry)| {
                body(&FieldTrees {
                    subjects,
                    fields,
                    index,
                    expiry,
                })
            })
            .map_err(tx_error)
    }

    pub(super) fn field_page(
        &self, tenant: &TenantId, subject: &SubjectId, after: Option<&FieldName>, limit: usize,
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

    pub(super) fn expiry_page(
        &self, tenant: &TenantId, now: Timestamp, limit: usize,
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
}

/// `Store::prune_idempotency`: the records whose expiry entry is due, each removed with its
/// entry in one transaction unless a write replaced it meanwhile (another expiry).
pub(super) fn prune_idempotency(
    trees: &TenantTrees, now: Timestamp, limit: usize,
) -> StoreResult<usize> {
    let end = Writer::new().u64(now.0.saturating_add(1)).finish();
    let due: Vec<sled::IVec> = trees
        .idempotency_expiry
        .range(..end)
        .keys()
        .take(limit)
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    for entry in &due {
        let mut r = Reader::new(entry, "idempotency expiry key");
        let at = Timestamp(r.u64()?);
        let key = r.bytes()?.to_vec();
        (&trees.idempotency, &trees.idempotency_expiry)
            .transaction(|(idem, idem_expiry)| {
                idem_expiry.remove(entry.as_ref())?;
                let current = get(idem, &key, IdempotencyRecord::decode)?;
                if current.is_some_and(|c| c.expires_at == at) {
                    idem.remove(key.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
    }
    Ok(due.len())
}

/// Deletes every idempotency record of an (erased) subject, with its expiry entry.
pub(super) fn drop_idempotency(trees: &TenantTrees, subject: &SubjectId) -> StoreResult<()> {
    let mut records = sled::Batch::default();
    let mut expiries = sled::Batch::default();
    for kv in trees.idempotency.scan_prefix(subject_key(subject)) {
        let (key, value) = kv.map_err(backend)?;
        let record = IdempotencyRecord::decode(&value)?;
        expiries.remove(idempotency_expiry_key(record.expires_at, &key));
        records.remove(key);
    }
    trees
        .idempotency_expiry
        .apply_batch(expiries)
        .map_err(backend)?;
    trees.idempotency.apply_batch(records).map_err(backend)
}
