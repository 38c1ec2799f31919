//! The sled side of the audit log: events in the `audit` tree by sequence number, the head
//! and checkpoint records in `meta`.

use sled::transaction::{TransactionError, Transactional};

use crate::storage::{AuditMarks, Store, StoreError, StoreResult};

use super::{backend, tx_error, SledStore};

const AUDIT_HEAD: &str = "audit_head";
const AUDIT_CHECKPOINT: &str = "audit_checkpoint";
/// Events deleted per batch when pruning, so a large prune never builds one huge batch.
const PRUNE_BATCH: usize = 4096;

/// An audit event as stored: its sequence number (u64 BE) and its bytes.
fn event(key: &[u8], value: &[u8]) -> StoreResult<(u64, Vec<u8>)> {
    let seq = <[u8; 8]>::try_from(key).map_err(|_| StoreError::Corrupt("audit key"))?;
    Ok((u64::from_be_bytes(seq), value.to_vec()))
}

impl SledStore {
    pub(super) fn append_audit(&self, events: &[(u64, Vec<u8>)], head: &[u8]) -> StoreResult<()> {
        (&self.audit, &self.meta)
            .transaction(|(audit, meta)| {
                for (seq, bytes) in events {
                    audit.insert(&seq.to_be_bytes(), bytes.as_slice())?;
                }
                meta.insert(AUDIT_HEAD, head)?;
                Ok(())
            })
            .map_err(|e: TransactionError<StoreError>| tx_error(e))
    }

    pub(super) fn scan_audit(&self, after: u64, limit: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let start = after.saturating_add(1).to_be_bytes();
        self.audit
            .range(start..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                event(&k, &v)
            })
            .collect()
    }

    pub(super) fn last_audit(&self) -> StoreResult<Option<(u64, Vec<u8>)>> {
        match self.audit.last().map_err(backend)? {
            None => Ok(None),
            Some((k, v)) => event(&k, &v).map(Some),
        }
    }

    pub(super) fn audit_bounds(&self) -> StoreResult<AuditMarks> {
        Ok(AuditMarks {
            head: self.meta(AUDIT_HEAD)?,
            checkpoint: self.meta(AUDIT_CHECKPOINT)?,
        })
    }

    pub(super) fn prune_audit(&self, through: u64, checkpoint: &[u8]) -> StoreResult<u64> {
        // The checkpoint goes first: if pruning stops half-way, the events left before it
        // are skipped by verification instead of being reported missing.
        self.meta
            .insert(AUDIT_CHECKPOINT, checkpoint)
            .map_err(backend)?;
        let end = through.saturating_add(1).to_be_bytes();
        let mut deleted = 0u64;
        loop {
            let keys: Vec<sled::IVec> = self
                .audit
                .range(..end)
                .keys()
                .take(PRUNE_BATCH)
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            if keys.is_empty() {
                return Ok(deleted);
            }
            let mut batch = sled::Batch::default();
            for k in &keys {
                batch.remove(k);
            }
            self.audit.apply_batch(batch).map_err(backend)?;
            deleted += keys.len() as u64;
        }
    }
}
