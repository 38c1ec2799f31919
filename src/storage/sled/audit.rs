//! The sled store's audit log: segment files of its own in `<store>/audit/`
//! (`storage::segments`), so sled keeps only data. A store written by an earlier version
//! kept its events in the `audit` tree and its head and checkpoint records in `meta`; they
//! are moved into segments once, when such a store is opened (and when a backup, which
//! still carries them in that form, is restored and opened).

use std::path::Path;

use crate::storage::{SegmentLog, StoreError, StoreResult, DEFAULT_SEGMENT_BYTES};

use super::backend;

pub(super) const AUDIT_HEAD: &str = "audit_head";
pub(super) const AUDIT_CHECKPOINT: &str = "audit_checkpoint";
/// The segments' directory inside the store directory.
pub(super) const AUDIT_DIR: &str = "audit";
/// Events per batch written while moving the tree into segments.
const MOVE_BATCH: usize = 4096;

/// Opens the audit log of the store in `dir`, first moving the events of an earlier
/// version's `audit` tree into it.
///
/// The move writes a complete log into `audit.moving/`, syncs it and renames it into place,
/// and only then empties the tree: a crash before the rename leaves the tree as it was (the
/// move starts again), a crash after it leaves a tree the next open empties.
pub(super) fn open_log(
    dir: &Path, tree: &sled::Tree, meta: &sled::Tree,
) -> StoreResult<SegmentLog> {
    let target = dir.join(AUDIT_DIR);
    let tree_used = !tree.is_empty();
    if tree_used && !target.exists() {
        let moving = dir.join("audit.moving");
        if moving.exists() {
            std::fs::remove_dir_all(&moving).map_err(|e| moved("clear", &e))?;
        }
        let log = SegmentLog::open(&moving, DEFAULT_SEGMENT_BYTES)?;
        let head = meta.get(AUDIT_HEAD).map_err(backend)?.unwrap_or_default();
        let mut batch = Vec::with_capacity(MOVE_BATCH);
        for kv in tree.iter() {
            let (k, v) = kv.map_err(backend)?;
            let seq =
                <[u8; 8]>::try_from(k.as_ref()).map_err(|_| StoreError::Corrupt("audit key"))?;
            batch.push((u64::from_be_bytes(seq), v.to_vec()));
            if batch.len() == MOVE_BATCH {
                log.append(&batch, &head)?;
                batch.clear();
            }
        }
        log.append(&batch, &head)?;
        if let Some(mark) = meta.get(AUDIT_CHECKPOINT).map_err(backend)? {
            // Pruning deleted the events the checkpoint covers, up to the first one kept.
            let first = tree.first().map_err(backend)?.map(|(k, _)| k);
            let through = first
                .and_then(|k| <[u8; 8]>::try_from(k.as_ref()).ok())
                .map_or(0, |k| u64::from_be_bytes(k).saturating_sub(1));
            log.prune(through, &mark)?;
        }
        drop(log);
        std::fs::rename(&moving, &target).map_err(|e| moved("rename", &e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| moved("sync", &e))?;
        tracing::info!(
            events = tree.len(),
            "moved the audit log out of the store into segment files"
        );
    }
    if tree_used {
        tree.clear().map_err(backend)?;
        meta.remove(AUDIT_HEAD).map_err(backend)?;
        meta.remove(AUDIT_CHECKPOINT).map_err(backend)?;
        tree.flush().map_err(backend)?;
        meta.flush().map_err(backend)?;
    }
    SegmentLog::open(&target, DEFAULT_SEGMENT_BYTES)
}

fn moved(what: &str, e: &std::io::Error) -> StoreError {
    StoreError::Backend(format!(
        "moving the audit log into segment files: {what}: {e}"
    ))
}
