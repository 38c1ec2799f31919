//! The PostgreSQL side of the audit log: one chain for every node in `pv_audit`, the head
//! and checkpoint records in `pv_meta`.

use tokio_postgres::{Client, Row, Transaction};

use crate::storage::{AuditMarks, StoreError, StoreResult};

use super::conn::{exec, one, rows, Db};
use super::error::R;
use super::rows::{limit, meta_value, seq, set_meta};

const AUDIT_HEAD: &str = "audit_head";
const AUDIT_CHECKPOINT: &str = "audit_checkpoint";

/// An audit event's row: its sequence number and its bytes.
fn event(row: &Row) -> StoreResult<(u64, Vec<u8>)> {
    let s: i64 = row.get(0);
    let s = u64::try_from(s).map_err(|_| StoreError::Corrupt("audit key"))?;
    Ok((s, row.get(1)))
}

pub(super) fn append(t: &Db<'_, Transaction<'_>>, events: &[(u64, Vec<u8>)], head: &[u8]) -> R<()> {
    let seqs: Vec<i64> = events.iter().map(|(s, _)| seq(*s)).collect();
    let bodies: Vec<&[u8]> = events.iter().map(|(_, b)| b.as_slice()).collect();
    // One chain for all nodes: a batch must continue the newest stored event. If
    // another node appended first, `Conflict` tells the writer to re-chain the batch
    // after it (SERIALIZABLE makes two appends of the same place conflict).
    let Some(first) = seqs.first() else {
        return Ok(());
    };
    let last: Option<i64> = one(t, "SELECT max(seq) FROM pv_audit", &[])?.and_then(|r| r.get(0));
    if last.is_some_and(|last| last + 1 != *first) {
        return Err(StoreError::Conflict.into());
    }
    exec(
        t,
        "INSERT INTO pv_audit (seq, event) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
        &[&seqs, &bodies],
    )?;
    set_meta(t, AUDIT_HEAD, head)
}

pub(super) fn scan(c: &Db<'_, Client>, after: u64, n: usize) -> R<Vec<(u64, Vec<u8>)>> {
    rows(
        c,
        "SELECT seq, event FROM pv_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
        &[&seq(after), &limit(n)],
    )?
    .iter()
    .map(|r| Ok(event(r)?))
    .collect()
}

pub(super) fn last(c: &Db<'_, Client>) -> R<Option<(u64, Vec<u8>)>> {
    one(
        c,
        "SELECT seq, event FROM pv_audit ORDER BY seq DESC LIMIT 1",
        &[],
    )?
    .map(|r| Ok(event(&r)?))
    .transpose()
}

pub(super) fn marks(c: &Db<'_, Client>) -> R<AuditMarks> {
    Ok(AuditMarks {
        head: meta_value(c, AUDIT_HEAD)?,
        checkpoint: meta_value(c, AUDIT_CHECKPOINT)?,
    })
}

/// Records the checkpoint and deletes the events up to `through`: they commit together.
pub(super) fn prune(t: &Db<'_, Transaction<'_>>, through: u64, checkpoint: &[u8]) -> R<u64> {
    set_meta(t, AUDIT_CHECKPOINT, checkpoint)?;
    exec(t, "DELETE FROM pv_audit WHERE seq <= $1", &[&seq(through)])
}
