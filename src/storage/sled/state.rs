//! The sled side of a subject's consents and restriction: a compare-and-swap in one
//! transaction over the state and tombstone trees (its decision is `rules::update_state`),
//! so a concurrent change is never lost and an erasure is never undone.

use sled::transaction::Transactional;

use crate::domain::{SubjectId, SubjectState};
use crate::storage::records::{decode_state, encode_state};
use crate::storage::{rules, StateUpdate, StoreResult};

use super::{abort, subject_key, tx_error, TenantTrees};

/// `Store::update_subject_state` on the subject's tenant's trees.
pub(super) fn update(
    trees: &TenantTrees,
    subject: &SubjectId,
    update: &StateUpdate<'_>,
) -> StoreResult<SubjectState> {
    let key = subject_key(subject);
    (&trees.state, &trees.tombstones)
        .transaction(|(state, tombstones)| {
            // Pure: this closure may run again on conflict.
            let erased = tombstones.get(&key)?.is_some();
            let stored = match state.get(&key)? {
                Some(v) => decode_state(&v).map_err(abort)?,
                None => SubjectState::default(),
            };
            let (write, now) = rules::update_state(erased, stored, update).map_err(abort)?;
            if let Some(next) = write {
                state.insert(key.as_slice(), encode_state(&next))?;
            }
            Ok(now)
        })
        .map_err(tx_error)
}
