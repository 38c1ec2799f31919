//! Rows and values of the PostgreSQL tables: conversions between the store's types and
//! column values, and the reads and writes of single records that several operations use.

use tokio_postgres::{GenericClient, Row};

use crate::crypto::Sealed;
use crate::domain::{FieldName, SubjectId, TenantId, Timestamp};
use crate::storage::records::{FieldRecord, SubjectRecord, TenantRecord};
use crate::storage::StoreError;

use super::conn::{exec, one, Db};
use super::error::{Failure, R};

pub(super) fn ts(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

pub(super) fn to_ts(v: i64, what: &'static str) -> R<Timestamp> {
    u64::try_from(v)
        .map(Timestamp)
        .map_err(|_| Failure::Store(StoreError::Corrupt(what)))
}

pub(super) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn tenant_id(s: &str) -> R<TenantId> {
    TenantId::parse(s).map_err(|_| Failure::Store(StoreError::Corrupt("tenant id")))
}

pub(super) fn subject_id(s: &str) -> R<SubjectId> {
    SubjectId::parse(s).map_err(|_| Failure::Store(StoreError::Corrupt("subject id")))
}

pub(super) fn field_name(s: &str) -> R<FieldName> {
    FieldName::parse(s).map_err(|_| Failure::Store(StoreError::Corrupt("field name")))
}

pub(super) fn sealed(bytes: &[u8], what: &'static str) -> R<Sealed> {
    Sealed::decode(bytes).map_err(|_| Failure::Store(StoreError::Corrupt(what)))
}

/// The first byte string after every string that starts with `prefix`; `None` if there is
/// none (the prefix is empty or all 0xff).
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The tenant's record; `NoTenant` if there is none.
pub(super) fn tenant_record<C: GenericClient>(c: &Db<'_, C>, tenant: &TenantId) -> R<TenantRecord> {
    match one(
        c,
        "SELECT record FROM pv_tenants WHERE id = $1",
        &[&tenant.as_str()],
    )? {
        Some(row) => Ok(TenantRecord::decode(row.get(0))?),
        None => Err(Failure::Store(StoreError::NoTenant)),
    }
}

/// The KEK version new DEKs must be wrapped under; `None` once the tenant is shredded.
pub(super) fn current_kek<C: GenericClient>(c: &Db<'_, C>, tenant: &TenantId) -> R<Option<u32>> {
    let rec = tenant_record(c, tenant)?;
    Ok(rec.shredded_at.is_none().then_some(rec.kek_version))
}

pub(super) fn require_tenant<C: GenericClient>(c: &Db<'_, C>, tenant: &TenantId) -> R<()> {
    tenant_record(c, tenant).map(|_| ())
}

pub(super) fn subject_row<C: GenericClient>(
    c: &Db<'_, C>, tenant: &TenantId, subject: &SubjectId,
) -> R<Option<SubjectRecord>> {
    one(c, SUBJECT_RECORD, &[&tenant.as_str(), &subject.as_str()])?
        .map(|r| decode_subject(&r))
        .transpose()
}

pub(super) const SUBJECT_RECORD: &str =
    "SELECT record FROM pv_subjects WHERE tenant = $1 AND subject = $2";

pub(super) fn decode_subject(row: &Row) -> R<SubjectRecord> {
    Ok(SubjectRecord::decode(row.get(0))?)
}

pub(super) fn put_subject<C: GenericClient>(
    c: &Db<'_, C>, tenant: &TenantId, subject: &SubjectId, record: &SubjectRecord,
) -> R<()> {
    exec(
        c,
        "INSERT INTO pv_subjects (tenant, subject, record) VALUES ($1, $2, $3)
         ON CONFLICT (tenant, subject) DO UPDATE SET record = EXCLUDED.record",
        &[&tenant.as_str(), &subject.as_str(), &record.encode()],
    )?;
    Ok(())
}

pub(super) fn field_row<C: GenericClient>(
    c: &Db<'_, C>, tenant: &TenantId, subject: &SubjectId, name: &FieldName,
) -> R<Option<FieldRecord>> {
    one(
        c,
        FIELD_RECORD,
        &[&tenant.as_str(), &subject.as_str(), &name.as_str()],
    )?
    .map(|r| decode_field(&r))
    .transpose()
}

pub(super) const FIELD_RECORD: &str =
    "SELECT record FROM pv_fields WHERE tenant = $1 AND subject = $2 AND name = $3";

pub(super) fn decode_field(row: &Row) -> R<FieldRecord> {
    Ok(FieldRecord::decode(row.get(0))?)
}

pub(super) fn mark_epoch<C: GenericClient>(c: &Db<'_, C>, tenant: &TenantId) -> R<()> {
    exec(
        c,
        "INSERT INTO pv_epoch_pending (tenant, erasures) VALUES ($1, 1)
         ON CONFLICT (tenant) DO UPDATE SET erasures = pv_epoch_pending.erasures + 1",
        &[&tenant.as_str()],
    )?;
    Ok(())
}

pub(super) fn meta_value<C: GenericClient>(c: &Db<'_, C>, key: &str) -> R<Option<Vec<u8>>> {
    Ok(one(c, "SELECT value FROM pv_meta WHERE key = $1", &[&key])?.map(|r| r.get(0)))
}

pub(super) fn set_meta<C: GenericClient>(c: &Db<'_, C>, key: &str, value: &[u8]) -> R<()> {
    exec(
        c,
        "INSERT INTO pv_meta (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&key, &value],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_string_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
