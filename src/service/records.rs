//! Record use cases: put, get and delete fields of a subject; list subjects.

use std::collections::HashSet;

use crate::audit::Operation;
use crate::crypto::Aad;
use crate::domain::{
    Category, Field, FieldMeta, FieldName, FieldValue, InvalidInput, NewField, Purpose, SubjectId,
    TenantId,
};
use crate::keyring::SubjectDeks;
use crate::storage::{FieldRecord, SealedField, StoreError, SubjectWrite};

use super::tenants::paged;
use super::{Call, ServiceError, Vault};

/// How often a write retries when another write to the same subject won the race.
const MAX_CONFLICT_RETRIES: usize = 16;

/// One page of subject ids.
#[derive(Debug)]
pub struct SubjectPage {
    pub subjects: Vec<SubjectId>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<SubjectId>,
}

/// The context a field ciphertext is bound to: moving it to another tenant, subject or
/// field, or relabelling its category or kind, makes it fail to open. The DEK version is
/// bound by the envelope itself.
fn field_aad(
    tenant: &TenantId,
    subject: &SubjectId,
    name: &FieldName,
    category: Category,
    kind: u8,
) -> Aad {
    Aad::new("field")
        .with(tenant.as_str().as_bytes())
        .with(subject.as_str().as_bytes())
        .with(name.as_str().as_bytes())
        .with(&[category.code(), kind])
}

impl Vault {
    fn check_names<'a>(
        &self,
        names: impl ExactSizeIterator<Item = &'a FieldName>,
    ) -> Result<(), ServiceError> {
        let max = self.limits.max_fields_per_request;
        if names.len() > max {
            return Err(InvalidInput::new(format!(
                "{} fields in one request; the limit is {max}",
                names.len()
            ))
            .into());
        }
        let mut seen = HashSet::new();
        for name in names {
            if !seen.insert(name) {
                return Err(InvalidInput::new(format!("field {name} is named twice")).into());
            }
        }
        Ok(())
    }

    fn check_put(&self, fields: &[NewField]) -> Result<(), ServiceError> {
        if fields.is_empty() {
            return Err(InvalidInput::new("no fields to write").into());
        }
        self.check_names(fields.iter().map(|f| &f.name))?;
        let max = self.limits.max_value_bytes;
        for f in fields {
            if f.value.len() > max {
                return Err(InvalidInput::new(format!(
                    "value of field {} is {} bytes; the limit is {max}",
                    f.name,
                    f.value.len()
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Upserts `fields` atomically, creating the subject (and its DEK) on first write.
    /// Returns once the write and its audit event are on disk.
    pub async fn put_fields(
        &self,
        call: &Call,
        tenant: &TenantId,
        subject: &SubjectId,
        fields: &[NewField],
    ) -> Result<Vec<FieldMeta>, ServiceError> {
        let mut ev = self.draft(call, Operation::PutFields);
        ev.tenant = tenant.to_string();
        ev.subject = subject.to_string();
        ev.fields = fields.iter().map(|f| f.name.to_string()).collect();
        let result = self.write_fields(tenant, subject, fields).await;
        if let Ok(written) = &result {
            // Rectification trail: the versions replaced, never the values.
            ev.reason = written
                .iter()
                .filter(|m| m.version > 1)
                .map(|m| format!("{} v{}->v{}", m.name, m.version - 1, m.version))
                .collect::<Vec<_>>()
                .join(",");
        }
        // The audit append's flush also makes the field write durable.
        self.record(ev, result).await
    }

    async fn write_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        fields: &[NewField],
    ) -> Result<Vec<FieldMeta>, ServiceError> {
        self.check_put(fields)?;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let (record, dek) = self.sealing_key(tenant, subject, fields.len()).await?;
            let sealed = fields
                .iter()
                .map(|f| {
                    let kind = f.value.kind_code();
                    let aad = field_aad(tenant, subject, &f.name, f.category, kind);
                    Ok(SealedField {
                        name: f.name.clone(),
                        category: f.category,
                        kind,
                        sealed: dek
                            .seal(f.value.as_bytes(), &aad)
                            .map_err(|_| ServiceError::Internal("sealing a field failed".into()))?,
                    })
                })
                .collect::<Result<Vec<_>, ServiceError>>()?;
            let write = SubjectWrite {
                subject: record,
                fields: sealed,
                now: self.clock.now(),
            };
            match self.store.put_fields(tenant, subject, &write) {
                Ok(written) => return Ok(written),
                // Another write created or re-keyed the subject first: seal again.
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Internal(
            "too many concurrent writes to one subject".into(),
        ))
    }

    fn open_field(
        tenant: &TenantId,
        subject: &SubjectId,
        deks: &SubjectDeks,
        rec: FieldRecord,
    ) -> Result<Field, ServiceError> {
        let aad = field_aad(tenant, subject, &rec.meta.name, rec.meta.category, rec.kind);
        let damaged = || ServiceError::Internal(format!("field {} does not open", rec.meta.name));
        // The envelope names the DEK version that sealed it.
        let dek = deks.version(rec.sealed.key_version()).ok_or_else(damaged)?;
        let plain = dek.open(&rec.sealed, &aad).map_err(|_| damaged())?;
        let value = FieldValue::from_parts(rec.kind, plain.to_vec()).ok_or_else(damaged)?;
        Ok(Field {
            meta: rec.meta,
            value,
        })
    }

    /// Reads the named fields of a subject, or all of them when `names` is empty, for a
    /// declared purpose. The values are returned only after the read's audit event is durable.
    pub async fn get_fields(
        &self,
        call: &Call,
        tenant: &TenantId,
        subject: &SubjectId,
        names: &[FieldName],
        purpose: &Purpose,
    ) -> Result<Vec<Field>, ServiceError> {
        let mut ev = self.draft(call, Operation::GetFields);
        ev.tenant = tenant.to_string();
        ev.subject = subject.to_string();
        ev.purpose = purpose.to_string();
        ev.fields = names.iter().map(ToString::to_string).collect();
        let result = self.read_fields(tenant, subject, names);
        if let Ok(fields) = &result {
            ev.fields = fields.iter().map(|f| f.meta.name.to_string()).collect();
        }
        self.record(ev, result).await
    }

    fn read_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        names: &[FieldName],
    ) -> Result<Vec<Field>, ServiceError> {
        self.check_names(names.iter())?;
        self.tenant(tenant)?;
        let record = self.live_subject(tenant, subject)?;
        let records = if names.is_empty() {
            self.store.fields(tenant, subject)?
        } else {
            let mut sorted: Vec<&FieldName> = names.iter().collect();
            sorted.sort();
            sorted
                .into_iter()
                .map(|n| {
                    self.store
                        .field(tenant, subject, n)?
                        .ok_or_else(|| ServiceError::FieldNotFound(n.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let deks = self.subject_deks(tenant, subject, &record)?;
        records
            .into_iter()
            .map(|rec| Self::open_field(tenant, subject, &deks, rec))
            .collect()
    }

    /// Deletes the named fields; returns how many existed. Durable before it returns.
    pub async fn delete_fields(
        &self,
        call: &Call,
        tenant: &TenantId,
        subject: &SubjectId,
        names: &[FieldName],
    ) -> Result<u32, ServiceError> {
        let mut ev = self.draft(call, Operation::DeleteFields);
        ev.tenant = tenant.to_string();
        ev.subject = subject.to_string();
        ev.fields = names.iter().map(ToString::to_string).collect();
        let result = self.remove_fields(tenant, subject, names);
        self.record(ev, result).await
    }

    fn remove_fields(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        names: &[FieldName],
    ) -> Result<u32, ServiceError> {
        if names.is_empty() {
            return Err(InvalidInput::new("no fields to delete").into());
        }
        self.check_names(names.iter())?;
        self.tenant(tenant)?;
        self.live_subject(tenant, subject)?;
        Ok(self.store.delete_fields(tenant, subject, names)?)
    }

    /// Subjects of a tenant, `limit` at a time, after `after`.
    pub async fn list_subjects(
        &self,
        call: &Call,
        tenant: &TenantId,
        after: Option<&SubjectId>,
        limit: usize,
    ) -> Result<SubjectPage, ServiceError> {
        let mut ev = self.draft(call, Operation::ListSubjects);
        ev.tenant = tenant.to_string();
        // A shredded tenant answers NOT_FOUND here too, like every other call about it.
        let result = self
            .tenant(tenant)
            .and_then(|_| Ok(self.store.subjects(tenant, after, limit + 1)?))
            .map(|all| {
                let (subjects, next) = paged(all, limit, |s: &SubjectId| s);
                SubjectPage { subjects, next }
            });
        self.record(ev, result).await
    }
}
