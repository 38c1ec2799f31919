//! The PostgreSQL side of the audit log: every node's events in `pv_audit`, in one merged
//! order; each node's chain and head in `pv_audit_nodes`; the checkpoint (and the head of
//! the single chain written before nodes had chains of their own) in `pv_meta`.
//!
//! A node appends its batch under a transaction-level advisory lock, taken before it reads
//! the newest sequence number and held until its commit: batches take their places one after
//! another, without gaps, and a query paging by sequence number never sees a later place
//! before an earlier one. Only the insert and commit are serialized; no node re-reads or
//! re-chains another's events (each links to its own chain).

use tokio_postgres::{Client, Row, Transaction};

use crate::domain::Timestamp;
use crate::storage::{AuditMarks, SealBatch, StoreError, StoreResult};

use super::conn::{exec, one, rows, Db};
use super::error::R;
use super::rows::{limit, meta_value, seq, set_meta, ts};

const AUDIT_HEAD: &str = "audit_head";
const AUDIT_CHECKPOINT: &str = "audit_checkpoint";
/// Advisory lock key held by an append while it takes its places ("pvaudord" in ASCII).
const AUDIT_ORDER_LOCK: i64 = 0x7076_6175_646f_7264;

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

/// A new node: the next number after the newest, recorded with when it started.
pub(super) fn new_node(t: &Db<'_, Transaction<'_>>, started: Timestamp) -> R<u64> {
    let row = one(
        t,
        "INSERT INTO pv_audit_nodes (node, started_at) \
         SELECT coalesce(max(node), 0) + 1, $1 FROM pv_audit_nodes RETURNING node",
        &[&ts(started)],
    )?
    .ok_or(StoreError::Corrupt("audit node"))?;
    Ok(node_number(row.get(0))?)
}

/// A node number as stored (`bigint`, positive).
fn node_number(stored: i64) -> StoreResult<u64> {
    u64::try_from(stored).map_err(|_| StoreError::Corrupt("audit node"))
}

/// Appends `seal`'s batch to `node`'s chain at the next places of the merged order; run in a
/// READ COMMITTED transaction (see the module).
pub(super) fn append_node(t: &Db<'_, Transaction<'_>>, node: u64, seal: SealBatch<'_>) -> R<()> {
    exec(t, "SELECT pg_advisory_xact_lock($1)", &[&AUDIT_ORDER_LOCK])?;
    let last: Option<i64> = one(t, "SELECT max(seq) FROM pv_audit", &[])?.and_then(|r| r.get(0));
    let first = last.map_or(1, |s| s as u64 + 1);
    let (events, head) = seal(first);
    let seqs: Vec<i64> = events.iter().map(|(s, _)| seq(*s)).collect();
    let bodies: Vec<&[u8]> = events.iter().map(|(_, b)| b.as_slice()).collect();
    exec(
        t,
        "INSERT INTO pv_audit (seq, event) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
        &[&seqs, &bodies],
    )?;
    let updated = exec(
        t,
        "UPDATE pv_audit_nodes SET head = $2 WHERE node = $1",
        &[&seq(node), &head],
    )?;
    if updated != 1 {
        return Err(StoreError::Backend(format!("audit node {node} has no record")).into());
    }
    Ok(())
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
    // The checkpoint first: a prune between the reads can then only make the events look
    // newer than it, never older.
    let checkpoint = meta_value(c, AUDIT_CHECKPOINT)?;
    let head = meta_value(c, AUDIT_HEAD)?;
    let nodes = rows(
        c,
        "SELECT node, head FROM pv_audit_nodes ORDER BY node",
        &[],
    )?
    .iter()
    .map(|r| Ok((node_number(r.get(0))?, r.get::<_, Option<Vec<u8>>>(1))))
    .collect::<R<Vec<_>>>()?;
    Ok(AuditMarks {
        head,
        checkpoint,
        nodes,
    })
}

/// Records the checkpoint and deletes the events up to `through`: they commit together.
pub(super) fn prune(t: &Db<'_, Transaction<'_>>, through: u64, checkpoint: &[u8]) -> R<u64> {
    set_meta(t, AUDIT_CHECKPOINT, checkpoint)?;
    exec(t, "DELETE FROM pv_audit WHERE seq <= $1", &[&seq(through)])
}
