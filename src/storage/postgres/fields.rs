//! The PostgreSQL side of writing fields: each write reads what its rule in `rules` needs
//! and applies the rule's plan in the same transaction, a statement per kind of change
//! (each takes every row of its kind at once, as arrays); and the field and expiry scans.

use tokio_postgres::{Client, GenericClient, Transaction};

use crate::domain::{FieldName, SubjectId, TenantId, Timestamp};
use crate::storage::records::{
    FieldRecord, IdempotencyRecord, SubjectRecord, SubjectWrite, TenantRecord, Written,
};
use crate::storage::rules::{self, Changes, PutReads};
use crate::storage::StoreError;

use super::conn::{exec, one, rows, tenant_rows, Db};
use super::error::R;
use super::rows::{
    field_name, field_row, limit, put_subject, require_tenant, subject_id, subject_row, to_ts, ts,
};

/// The stored records of the named fields of a subject, in the order of `names`.
fn fields_named<C: GenericClient>(
    c: &Db<'_, C>, tenant: &TenantId, subject: &SubjectId, names: &[&FieldName],
) -> R<Vec<Option<FieldRecord>>> {
    let wanted: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let found = rows(
        c,
        "SELECT record FROM pv_fields WHERE tenant = $1 AND subject = $2 AND name = ANY($3)",
        &[&tenant.as_str(), &subject.as_str(), &wanted],
    )?
    .iter()
    .map(|r| Ok(FieldRecord::decode(r.get(0))?))
    .collect::<R<Vec<FieldRecord>>>()?;
    Ok(names
        .iter()
        .map(|n| found.iter().find(|f| f.meta.name == **n).cloned())
        .collect())
}

/// Blind-index entries as a `bytea[]` parameter.
fn entries(list: &[Vec<u8>]) -> Vec<&[u8]> {
    list.iter().map(Vec::as_slice).collect()
}

/// Expiry entries as `bigint[]` and `text[]` parameters.
fn expiry(list: &[(Timestamp, FieldName)]) -> (Vec<i64>, Vec<&str>) {
    let at = list.iter().map(|(at, _)| ts(*at)).collect();
    let names = list.iter().map(|(_, n)| n.as_str()).collect();
    (at, names)
}

/// Applies a rule's changes of `subject`'s records: one statement per kind of change.
fn apply(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subject: &SubjectId, changes: &Changes,
) -> R<()> {
    let (tid, sid) = (tenant.as_str(), subject.as_str());
    if !changes.index.removed.is_empty() {
        exec(
            t,
            "DELETE FROM pv_index WHERE tenant = $1 AND entry = ANY($2)",
            &[&tid, &entries(&changes.index.removed)],
        )?;
    }
    if !changes.index.added.is_empty() {
        exec(
            t,
            "INSERT INTO pv_index (tenant, entry) SELECT $1::text, unnest($2::bytea[])
             ON CONFLICT DO NOTHING",
            &[&tid, &entries(&changes.index.added)],
        )?;
    }
    if !changes.expiry.removed.is_empty() {
        let (at, names) = expiry(&changes.expiry.removed);
        exec(
            t,
            "DELETE FROM pv_expiry WHERE tenant = $1 AND subject = $2
             AND (at, name) IN (SELECT * FROM unnest($3::bigint[], $4::text[]))",
            &[&tid, &sid, &at, &names],
        )?;
    }
    if !changes.expiry.added.is_empty() {
        let (at, names) = expiry(&changes.expiry.added);
        exec(
            t,
            "INSERT INTO pv_expiry (tenant, at, subject, name)
             SELECT $1::text, at, $2::text, name FROM unnest($3::bigint[], $4::text[]) AS e (at, name)
             ON CONFLICT DO NOTHING",
            &[&tid, &sid, &at, &names],
        )?;
    }
    if !changes.delete_fields.is_empty() {
        let names: Vec<&str> = changes.delete_fields.iter().map(|n| n.as_str()).collect();
        exec(
            t,
            "DELETE FROM pv_fields WHERE tenant = $1 AND subject = $2 AND name = ANY($3)",
            &[&tid, &sid, &names],
        )?;
    }
    if !changes.put_fields.is_empty() {
        let names: Vec<&str> = changes
            .put_fields
            .iter()
            .map(|f| f.meta.name.as_str())
            .collect();
        let records: Vec<Vec<u8>> = changes.put_fields.iter().map(FieldRecord::encode).collect();
        exec(
            t,
            "INSERT INTO pv_fields (tenant, subject, name, record)
             SELECT $1::text, $2::text, * FROM unnest($3::text[], $4::bytea[])
             ON CONFLICT (tenant, subject, name) DO UPDATE SET record = EXCLUDED.record",
            &[&tid, &sid, &names, &records],
        )?;
    }
    if let Some(record) = &changes.subject {
        put_subject(t, tenant, subject, record)?;
    }
    Ok(())
}

/// What a put reads: the tenant, whether the subject was erased, and its record, in one
/// statement; then the previous versions of the fields, in another.
fn put_reads(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subject: &SubjectId, write: &SubjectWrite,
) -> R<PutReads> {
    let Some(found) = one(
        t,
        "SELECT t.record,
                EXISTS (SELECT 1 FROM pv_tombstones WHERE tenant = t.id AND subject = $2),
                (SELECT record FROM pv_subjects WHERE tenant = t.id AND subject = $2)
         FROM pv_tenants t WHERE t.id = $1",
        &[&tenant.as_str(), &subject.as_str()],
    )?
    else {
        return Err(StoreError::NoTenant.into());
    };
    let tenant_rec = TenantRecord::decode(found.get(0))?;
    let stored = found
        .get::<_, Option<&[u8]>>(2)
        .map(SubjectRecord::decode)
        .transpose()?;
    let names: Vec<&FieldName> = write.fields.iter().map(|f| &f.name).collect();
    let replay = match &write.idempotency {
        Some(claim) => one(
            t,
            "SELECT record FROM pv_idempotency WHERE tenant = $1 AND subject = $2 AND scope = $3",
            &[&tenant.as_str(), &subject.as_str(), &claim.scope.as_slice()],
        )?
        .map(|row| IdempotencyRecord::decode(row.get(0)))
        .transpose()?,
        None => None,
    };
    Ok(PutReads {
        erased: found.get::<_, bool>(1),
        stored,
        current_kek: tenant_rec
            .shredded_at
            .is_none()
            .then_some(tenant_rec.kek_version),
        previous: fields_named(t, tenant, subject, &names)?,
        replay,
    })
}

/// `Store::put_fields`, in a transaction.
pub(super) fn put(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subject: &SubjectId, write: &SubjectWrite,
) -> R<Vec<Written>> {
    let plan = rules::put(put_reads(t, tenant, subject, write)?, write)?;
    apply(t, tenant, subject, &plan.changes)?;
    if let Some(change) = &plan.idempotency {
        exec(
            t,
            "INSERT INTO pv_idempotency (tenant, subject, scope, expires_at, record)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant, subject, scope)
             DO UPDATE SET expires_at = EXCLUDED.expires_at, record = EXCLUDED.record",
            &[
                &tenant.as_str(),
                &subject.as_str(),
                &change.scope.as_slice(),
                &ts(change.record.expires_at),
                &change.record.encode(),
            ],
        )?;
    }
    Ok(plan.written)
}

/// `Store::delete_fields`, in a transaction.
pub(super) fn delete(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subject: &SubjectId, names: &[FieldName],
) -> R<u32> {
    require_tenant(t, tenant)?;
    let record = subject_row(t, tenant, subject)?;
    let named: Vec<&FieldName> = names.iter().collect();
    let stored = fields_named(t, tenant, subject, &named)?;
    let (changes, deleted) = rules::delete_fields(record, names, stored);
    apply(t, tenant, subject, &changes)?;
    Ok(deleted)
}

/// `Store::delete_expired`, in a transaction.
pub(super) fn expire(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subject: &SubjectId, name: &FieldName,
    expires_at: Timestamp,
) -> R<bool> {
    require_tenant(t, tenant)?;
    let field = field_row(t, tenant, subject, name)?;
    let record = subject_row(t, tenant, subject)?;
    let (changes, deleted) = rules::delete_expired(name, expires_at, field, record);
    apply(t, tenant, subject, &changes)?;
    Ok(deleted)
}

/// `Store::reindex_field`, in a transaction.
pub(super) fn reindex(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subject: &SubjectId, name: &FieldName,
    entry: &[u8],
) -> R<()> {
    require_tenant(t, tenant)?;
    let record = subject_row(t, tenant, subject)?;
    let field = field_row(t, tenant, subject, name)?;
    apply(t, tenant, subject, &rules::reindex(record, field, entry))
}

pub(super) fn field_page(
    c: &Db<'_, Client>, tenant: &TenantId, subject: &SubjectId, after: Option<&FieldName>, n: usize,
) -> R<Vec<FieldRecord>> {
    tenant_rows(
        c,
        tenant,
        "SELECT record FROM pv_fields
         WHERE tenant = $1 AND subject = $2 AND ($3::text IS NULL OR name > $3)
         ORDER BY name LIMIT $4",
        &[
            &tenant.as_str(),
            &subject.as_str(),
            &after.map(|a| a.as_str()),
            &limit(n),
        ],
    )?
    .iter()
    .map(|r| Ok(FieldRecord::decode(r.get(0))?))
    .collect()
}

pub(super) fn expiry_page(
    c: &Db<'_, Client>, tenant: &TenantId, now: Timestamp, n: usize,
) -> R<Vec<(SubjectId, FieldName, Timestamp)>> {
    tenant_rows(
        c,
        tenant,
        "SELECT subject, name, at FROM pv_expiry WHERE tenant = $1 AND at <= $2
         ORDER BY at, subject, name LIMIT $3",
        &[&tenant.as_str(), &ts(now), &limit(n)],
    )?
    .iter()
    .map(|r| {
        Ok((
            subject_id(r.get(0))?,
            field_name(r.get(1))?,
            to_ts(r.get(2), "expiry entry")?,
        ))
    })
    .collect()
}

/// `Store::prune_idempotency`, in a transaction.
pub(super) fn prune_idempotency(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, now: Timestamp, n: usize,
) -> R<usize> {
    require_tenant(t, tenant)?;
    let deleted = exec(
        t,
        "DELETE FROM pv_idempotency WHERE (tenant, subject, scope) IN (
             SELECT tenant, subject, scope FROM pv_idempotency
             WHERE tenant = $1 AND expires_at <= $2 ORDER BY expires_at LIMIT $3)",
        &[&tenant.as_str(), &ts(now), &limit(n)],
    )?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}
