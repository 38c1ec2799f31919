//! The storage rules, written once for every backend: what a put of fields, a deletion of
//! fields, an expiry deletion, a re-index and an erasure change in the store.
//!
//! Each function here is pure: it takes the records a backend read inside its transaction
//! and returns a plan, plain data that says which records to write or delete, which
//! blind-index and expiry entries to add or remove, which marks to set. The backend applies
//! the plan in the same transaction, in its own way (a sled transaction, PostgreSQL
//! statements). A sled transaction may run its closure again on a conflict, and PostgreSQL
//! transactions are retried on serialization failures: a rule has no side effects, so
//! running it again with what was read again is always right.

use crate::domain::{FieldName, Timestamp};

use super::records::{
    category_bit, Erasure, FieldRecord, IdempotencyRecord, StateRecord, SubjectRecord,
    SubjectWrite, Tombstone, Written, IDEMPOTENCY_HASH_LEN,
};
use super::{StateUpdate, StoreError, StoreResult, TombstoneSeal};

/// Keys a change adds and removes. A key is never in both lists: the last of an add and a
/// remove of one key wins, so a backend may apply the removals and the additions in any
/// order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entries<K> {
    pub added: Vec<K>,
    pub removed: Vec<K>,
}

impl<K> Default for Entries<K> {
    fn default() -> Self {
        Self {
            added: Vec::new(),
            removed: Vec::new(),
        }
    }
}

impl<K: PartialEq> Entries<K> {
    fn add(&mut self, key: K) {
        self.removed.retain(|k| *k != key);
        if !self.added.contains(&key) {
            self.added.push(key);
        }
    }

    fn remove(&mut self, key: K) {
        self.added.retain(|k| *k != key);
        if !self.removed.contains(&key) {
            self.removed.push(key);
        }
    }
}

/// What one operation changes in one subject's records. Empty parts change nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// The subject record to store in place of the stored one.
    pub subject: Option<SubjectRecord>,
    /// Field records to store, at most one per name.
    pub put_fields: Vec<FieldRecord>,
    /// Names of field records to delete.
    pub delete_fields: Vec<FieldName>,
    /// Blind-index entry keys.
    pub index: Entries<Vec<u8>>,
    /// Expiry entries of the subject's fields: (expiry time, field name).
    pub expiry: Entries<(Timestamp, FieldName)>,
}

impl Changes {
    /// Stores `field`, replacing an earlier version of this plan.
    fn put_field(&mut self, field: FieldRecord) {
        self.put_fields.retain(|f| f.meta.name != field.meta.name);
        self.put_fields.push(field);
    }
}

/// Removes a blind-index entry and its mention in the subject record; true if the record
/// mentioned it. An empty entry (a field that is not indexed) changes nothing.
fn unindex(index: &mut Entries<Vec<u8>>, record: &mut SubjectRecord, entry: &[u8]) -> bool {
    if entry.is_empty() {
        return false;
    }
    index.remove(entry.to_vec());
    let before = record.index_entries.len();
    record.index_entries.retain(|e| e != entry);
    record.index_entries.len() != before
}

/// What `Store::put_fields` read of the subject.
#[derive(Debug)]
pub(crate) struct PutReads {
    /// The subject has a tombstone.
    pub erased: bool,
    /// The stored subject record.
    pub stored: Option<SubjectRecord>,
    /// The tenant's current KEK version (`None` once shredded). Only a new subject needs
    /// it: a backend may leave it `None` when `stored` is there.
    pub current_kek: Option<u32>,
    /// The stored record of each field of the write, in the write's order.
    pub previous: Vec<Option<FieldRecord>>,
    /// The idempotency record stored under the write's key (`SubjectWrite::idempotency`),
    /// expired or not; `None` without a key.
    pub replay: Option<IdempotencyRecord>,
}

/// A put's changes and its answer.
#[derive(Debug)]
pub(crate) struct PutPlan {
    pub changes: Changes,
    pub written: Vec<Written>,
    /// The idempotency record to store with the changes.
    pub idempotency: Option<IdempotencyChange>,
}

/// An idempotency record to store under the subject, replacing the expired one of the
/// same scope whose expiry `replaces` gives (a backend that keeps an expiry index drops
/// that entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdempotencyChange {
    pub scope: [u8; IDEMPOTENCY_HASH_LEN],
    pub record: IdempotencyRecord,
    pub replaces: Option<Timestamp>,
}

/// The answer of a request sent again under its idempotency key: the first answer, with
/// nothing written, while the stored record lasts and the request is the same (its
/// fingerprint); `IdempotencyKeyReused` when it is not. `None`: write as usual (no key, no
/// record or an expired one, or an erased subject, which the write refuses). The
/// fingerprint is a MAC under the subject's key, so a request sealed for another key (a
/// racing first write made the subject with its own) is a `Conflict`: sealed again, it
/// compares under the stored key.
fn replay(reads: &PutReads, write: &SubjectWrite) -> StoreResult<Option<PutPlan>> {
    let (Some(claim), Some(stored)) = (&write.idempotency, &reads.replay) else {
        return Ok(None);
    };
    if reads.erased || stored.expires_at <= write.now {
        return Ok(None);
    }
    if !reads
        .stored
        .as_ref()
        .is_some_and(|rec| rec.same_key(&write.subject))
    {
        return Err(StoreError::Conflict);
    }
    if !crate::crypto::mac_eq(&claim.fingerprint, &stored.fingerprint) {
        return Err(StoreError::IdempotencyKeyReused);
    }
    let written = stored
        .written
        .iter()
        .map(|meta| Written {
            meta: meta.clone(),
            previous: None,
            replayed: true,
        })
        .collect();
    Ok(Some(PutPlan {
        changes: Changes::default(),
        written,
        idempotency: None,
    }))
}

/// The subject record a write is stored under: the stored one if it holds the key the
/// fields were sealed under, or the write's own for a new subject whose DEK is wrapped
/// under the current KEK version (a version being retired never gains new wraps, see
/// `TenantRecord`). Anything else is a `Conflict`: the caller seals again. The flag is
/// true when the record is new.
fn put_subject(reads: &mut PutReads, write: &SubjectWrite) -> StoreResult<(SubjectRecord, bool)> {
    if reads.erased {
        return Err(StoreError::Erased);
    }
    match reads.stored.take() {
        None if reads.current_kek == Some(write.subject.wrapped_dek.key_version()) => {
            Ok((write.subject.clone(), true))
        }
        Some(rec) if rec.same_key(&write.subject) => Ok((rec, false)),
        _ => Err(StoreError::Conflict),
    }
}

/// Refuses a write that would replace a stored field of a category the writer may not
/// write (`SubjectWrite::may_replace`): an overwrite changes the old value as much as a
/// deletion does. Decided on what the transaction read, so no racing write slips between.
fn check_replace(write: &SubjectWrite, previous: &[Option<FieldRecord>]) -> StoreResult<()> {
    for old in previous.iter().flatten() {
        if write.may_replace & category_bit(old.meta.category) == 0 {
            return Err(StoreError::NotGranted {
                field: old.meta.name.clone(),
                category: old.meta.category,
            });
        }
    }
    Ok(())
}

/// Refuses the whole write (`VersionMismatch`) when a field's stored version is not the
/// one it expects. Decided on what the backend read inside the write's transaction, so no
/// other write can slip in between the check and the write.
fn check_expected(write: &SubjectWrite, previous: &[Option<FieldRecord>]) -> StoreResult<()> {
    for (f, stored) in write.fields.iter().zip(previous) {
        let stored = stored.as_ref().map_or(0, |p| p.meta.version);
        match f.expected {
            Some(expected) if expected != stored => {
                return Err(StoreError::VersionMismatch {
                    field: f.name.clone(),
                    stored,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// `Store::put_fields`: stores every field of `write` with its version bumped, moves its
/// blind-index and expiry entries, and adds the write's categories to the subject's mask.
/// Refuses (`NotGranted`) to replace a field of a category outside `write.may_replace`.
/// Under an idempotency key, answers a request sent again as the first time (`replay`)
/// and otherwise stores the key's record with the write.
pub(crate) fn put(mut reads: PutReads, write: &SubjectWrite) -> StoreResult<PutPlan> {
    if let Some(plan) = replay(&reads, write)? {
        return Ok(plan);
    }
    let (mut record, mut dirty) = put_subject(&mut reads, write)?;
    check_replace(write, &reads.previous)?;
    check_expected(write, &reads.previous)?;
    let mask = write.categories();
    if record.categories | mask != record.categories {
        record.categories |= mask;
        dirty = true;
    }
    let mut changes = Changes::default();
    let mut written: Vec<Written> = Vec::with_capacity(write.fields.len());
    for (f, stored) in write.fields.iter().zip(reads.previous) {
        // A name written twice in one write finds its first version as the previous one.
        let previous = match changes.put_fields.iter().find(|p| p.meta.name == f.name) {
            Some(earlier) => Some(earlier.clone()),
            None => stored,
        };
        if let Some(old) = previous.as_ref().filter(|p| p.index_entry != f.index_entry) {
            dirty |= unindex(&mut changes.index, &mut record, &old.index_entry);
        }
        if !f.index_entry.is_empty() && !record.index_entries.contains(&f.index_entry) {
            changes.index.add(f.index_entry.clone());
            record.index_entries.push(f.index_entry.clone());
            dirty = true;
        }
        let meta = f.next_meta(previous.as_ref(), write);
        if let Some(old) = previous.as_ref().filter(|p| p.expires_at.0 != 0) {
            changes.expiry.remove((old.expires_at, f.name.clone()));
        }
        if f.expires_at.0 != 0 {
            changes.expiry.add((f.expires_at, f.name.clone()));
        }
        changes.put_field(f.record(meta.clone()));
        written.push(Written {
            meta,
            previous: previous.map(|p| p.meta),
            replayed: false,
        });
    }
    if dirty {
        changes.subject = Some(record);
    }
    let idempotency = write.idempotency.as_ref().map(|claim| IdempotencyChange {
        scope: claim.scope,
        record: IdempotencyRecord {
            fingerprint: claim.fingerprint,
            expires_at: claim.expires_at,
            written: written.iter().map(|w| w.meta.clone()).collect(),
        },
        replaces: reads.replay.as_ref().map(|r| r.expires_at),
    });
    Ok(PutPlan {
        changes,
        written,
        idempotency,
    })
}

/// `Store::delete_fields`: deletes the named fields that exist (`stored`, in the order of
/// `names`) and their blind-index entries. Returns the changes and how many existed.
pub(crate) fn delete_fields(
    record: Option<SubjectRecord>, names: &[FieldName], stored: Vec<Option<FieldRecord>>,
) -> (Changes, u32) {
    let mut changes = Changes::default();
    let mut record = record;
    let mut dirty = false;
    for (name, old) in names.iter().zip(stored) {
        // A name given twice is deleted once.
        let Some(old) = old.filter(|_| !changes.delete_fields.contains(name)) else {
            continue;
        };
        changes.delete_fields.push(name.clone());
        if let Some(rec) = record.as_mut() {
            dirty |= unindex(&mut changes.index, rec, &old.index_entry);
        }
    }
    if dirty {
        changes.subject = record;
    }
    let deleted = u32::try_from(changes.delete_fields.len()).unwrap_or(u32::MAX);
    (changes, deleted)
}

/// `Store::delete_expired`: the expiry entry goes in any case; the field goes with its
/// blind-index entry if it still expires at `expires_at`. True if the field is deleted.
pub(crate) fn delete_expired(
    name: &FieldName, expires_at: Timestamp, field: Option<FieldRecord>,
    record: Option<SubjectRecord>,
) -> (Changes, bool) {
    let mut changes = Changes::default();
    changes.expiry.remove((expires_at, name.clone()));
    // Rewritten since, when its expiry differs: it has a new expiry entry of its own.
    let Some(field) = field.filter(|f| f.expires_at == expires_at) else {
        return (changes, false);
    };
    changes.delete_fields.push(name.clone());
    if let Some(mut rec) = record {
        if unindex(&mut changes.index, &mut rec, &field.index_entry) {
            changes.subject = Some(rec);
        }
    }
    (changes, true)
}

/// `Store::reindex_field`: replaces a field's blind-index entry with `entry`. A subject or
/// field erased or deleted meanwhile has nothing to re-index.
pub(crate) fn reindex(
    record: Option<SubjectRecord>, field: Option<FieldRecord>, entry: &[u8],
) -> Changes {
    let mut changes = Changes::default();
    let (Some(mut rec), Some(mut field)) = (record, field) else {
        return changes;
    };
    // A field whose entry its subject no longer lists was unindexed (the records of an
    // erased person's legal shadow): it stays so.
    if !rec.index_entries.contains(&field.index_entry) {
        return changes;
    }
    unindex(&mut changes.index, &mut rec, &field.index_entry);
    changes.index.add(entry.to_vec());
    rec.index_entries.push(entry.to_vec());
    field.index_entry = entry.to_vec();
    changes.put_field(field);
    changes.subject = Some(rec);
    changes
}

/// Refuses a state record whose sequence number is not the one its subject record anchors
/// (`records::sealed`): an older copy, or a deleted record (sequence number 0). A subject
/// without a record (never written, or erased) anchors nothing.
pub(crate) fn check_state_anchor(
    subject: Option<&SubjectRecord>, stored: &StateRecord,
) -> StoreResult<()> {
    match subject {
        Some(rec) if rec.state_seq != stored.seq() => Err(StoreError::Integrity(
            "sequence number is not the anchored one",
        )),
        _ => Ok(()),
    }
}

/// What a state change writes: the new state record, and the subject record with its
/// anchor moved (when the subject has one).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StateWrite {
    pub state: StateRecord,
    pub subject: Option<SubjectRecord>,
}

/// `Store::update_subject_state`, from whether the subject has a tombstone, its subject
/// record and its stored state record: what to write (`None`: nothing changes) and the
/// state record stored afterwards. A sealed record must move the sequence number forward.
pub(crate) fn update_state(
    erased: bool, subject: Option<SubjectRecord>, stored: StateRecord, update: &StateUpdate<'_>,
) -> StoreResult<(Option<StateWrite>, StateRecord)> {
    if erased {
        return Err(StoreError::Erased);
    }
    check_state_anchor(subject.as_ref(), &stored)?;
    match update(&stored)? {
        Some(next) if next != stored => {
            if next.seal.is_some() && next.seq() <= stored.seq() {
                return Err(StoreError::Integrity(
                    "sequence number did not move forward",
                ));
            }
            let subject = subject.map(|rec| SubjectRecord {
                state_seq: next.seq(),
                ..rec
            });
            let write = StateWrite {
                state: next.clone(),
                subject,
            };
            Ok((Some(write), next))
        }
        _ => Ok((None, stored)),
    }
}

/// What an erasure changes besides deleting the subject record and its consents, and
/// marking the tenant for the next key epoch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Erase {
    /// The tombstone to store.
    pub tombstone: Tombstone,
    /// The end of the legal hold to record for the subject's legal shadow, if it has one.
    pub hold_until: Option<Timestamp>,
    /// Blind-index entries of the subject and of its legal shadow, to delete: the shadow's
    /// records stay for their retention duty, but no value of the person finds them.
    pub unindex: Vec<Vec<u8>>,
    /// The shadow's record without its index entries, to store in place of its own.
    pub shadow: Option<SubjectRecord>,
}

/// `Store::erase_subject`, from the subject's earlier tombstone, its record and its legal
/// shadow's record: the answer, and what to change when there is an erasure to make
/// (none when the subject was erased before or never existed: erasure is idempotent).
pub(crate) fn erase(
    earlier: Option<Tombstone>, record: Option<SubjectRecord>, shadow: Option<&SubjectRecord>,
    tombstone: &Tombstone, seal: &TombstoneSeal<'_>,
) -> (Erasure, Option<Erase>) {
    if let Some(earlier) = earlier {
        return (Erasure::AlreadyErased(earlier), None);
    }
    let Some(record) = record else {
        return (Erasure::NotFound, None);
    };
    let mut written = Tombstone {
        categories: record.categories,
        ..tombstone.clone()
    };
    let hold_until = match shadow {
        Some(shadow) => {
            written.retained_categories = shadow.categories;
            Some(tombstone.retained_until)
        }
        None => {
            written.retained_until = Timestamp(0);
            None
        }
    };
    // Sealed last, over what is stored; the erasure is the subject's last state change.
    let written = seal(written, record.state_seq.saturating_add(1));
    let mut unindex = record.index_entries;
    let shadow = shadow.filter(|s| !s.index_entries.is_empty()).map(|s| {
        unindex.extend(s.index_entries.iter().cloned());
        SubjectRecord {
            index_entries: Vec::new(),
            ..s.clone()
        }
    });
    let plan = Erase {
        tombstone: written.clone(),
        hold_until,
        unindex,
        shadow,
    };
    (Erasure::Erased(written), Some(plan))
}

#[cfg(test)]
mod tests;
