//! Record use cases: put, get and delete fields of a subject; list subjects.

use std::collections::HashSet;

use crate::audit::Operation;
use crate::authz::{Action, Grant};
use crate::crypto::Aad;
use crate::domain::typed::is_card_verification_name;
use crate::domain::{
    Category, Field, FieldMeta, FieldName, FieldValue, InvalidInput, NewField, Purpose, SubjectId,
    TenantId,
};
use crate::keyring::SubjectDeks;
use crate::storage::{FieldRecord, SealedField, StoreError, SubjectWrite, Written};

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
        let result = match self.authorize(call, &mut ev, Action::Write, Some(tenant), None) {
            Ok(grant) => {
                self.write_to_subject(&grant, call, tenant, subject, fields)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Ok(written) = &result {
            // Rectification trail: what each replaced version was, when and by whom it was
            // written; never the value.
            ev.reason = written
                .iter()
                .filter_map(|w| {
                    let p = w.previous.as_ref()?;
                    let (secs, _) = p.updated_at.seconds_nanos();
                    Some(format!(
                        "{} v{} (written at {secs} by {}) -> v{}",
                        p.name, p.version, p.updated_by, w.meta.version
                    ))
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
        // The audit append's flush also makes the field write durable.
        let result = result.map(|w| w.into_iter().map(|w| w.meta).collect());
        self.record(ev, result).await
    }

    /// Writes `fields` to the subject, or, when they are payment transaction records, to its
    /// legal shadow (creating the subject itself first, so its erasure covers the shadow).
    async fn write_to_subject(
        &self,
        grant: &Grant,
        call: &Call,
        tenant: &TenantId,
        subject: &SubjectId,
        fields: &[NewField],
    ) -> Result<Vec<Written>, ServiceError> {
        let records = fields.iter().filter(|f| f.transaction_record).count();
        if records == 0 {
            return self
                .write_fields(grant, call.caller.as_str(), tenant, subject, fields)
                .await;
        }
        if records != fields.len() {
            return Err(InvalidInput::new(
                "transaction records are written in a request of their own (they live under a separate key)",
            )
            .into());
        }
        self.ensure_subject(call, tenant, subject).await?;
        self.write_fields(
            grant,
            call.caller.as_str(),
            tenant,
            &subject.legal_shadow(),
            fields,
        )
        .await
    }

    /// Creates the subject (its record and key) if it does not exist; refuses erased ones.
    async fn ensure_subject(
        &self,
        call: &Call,
        tenant: &TenantId,
        subject: &SubjectId,
    ) -> Result<(), ServiceError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let (record, _dek) = self.sealing_key(tenant, subject, 0).await?;
            let write = SubjectWrite {
                subject: record,
                fields: Vec::new(),
                now: self.clock.now(),
                by: call.caller.to_string(),
            };
            match self.store.put_fields(tenant, subject, &write) {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Internal(
            "too many concurrent writes to one subject".into(),
        ))
    }

    pub(super) async fn write_fields(
        &self,
        grant: &Grant,
        by: &str,
        tenant: &TenantId,
        subject: &SubjectId,
        fields: &[NewField],
    ) -> Result<Vec<Written>, ServiceError> {
        self.check_put(fields)?;
        for f in fields {
            grant.category(f.category)?;
        }
        let index_key = match fields.iter().any(NewField::is_indexed) {
            true => self.keys.index_keys(tenant)?.first().cloned(),
            false => None,
        };
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
                        expires_at: self.retention.expiry(f.category, f.ttl, self.clock.now()),
                        index_entry: match (&index_key, f.is_indexed()) {
                            (Some(key), true) => super::lookup::index_text(&f.value)
                                .map(|text| super::lookup::entry(key, &f.name, &text, subject))
                                .unwrap_or_default(),
                            _ => Vec::new(),
                        },
                    })
                })
                .collect::<Result<Vec<_>, ServiceError>>()?;
            let write = SubjectWrite {
                subject: record,
                fields: sealed,
                now: self.clock.now(),
                by: by.to_owned(),
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

    /// Opens a stored field's value.
    pub(super) fn open_value(
        tenant: &TenantId,
        subject: &SubjectId,
        deks: &SubjectDeks,
        rec: &FieldRecord,
    ) -> Result<FieldValue, ServiceError> {
        let aad = field_aad(tenant, subject, &rec.meta.name, rec.meta.category, rec.kind);
        let damaged = || ServiceError::Internal(format!("field {} does not open", rec.meta.name));
        // The envelope names the DEK version that sealed it.
        let dek = deks.version(rec.sealed.key_version()).ok_or_else(damaged)?;
        let plain = dek.open(&rec.sealed, &aad).map_err(|_| damaged())?;
        FieldValue::from_parts(rec.kind, plain.to_vec()).ok_or_else(damaged)
    }

    fn open_field(
        grant: &Grant,
        tenant: &TenantId,
        subject: &SubjectId,
        deks: &SubjectDeks,
        rec: FieldRecord,
    ) -> Result<Field, ServiceError> {
        let (render, _rule) = grant.category(rec.meta.category)?;
        let value = Self::open_value(tenant, subject, deks, &rec)?;
        Ok(Field {
            meta: rec.meta,
            value: value.render(render),
            render,
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
        let result = self
            .authorize_subject(call, &mut ev, Action::Read, tenant, subject, Some(purpose))
            .and_then(|grant| self.read_fields(&grant, tenant, subject, names));
        if let Ok(fields) = &result {
            ev.fields = fields.iter().map(|f| f.meta.name.to_string()).collect();
        }
        self.record(ev, result).await
    }

    /// Named fields must all be of categories the grant covers; reading every field returns
    /// those the grant covers.
    pub(super) fn read_fields(
        &self,
        grant: &Grant,
        tenant: &TenantId,
        subject: &SubjectId,
        names: &[FieldName],
    ) -> Result<Vec<Field>, ServiceError> {
        self.check_names(names.iter())?;
        self.tenant(tenant)?;
        let record = self.live_subject(tenant, subject)?;
        // Transaction records live in the subject's legal shadow, under a key of its own.
        let shadow = subject.legal_shadow();
        let shadow_record = self.store.subject(tenant, &shadow)?;
        let mut found: Vec<(bool, FieldRecord)> = Vec::new();
        if names.is_empty() {
            found.extend(
                self.store
                    .fields(tenant, subject)?
                    .into_iter()
                    .map(|r| (false, r)),
            );
            if shadow_record.is_some() {
                found.extend(
                    self.store
                        .fields(tenant, &shadow)?
                        .into_iter()
                        .map(|r| (true, r)),
                );
            }
            found.retain(|(_, r)| grant.category(r.meta.category).is_ok());
        } else {
            for n in names {
                let rec = match self.store.field(tenant, subject, n)? {
                    Some(r) => (false, r),
                    None => match shadow_record
                        .as_ref()
                        .map(|_| self.store.field(tenant, &shadow, n))
                    {
                        Some(Ok(Some(r))) => (true, r),
                        Some(Err(e)) => return Err(e.into()),
                        _ => return Err(ServiceError::FieldNotFound(n.clone())),
                    },
                };
                found.push(rec);
            }
        }
        // Storage order is by encoded key (length first); callers get name order.
        found.sort_by(|a, b| a.1.meta.name.cmp(&b.1.meta.name));
        let deks = self.subject_deks(tenant, subject, &record)?;
        let shadow_dek = match &shadow_record {
            Some(r) if found.iter().any(|(in_shadow, _)| *in_shadow) => {
                Some(self.subject_deks(tenant, &shadow, r)?)
            }
            _ => None,
        };
        found
            .into_iter()
            .map(|(in_shadow, rec)| match (in_shadow, &shadow_dek) {
                (true, Some(d)) => Self::open_field(grant, tenant, &shadow, d, rec),
                _ => Self::open_field(grant, tenant, subject, &deks, rec),
            })
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
        let result = self
            .authorize(call, &mut ev, Action::Delete, Some(tenant), None)
            .and_then(|grant| self.remove_fields(&grant, tenant, subject, names));
        self.record(ev, result).await
    }

    fn remove_fields(
        &self,
        grant: &Grant,
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
        for name in names {
            if let Some(rec) = self.store.field(tenant, subject, name)? {
                grant.category(rec.meta.category)?;
            }
        }
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
            .authorize(call, &mut ev, Action::Read, Some(tenant), None)
            .and_then(|_| self.tenant(tenant))
            .and_then(|_| Ok(self.store.subjects(tenant, after, limit + 1)?))
            .map(|mut all| {
                all.retain(|s| !s.is_reserved());
                let (subjects, next) = paged(all, limit, |s: &SubjectId| s);
                SubjectPage { subjects, next }
            });
        self.record(ev, result).await
    }
}
