//! The read path: find a subject's stored fields (its legal shadow's too), open each under
//! the DEK version its envelope names, render it as the grant allows. Deleting named fields
//! is here too: it checks the same grant per stored category.

use crate::authz::{act, Grant};
use crate::domain::{Field, FieldName, FieldValue, InvalidInput, SubjectId, TenantId};
use crate::keyring::SubjectDeks;
use crate::storage::FieldRecord;

use super::super::{ServiceError, Vault};
use super::write::field_aad;

impl Vault {
    /// Opens a stored field's value.
    pub(in crate::service) fn open_value(
        tenant: &TenantId, subject: &SubjectId, deks: &SubjectDeks, rec: &FieldRecord,
    ) -> Result<FieldValue, ServiceError> {
        let aad = field_aad(tenant, subject, &rec.meta.name, rec.meta.category, rec.kind);
        let damaged = || ServiceError::Internal(format!("field {} does not open", rec.meta.name));
        // The envelope names the DEK version that sealed it.
        let dek = deks.version(rec.sealed.key_version()).ok_or_else(damaged)?;
        let plain = dek.open(&rec.sealed, &aad).map_err(|_| damaged())?;
        FieldValue::from_parts(rec.kind, plain.to_vec()).ok_or_else(damaged)
    }

    fn open_field(
        grant: &Grant<impl act::ReadsFields>, tenant: &TenantId, subject: &SubjectId,
        deks: &SubjectDeks, rec: FieldRecord,
    ) -> Result<Field, ServiceError> {
        let (render, _rule) = grant.category(rec.meta.category)?;
        let value = Self::open_value(tenant, subject, deks, &rec)?;
        Ok(Field {
            meta: rec.meta,
            value: value.render(render),
            render,
        })
    }

    /// Named fields must all be of categories the grant covers; reading every field returns
    /// those the grant covers.
    pub(in crate::service) fn read_fields(
        &self, grant: &Grant<impl act::ReadsFields>, tenant: &TenantId, subject: &SubjectId,
        names: &[FieldName],
    ) -> Result<Vec<Field>, ServiceError> {
        self.check_names(names.iter())?;
        self.tenant_record(tenant)?;
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
            // Card tokens are read through TokenService (a `detokenize` grant), never here.
            found.retain(|(_, r)| {
                !r.meta.name.is_token() && grant.category(r.meta.category).is_ok()
            });
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

    pub(super) fn remove_fields(
        &self, grant: &Grant<act::Delete>, tenant: &TenantId, subject: &SubjectId,
        names: &[FieldName],
    ) -> Result<u32, ServiceError> {
        if names.is_empty() {
            return Err(InvalidInput::new("no fields to delete").into());
        }
        self.check_names(names.iter())?;
        self.tenant_record(tenant)?;
        self.live_subject(tenant, subject)?;
        for name in names {
            if let Some(rec) = self.store.field(tenant, subject, name)? {
                grant.category(rec.meta.category)?;
            }
        }
        Ok(self.store.delete_fields(tenant, subject, names)?)
    }
}
