//! The sled side of a subject's consents and restriction: a compare-and-swap in one
//! transaction over the state, tombstone and subject trees (its decision is
//! `rules::update_state`), so a concurrent change is never lost, an erasure is never undone
//! and the subject record's anchor moves with the state record it anchors.

use sled::transaction::Transactional;

use crate::domain::SubjectId;
use crate::storage::records::{StateRecord, SubjectRecord};
use crate::storage::{rules, StateUpdate, StoreResult};

use super::{abort, get, stored, subject_key, tx_error, TenantTrees};

/// `Store::subject_state`: the state record, checked against the anchor in the subject
/// record.
///
/// Most reads take the two records as they are, outside a transaction. A sled transaction,
/// even one that only reads, holds sled's global write lock and seals a batch in its log, so
/// every read would wait for every other and for the log writer. That costs nothing in
/// safety here: sequence numbers only move forward, so a state record whose sequence number
/// is the one its subject record anchors was stored with it, in whichever order the two were
/// read. Only a mismatch, a change between the two reads or a real integrity failure, is
/// read again in one transaction, which tells them apart.
pub(super) fn read(trees: &TenantTrees, subject: &SubjectId) -> StoreResult<StateRecord> {
    let key = subject_key(subject);
    let state = stored(&trees.state, &key, StateRecord::decode)?.unwrap_or_default();
    let record = stored(&trees.subjects, &key, SubjectRecord::decode)?;
    if rules::check_state_anchor(record.as_ref(), &state).is_ok() {
        return Ok(state);
    }
    (&trees.state, &trees.subjects)
        .transaction(|(state, subjects)| {
            let stored = get(state, &key, StateRecord::decode)?.unwrap_or_default();
            let record = get(subjects, &key, SubjectRecord::decode)?;
            rules::check_state_anchor(record.as_ref(), &stored).map_err(abort)?;
            Ok(stored)
        })
        .map_err(tx_error)
}

/// `Store::update_subject_state` on the subject's tenant's trees.
pub(super) fn update(
    trees: &TenantTrees, subject: &SubjectId, update: &StateUpdate<'_>,
) -> StoreResult<StateRecord> {
    let key = subject_key(subject);
    (&trees.state, &trees.tombstones, &trees.subjects)
        .transaction(|(state, tombstones, subjects)| {
            // Pure: this closure may run again on conflict.
            let erased = tombstones.get(&key)?.is_some();
            let stored = get(state, &key, StateRecord::decode)?.unwrap_or_default();
            let record = get(subjects, &key, SubjectRecord::decode)?;
            let (write, now) =
                rules::update_state(erased, record, stored, update).map_err(abort)?;
            if let Some(write) = write {
                state.insert(key.as_slice(), write.state.encode())?;
                if let Some(rec) = write.subject {
                    subjects.insert(key.as_slice(), rec.encode())?;
                }
            }
            Ok(now)
        })
        .map_err(tx_error)
}
