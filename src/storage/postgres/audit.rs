//! The PostgreSQL side of the audit log: one chain for every node in `pv_audit`, the head
//! and checkpoint records in `pv_meta`.

use crate::storage::{AuditMarks, StoreError, StoreResult};

use super::conn::{exec, one, rows};
use super::rows::{limit, meta_value, seq, set_meta};
use super::PgStore;

const AUDIT_HEAD: &str = "audit_head";
const AUDIT_CHECKPOINT: &str = "audit_checkpoint";

/// An audit event's row: its sequence number and its bytes.
fn event(row: &tokio_postgres::Row) -> StoreResult<(u64, Vec<u8>)> {
    let s: i64 = row.get(0);
    let s = u64::try_from(s).map_err(|_| StoreError::Corrupt("audit key"))?;
    Ok((s, row.get(1)))
}

impl PgStore {
    pub(super) fn append_audit(&self, events: &[(u64, Vec<u8>)], head: &[u8]) -> StoreResult<()> {
        let seqs: Vec<i64> = events.iter().map(|(s, _)| seq(*s)).collect();
        let bodies: Vec<&[u8]> = events.iter().map(|(_, b)| b.as_slice()).collect();
        self.tx(|t| {
            // One chain for all nodes: a batch must continue the newest stored event. If
            // another node appended first, `Conflict` tells the writer to re-chain the batch
            // after it (SERIALIZABLE makes two appends of the same place conflict).
            let Some(first) = seqs.first() else {
                return Ok(());
            };
            let last: Option<i64> =
                one(t, "SELECT max(seq) FROM pv_audit", &[])?.and_then(|r| r.get(0));
            if last.is_some_and(|last| last + 1 != *first) {
                return Err(StoreError::Conflict.into());
            }
            exec(
                t,
                "INSERT INTO pv_audit (seq, event) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
                &[&seqs, &bodies],
            )?;
            set_meta(t, AUDIT_HEAD, head)
        })
    }

    pub(super) fn scan_audit(&self, after: u64, n: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        self.read(|c| {
            rows(
                c,
                "SELECT seq, event FROM pv_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&seq(after), &limit(n)],
            )?
            .iter()
            .map(|r| Ok(event(r)?))
            .collect()
        })
    }

    pub(super) fn last_audit(&self) -> StoreResult<Option<(u64, Vec<u8>)>> {
        self.read(|c| {
            one(
                c,
                "SELECT seq, event FROM pv_audit ORDER BY seq DESC LIMIT 1",
                &[],
            )?
            .map(|r| Ok(event(&r)?))
            .transpose()
        })
    }

    pub(super) fn audit_bounds(&self) -> StoreResult<AuditMarks> {
        self.read(|c| {
            Ok(AuditMarks {
                head: meta_value(c, AUDIT_HEAD)?,
                checkpoint: meta_value(c, AUDIT_CHECKPOINT)?,
            })
        })
    }

    pub(super) fn prune_audit(&self, through: u64, checkpoint: &[u8]) -> StoreResult<u64> {
        // The checkpoint and the deletion commit together.
        self.tx(|t| {
            set_meta(t, AUDIT_CHECKPOINT, checkpoint)?;
            exec(t, "DELETE FROM pv_audit WHERE seq <= $1", &[&seq(through)])
        })
    }
}
