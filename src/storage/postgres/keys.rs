//! The PostgreSQL side of tenants and key management: tenant records, wrapped KEK versions,
//! tenant key states, and the transactions that rotate, re-wrap and destroy keys.

use tokio_postgres::{Client, Transaction};

use crate::crypto::Sealed;
use crate::domain::{SubjectId, TenantId};
use crate::storage::records::{SubjectRecord, TenantRecord};
use crate::storage::{KeyChange, KeyUpdate, StoreError, SubjectUpdate, TenantKeyState};

use super::conn::{exec, one, rows, tenant_one, tenant_rows, Db};
use super::error::{Failure, R};
use super::rows::{
    current_kek, decode_subject, limit, mark_epoch, put_subject, sealed, subject_id, subject_row,
    tenant_id, tenant_record, SUBJECT_RECORD,
};

pub(super) fn add_tenant(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantRecord, wrapped_kek: &Sealed,
) -> R<bool> {
    let id = tenant.id.as_str();
    if one(t, "SELECT 1 FROM pv_tenants WHERE id = $1", &[&id])?.is_some() {
        return Ok(false);
    }
    exec(
        t,
        "INSERT INTO pv_tenants (id, record) VALUES ($1, $2)",
        &[&id, &tenant.encode()],
    )?;
    exec(
        t,
        "INSERT INTO pv_keks (tenant, version, wrapped) VALUES ($1, $2, $3)",
        &[&id, &(tenant.kek_version as i32), &wrapped_kek.encode()],
    )?;
    Ok(true)
}

pub(super) fn find_tenant(c: &Db<'_, Client>, id: &TenantId) -> R<Option<TenantRecord>> {
    match tenant_record(c, id) {
        Ok(r) => Ok(Some(r)),
        Err(Failure::Store(StoreError::NoTenant)) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn tenant_page(
    c: &Db<'_, Client>, after: Option<&TenantId>, n: usize,
) -> R<Vec<TenantRecord>> {
    rows(
        c,
        "SELECT record FROM pv_tenants WHERE $1::text IS NULL OR id > $1
         ORDER BY id LIMIT $2",
        &[&after.map(|a| a.as_str()), &limit(n)],
    )?
    .iter()
    .map(|r| Ok(TenantRecord::decode(r.get(0))?))
    .collect()
}

pub(super) fn find_kek(c: &Db<'_, Client>, tenant: &TenantId, version: u32) -> R<Option<Sealed>> {
    one(
        c,
        "SELECT wrapped FROM pv_keks WHERE tenant = $1 AND version = $2",
        &[&tenant.as_str(), &(version as i32)],
    )?
    .map(|r| sealed(r.get(0), "wrapped KEK"))
    .transpose()
}

pub(super) fn tenant_keks(c: &Db<'_, Client>, tenant: &TenantId) -> R<Vec<(u32, Sealed)>> {
    rows(
        c,
        "SELECT version, wrapped FROM pv_keks WHERE tenant = $1 ORDER BY version",
        &[&tenant.as_str()],
    )?
    .iter()
    .map(|r| Ok((r.get::<_, i32>(0) as u32, sealed(r.get(1), "wrapped KEK")?)))
    .collect()
}

pub(super) fn swap_kek(
    c: &Db<'_, Client>, tenant: &TenantId, version: u32, expected: &Sealed, new: &Sealed,
) -> R<bool> {
    let n = exec(
        c,
        "UPDATE pv_keks SET wrapped = $4
         WHERE tenant = $1 AND version = $2 AND wrapped = $3",
        &[
            &tenant.as_str(),
            &(version as i32),
            &expected.encode(),
            &new.encode(),
        ],
    )?;
    Ok(n == 1)
}

pub(super) fn key_state(c: &Db<'_, Client>, tenant: &TenantId) -> R<Option<TenantKeyState>> {
    one(
        c,
        "SELECT state FROM pv_key_state WHERE tenant = $1",
        &[&tenant.as_str()],
    )?
    .map(|r| Ok(TenantKeyState::decode(r.get(0))?))
    .transpose()
}

pub(super) fn every_tenant_keys(c: &Db<'_, Client>) -> R<Vec<(TenantId, TenantKeyState)>> {
    rows(
        c,
        "SELECT tenant, state FROM pv_key_state ORDER BY tenant",
        &[],
    )?
    .iter()
    .map(|r| Ok((tenant_id(r.get(0))?, TenantKeyState::decode(r.get(1))?)))
    .collect()
}

pub(super) fn apply_key_update(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, update: &KeyUpdate<'_>,
) -> R<Option<KeyChange>> {
    let id = tenant.as_str();
    let Some(row) = one(
        t,
        "SELECT record FROM pv_tenants WHERE id = $1 FOR UPDATE",
        &[&id],
    )?
    else {
        return Err(StoreError::NoTenant.into());
    };
    let record = TenantRecord::decode(row.get(0))?;
    let state = match one(
        t,
        "SELECT state FROM pv_key_state WHERE tenant = $1",
        &[&id],
    )? {
        Some(r) => TenantKeyState::decode(r.get(0))?,
        None => TenantKeyState::initial(&record),
    };
    let Some(change) = update(&record, &state) else {
        return Ok(None);
    };
    exec(
        t,
        "UPDATE pv_tenants SET record = $2 WHERE id = $1",
        &[&id, &change.tenant.encode()],
    )?;
    exec(
        t,
        "INSERT INTO pv_key_state (tenant, state) VALUES ($1, $2)
         ON CONFLICT (tenant) DO UPDATE SET state = EXCLUDED.state",
        &[&id, &change.state.encode()],
    )?;
    for (version, wrapped) in &change.put_keks {
        exec(
            t,
            "INSERT INTO pv_keks (tenant, version, wrapped) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, version) DO UPDATE SET wrapped = EXCLUDED.wrapped",
            &[&id, &(*version as i32), &wrapped.encode()],
        )?;
    }
    for version in &change.delete_keks {
        exec(
            t,
            "DELETE FROM pv_keks WHERE tenant = $1 AND version = $2",
            &[&id, &(*version as i32)],
        )?;
    }
    if change.mark_epoch {
        mark_epoch(t, tenant)?;
    }
    Ok(Some(change))
}

pub(super) fn find_subject(
    c: &Db<'_, Client>, tenant: &TenantId, subject: &SubjectId,
) -> R<Option<SubjectRecord>> {
    let found = tenant_one(
        c,
        tenant,
        SUBJECT_RECORD,
        &[&tenant.as_str(), &subject.as_str()],
    )?;
    found.map(|r| decode_subject(&r)).transpose()
}

pub(super) fn subject_ids(
    c: &Db<'_, Client>, tenant: &TenantId, after: Option<&SubjectId>, n: usize,
) -> R<Vec<SubjectId>> {
    tenant_rows(
        c,
        tenant,
        "SELECT subject FROM pv_subjects
         WHERE tenant = $1 AND ($2::text IS NULL OR subject > $2)
         ORDER BY subject LIMIT $3",
        &[&tenant.as_str(), &after.map(|a| a.as_str()), &limit(n)],
    )?
    .iter()
    .map(|r| subject_id(r.get(0)))
    .collect()
}

pub(super) fn subject_page(
    c: &Db<'_, Client>, tenant: &TenantId, after: Option<&SubjectId>, n: usize,
) -> R<Vec<(SubjectId, SubjectRecord)>> {
    tenant_rows(
        c,
        tenant,
        "SELECT subject, record FROM pv_subjects
         WHERE tenant = $1 AND ($2::text IS NULL OR subject > $2)
         ORDER BY subject LIMIT $3",
        &[&tenant.as_str(), &after.map(|a| a.as_str()), &limit(n)],
    )?
    .iter()
    .map(|r| Ok((subject_id(r.get(0))?, SubjectRecord::decode(r.get(1))?)))
    .collect()
}

/// `Store::update_subjects`, in a transaction.
pub(super) fn update_subjects(
    t: &Db<'_, Transaction<'_>>, tenant: &TenantId, subjects: &[SubjectId],
    update: &SubjectUpdate<'_>,
) -> R<Vec<bool>> {
    let Some(current) = current_kek(t, tenant)? else {
        return Ok(vec![false; subjects.len()]);
    };
    let mut changed = Vec::with_capacity(subjects.len());
    for id in subjects {
        let Some(stored) = subject_row(t, tenant, id)? else {
            changed.push(false);
            continue;
        };
        match update(id, &stored, current) {
            Some(new) => {
                put_subject(t, tenant, id, &new)?;
                changed.push(true);
            }
            None => changed.push(false),
        }
    }
    Ok(changed)
}
