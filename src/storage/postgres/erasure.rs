//! The PostgreSQL side of erasure: the erasure transaction (its decisions are
//! `rules::erase`), purging an erased subject's field ciphertexts, legal holds and key
//! epoch marks.

use tokio_postgres::{Client, Transaction};

use crate::domain::{SubjectId, TenantId, Timestamp};
use crate::storage::records::{Erasure, SubjectRecord, Tombstone};
use crate::storage::{rules, LegacyPage, LegacySeal, StoreError, TombstoneSeal};

use super::conn::{exec, one, rows, tenant_one, Db};
use super::error::R;
use super::rows::{
    limit, mark_epoch, put_subject, require_tenant, seq, subject_id, tenant_id, to_ts, ts,
};

/// Applies an erasure: the subject's record, consents and blind-index entries go, its
/// tombstone and its shadow's legal hold are stored, and the tenant is marked for the next
/// key epoch.
fn apply(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subject: &SubjectId, plan: &rules::Erase,
) -> R<()> {
    let (tid, sid) = (tenant.as_str(), subject.as_str());
    exec(
        t,
        "DELETE FROM pv_subjects WHERE tenant = $1 AND subject = $2",
        &[&tid, &sid],
    )?;
    if let Some(rec) = &plan.shadow {
        put_subject(t, tenant, &subject.legal_shadow(), rec)?;
    }
    if let Some(until) = plan.hold_until {
        exec(
            t,
            "INSERT INTO pv_legal_holds (until, tenant, shadow) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&ts(until), &tid, &subject.legal_shadow().as_str()],
        )?;
    }
    let stone = &plan.tombstone;
    exec(
        t,
        "INSERT INTO pv_tombstones (tenant, subject, tombstone, purged)
         VALUES ($1, $2, $3, $4)",
        &[&tid, &sid, &stone.encode(), &stone.purged],
    )?;
    exec(
        t,
        "DELETE FROM pv_state WHERE tenant = $1 AND subject = $2",
        &[&tid, &sid],
    )?;
    if !plan.unindex.is_empty() {
        let entries: Vec<&[u8]> = plan.unindex.iter().map(Vec::as_slice).collect();
        exec(
            t,
            "DELETE FROM pv_index WHERE tenant = $1 AND entry = ANY($2)",
            &[&tid, &entries],
        )?;
    }
    mark_epoch(t, tenant)
}

/// `Store::erase_subject`, in a transaction.
pub(super) fn erase(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subject: &SubjectId, tombstone: &Tombstone,
    seal: &TombstoneSeal<'_>,
) -> R<Erasure> {
    let shadow = subject.legal_shadow();
    // The tenant, the earlier tombstone, the subject and its shadow: one statement.
    let Some(found) = one(
        t,
        "SELECT (SELECT tombstone FROM pv_tombstones WHERE tenant = t.id AND subject = $2),
                (SELECT record FROM pv_subjects WHERE tenant = t.id AND subject = $2),
                (SELECT record FROM pv_subjects WHERE tenant = t.id AND subject = $3)
         FROM pv_tenants t WHERE t.id = $1",
        &[&tenant.as_str(), &subject.as_str(), &shadow.as_str()],
    )?
    else {
        return Err(StoreError::NoTenant.into());
    };
    let column = |i| found.get::<_, Option<&[u8]>>(i);
    let earlier = column(0).map(Tombstone::decode).transpose()?;
    let record = column(1).map(SubjectRecord::decode).transpose()?;
    let shadow_record = column(2).map(SubjectRecord::decode).transpose()?;
    let (answer, plan) = rules::erase(earlier, record, shadow_record.as_ref(), tombstone, seal);
    if let Some(plan) = plan {
        apply(t, tenant, subject, &plan)?;
    }
    Ok(answer)
}

pub(super) fn tombstone(
    c: &Db<'_, Client>, tenant: &TenantId, subject: &SubjectId,
) -> R<Option<Tombstone>> {
    tenant_one(
        c,
        tenant,
        "SELECT tombstone FROM pv_tombstones WHERE tenant = $1 AND subject = $2",
        &[&tenant.as_str(), &subject.as_str()],
    )?
    .map(|r| Ok(Tombstone::decode(r.get(0))?))
    .transpose()
}

/// `Store::seal_legacy_tombstones`, in a transaction (the page's rows locked).
pub(super) fn seal_legacy(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, after: Option<&SubjectId>, n: usize,
    seal: &LegacySeal<'_>,
) -> R<LegacyPage> {
    require_tenant(t, tenant)?;
    let tid = tenant.as_str();
    let page = rows(
        t,
        "SELECT subject, tombstone FROM pv_tombstones WHERE tenant = $1 AND subject > $2
         ORDER BY subject LIMIT $3 FOR UPDATE",
        &[&tid, &after.map_or("", SubjectId::as_str), &limit(n)],
    )?;
    let mut done = LegacyPage::default();
    for row in page {
        let subject = subject_id(row.get(0))?;
        let stone = Tombstone::decode(row.get(1))?;
        if stone.seal.is_none() {
            let sealed = seal(&subject, stone);
            exec(
                t,
                "UPDATE pv_tombstones SET tombstone = $3 WHERE tenant = $1 AND subject = $2",
                &[&tid, &subject.as_str(), &sealed.encode()],
            )?;
            done.sealed += 1;
        }
        done.last = Some(subject);
    }
    Ok(done)
}

pub(super) fn purge(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subject: &SubjectId, n: usize,
) -> R<usize> {
    require_tenant(t, tenant)?;
    let (tid, sid) = (tenant.as_str(), subject.as_str());
    let deleted = exec(
        t,
        "DELETE FROM pv_fields WHERE tenant = $1 AND subject = $2 AND name IN (
             SELECT name FROM pv_fields WHERE tenant = $1 AND subject = $2
             ORDER BY name LIMIT $3)",
        &[&tid, &sid, &limit(n)],
    )?;
    if deleted == 0 {
        exec(
            t,
            "DELETE FROM pv_idempotency WHERE tenant = $1 AND subject = $2",
            &[&tid, &sid],
        )?;
        if let Some(row) = one(
            t,
            "SELECT tombstone FROM pv_tombstones WHERE tenant = $1 AND subject = $2",
            &[&tid, &sid],
        )? {
            let mut stone = Tombstone::decode(row.get(0))?;
            if !stone.purged {
                stone.purged = true;
                exec(
                    t,
                    "UPDATE pv_tombstones SET tombstone = $3, purged = true
                     WHERE tenant = $1 AND subject = $2",
                    &[&tid, &sid, &stone.encode()],
                )?;
            }
        }
    }
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}

pub(super) fn unpurged(c: &Db<'_, Client>) -> R<Vec<(TenantId, SubjectId)>> {
    rows(
        c,
        "SELECT tenant, subject FROM pv_tombstones WHERE NOT purged ORDER BY tenant, subject",
        &[],
    )?
    .iter()
    .map(|r| Ok((tenant_id(r.get(0))?, subject_id(r.get(1))?)))
    .collect()
}

pub(super) fn holds_due(
    c: &Db<'_, Client>, now: Timestamp,
) -> R<Vec<(TenantId, SubjectId, Timestamp)>> {
    rows(
        c,
        "SELECT until, tenant, shadow FROM pv_legal_holds WHERE until <= $1
         ORDER BY until, tenant, shadow",
        &[&ts(now)],
    )?
    .iter()
    .map(|r| {
        Ok((
            tenant_id(r.get(1))?,
            subject_id(r.get(2))?,
            to_ts(r.get(0), "legal hold")?,
        ))
    })
    .collect()
}

pub(super) fn clear_hold(
    c: &Db<'_, Client>, tenant: &TenantId, shadow: &SubjectId, until: Timestamp,
) -> R<()> {
    exec(
        c,
        "DELETE FROM pv_legal_holds WHERE until = $1 AND tenant = $2 AND shadow = $3",
        &[&ts(until), &tenant.as_str(), &shadow.as_str()],
    )
    .map(|_| ())
}

pub(super) fn epoch_marks(c: &Db<'_, Client>) -> R<Vec<(TenantId, u64)>> {
    rows(
        c,
        "SELECT tenant, erasures FROM pv_epoch_pending ORDER BY tenant",
        &[],
    )?
    .iter()
    .map(|r| {
        let n: i64 = r.get(1);
        Ok((tenant_id(r.get(0))?, u64::try_from(n).unwrap_or(0)))
    })
    .collect()
}

/// Clears the tenant's epoch mark if no erasure happened since `seen` was read: a later one
/// needs the next epoch.
pub(super) fn clear_epoch_mark(c: &Db<'_, Client>, tenant: &TenantId, seen: u64) -> R<()> {
    exec(
        c,
        "DELETE FROM pv_epoch_pending WHERE tenant = $1 AND erasures = $2",
        &[&tenant.as_str(), &seq(seen)],
    )
    .map(|_| ())
}
