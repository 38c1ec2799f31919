//! Record use cases: put, get and delete fields of a subject; list subjects; find subjects
//! by a blind index (`lookup`); card tokens (`tokens`). The writes' sealing and retry are in
//! `write`, the reads' opening in `read`.

mod lookup;
mod read;
mod tokens;
mod write;

use std::collections::HashSet;

pub use tokens::{token_field, TokenSettings, Tokenized};

use write::Once;

use crate::audit::Operation;
use crate::authz::act;
use crate::domain::typed::is_card_verification_name;
use crate::domain::{
    Field, FieldMeta, FieldName, IdempotencyKey, InvalidInput, NewField, Purpose, SubjectId,
    TenantId,
};

use super::tenants::paged;
use super::usecase::{no_detail, Check};
use super::{Call, ServiceError, Vault};

/// One page of subject ids.
#[derive(Debug)]
pub struct SubjectPage {
    pub subjects: Vec<SubjectId>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<SubjectId>,
}

impl Vault {
    fn check_names<'a>(
        &self, names: impl ExactSizeIterator<Item = &'a FieldName>,
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
            if is_card_verification_name(f.name.as_str()) {
                return Err(InvalidInput::new(format!(
                    "field {} looks like a card verification code (CVV/CVC): PCI DSS forbids storing it",
                    f.name
                ))
                .into());
            }
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
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId, fields: &[NewField],
    ) -> Result<Vec<FieldMeta>, ServiceError> {
        self.put_fields_once(call, tenant, subject, fields, None)
            .await
    }

    /// `put_fields` under the caller's idempotency key, when it sent one: the same request
    /// sent again by the same caller within `IDEMPOTENCY_RETENTION` gets the first answer
    /// and writes nothing (its audit event says so); another request under the key is
    /// refused (`IdempotencyKeyReused`).
    pub async fn put_fields_once(
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId, fields: &[NewField],
        key: Option<&IdempotencyKey>,
    ) -> Result<Vec<FieldMeta>, ServiceError> {
        let once = key.map(|key| Once {
            operation: "PutFields",
            key,
            names_by_vault: false,
        });
        let written = self
            .use_case(call, Operation::PutFields)
            .tenant(tenant)
            .subject(subject)
            .fields(fields.iter().map(|f| &f.name))
            .run(
                Check::action(act::Write, Some(tenant)),
                |grant| async move {
                    self.write_to_subject(&grant, call, tenant, subject, fields, once)
                        .await
                },
                |written, ev| ev.reason = write::rectification_trail(written),
            )
            // The audit append's flush also makes the field write durable.
            .await?;
        Ok(written.into_iter().map(|w| w.meta).collect())
    }

    /// Reads the named fields of a subject, or all of them when `names` is empty, for a
    /// declared purpose. The values are returned only after the read's audit event is durable.
    pub async fn get_fields(
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId, names: &[FieldName],
        purpose: &Purpose,
    ) -> Result<Vec<Field>, ServiceError> {
        let check = Check::Subject {
            action: act::Read,
            tenant,
            subject,
            purpose: Some(purpose),
        };
        self.use_case(call, Operation::GetFields)
            .tenant(tenant)
            .subject(subject)
            .purpose(purpose)
            .fields(names)
            .run(
                check,
                |grant| async move { self.read_fields(&grant, tenant, subject, names) },
                |fields: &Vec<Field>, ev| {
                    ev.fields = fields.iter().map(|f| f.meta.name.to_string()).collect();
                },
            )
            .await
    }

    /// Deletes the named fields; returns how many existed. Durable before it returns.
    pub async fn delete_fields(
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId, names: &[FieldName],
    ) -> Result<u32, ServiceError> {
        self.use_case(call, Operation::DeleteFields)
            .tenant(tenant)
            .subject(subject)
            .fields(names)
            .run(
                Check::action(act::Delete, Some(tenant)),
                |grant| async move { self.remove_fields(&grant, tenant, subject, names) },
                no_detail,
            )
            .await
    }

    /// Subjects of a tenant, `limit` at a time, after `after`.
    pub async fn list_subjects(
        &self, call: &Call, tenant: &TenantId, after: Option<&SubjectId>, limit: usize,
    ) -> Result<SubjectPage, ServiceError> {
        self.use_case(call, Operation::ListSubjects)
            .tenant(tenant)
            .run(
                Check::action(act::List, Some(tenant)),
                |_| async move {
                    // A shredded tenant answers NOT_FOUND here too, like every other call
                    // about it.
                    self.tenant_record(tenant)?;
                    let mut all = self.store.subjects(tenant, after, limit + 1)?;
                    all.retain(|s| !s.is_reserved());
                    let (subjects, next) = paged(all, limit, |s: &SubjectId| s);
                    Ok(SubjectPage { subjects, next })
                },
                no_detail,
            )
            .await
    }
}
