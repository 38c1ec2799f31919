//! The key a write seals under: the subject's current DEK, with the encryptions it is about
//! to do counted (reserved durably first) and the DEK replaced when it reached its limit.

use std::sync::Arc;

use crate::crypto::{Dek, Key};
use crate::domain::{SubjectId, TenantId};
use crate::keyring::{KeyringError, SealGrant, SubjectDeks};
use crate::storage::SubjectRecord;

use super::super::retry::Attempt;
use super::super::{ServiceError, Vault};

impl Vault {
    /// One attempt at the subject's record and current DEK, with `seals` encryptions
    /// granted under it; creates both (not stored yet) if the subject is new. The record is
    /// what the write must find unchanged when it stores its fields
    /// (`SubjectRecord::same_key`). `Again` when the subject's keys changed under us (the
    /// DEK reached its limit and was replaced, the record was stale, its KEK version was
    /// retired by a re-wrap): the caller's retry loop (`retry::WRITE`) starts over.
    pub(in crate::service) async fn sealing_key(
        &self, tenant: &TenantId, subject: &SubjectId, seals: usize,
    ) -> Result<Attempt<(SubjectRecord, Arc<Key<Dek>>)>, ServiceError> {
        let tenant_rec = self.tenant_record(tenant)?;
        let Some(record) = self.store.subject(tenant, subject)? else {
            // A new subject's reservation is stored with it, with the values it seals.
            let (dek, record) =
                self.keys
                    .new_subject(&tenant_rec, subject, self.clock.now(), seals)?;
            return Ok(Attempt::Done((record, Arc::new(dek))));
        };
        match self.keys.reserve_seals(tenant, subject, &record, seals)? {
            SealGrant::Granted(None) => {}
            SealGrant::Granted(Some(token)) => {
                // The reservation must be on disk before the DEK encrypts anything.
                self.commit.durable().await?;
                self.keys
                    .seals_durable(tenant, subject, record.dek_version, token);
            }
            SealGrant::Exhausted => {
                let rotated = self.keys.rotate_dek(&tenant_rec, subject, &record)?;
                if rotated {
                    tracing::debug!(%tenant, "subject key reached its usage limit; new DEK version");
                }
                return Ok(Attempt::Again);
            }
            SealGrant::Stale => return Ok(Attempt::Again),
        }
        match self.keys.subject_dek(tenant, subject, &record) {
            Ok(dek) => Ok(Attempt::Done((record, dek))),
            // Re-wrapped and its old KEK version destroyed since we read it.
            Err(KeyringError::Retired) => Ok(Attempt::Again),
            Err(e) => Err(e.into()),
        }
    }

    /// Every DEK version of a subject whose record was just read. If a re-wrap destroyed the
    /// KEK version the record names in the meantime, the record is read again (the DEKs
    /// themselves are the same, only their wraps changed).
    pub(in crate::service) fn subject_deks(
        &self, tenant: &TenantId, subject: &SubjectId, record: &SubjectRecord,
    ) -> Result<SubjectDeks, ServiceError> {
        match self.keys.subject_deks(tenant, subject, record) {
            Err(KeyringError::Retired) => {
                let fresh = self.live_subject(tenant, subject)?;
                Ok(self.keys.subject_deks(tenant, subject, &fresh)?)
            }
            other => Ok(other?),
        }
    }
}
