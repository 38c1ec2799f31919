//! The sled side of a subject's consents and restriction: a compare-and-swap in one
//! transaction over the state, tombstone and subject trees (its decision is
//! `rules::update_state`), so a concurrent change is never lost, an erasure is never undone
//! and the subject record's anchor moves with the state record it anchors.

use sled::transaction::Transactional;

use crate::domain::SubjectId;
use crate::storage::records::{StateRecord, SubjectRecord};
use crate::storage::{rules, StateUpdate, StoreResult};

use super::{abort, get, subject_key, tx_error, TenantTrees};

/// `Store::subject_state`: the state record and the subject record read in one
/// transaction, so a concurrent change cannot make them look out of step.
pub(super) fn read(trees: &TenantTrees, subject: &SubjectId) -> StoreResult<StateRecord> {
    let key = subject_key(subject);
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
