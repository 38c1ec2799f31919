//! The key a write seals under: the subject's current DEK, with the encryptions it is about
//! to do counted (reserved durably first) and the DEK replaced when it reached its limit.

use std::sync::Arc;

use crate::crypto::{Dek, Key};
use crate::domain::{SubjectId, TenantId};
use crate::keyring::{KeyringError, SealGrant, SubjectDeks};
use crate::storage::SubjectRecord;

use super::super::{ServiceError, Vault};

/// Rounds of "the record changed under us" before a write gives up.
const MAX_ATTEMPTS: usize = 32;

impl Vault {
    /// The subject's record and current DEK, with `seals` encryptions granted under it;
    /// creates both (not stored yet) if the subject is new. The record is what the write
    /// must find unchanged when it stores its fields (`SubjectRecord::same_key`).
    pub(in crate::service) async fn sealing_key(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        seals: usize,
    ) -> Result<(SubjectRecord, Arc<Key<Dek>>), ServiceError> {
        for _ in 0..MAX_ATTEMPTS {
            let tenant_rec = self.tenant(tenant)?;
            let Some(record) = self.store.subject(tenant, subject)? else {
                // A new subject's reservation is stored with it, with the values it seals.
                let (dek, record) =
                    self.keys
                        .new_subject(&tenant_rec, subject, self.clock.now(), seals)?;
                return Ok((record, Arc::new(dek)));
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
                    continue;
                }
                SealGrant::Stale => continue,
            }
            match self.keys.subject_dek(tenant, subject, &record) {
                Ok(dek) => return Ok((record, dek)),
                // Re-wrapped and its old KEK version destroyed since we read it.
                Err(KeyringError::Retired) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Internal(
            "the subject's keys kept changing during a write".into(),
        ))
    }

    /// Every DEK version of a subject whose record was just read. If a re-wrap destroyed the
    /// KEK version the record names in the meantime, the record is read again (the DEKs
    /// themselves are the same, only their wraps changed).
    pub(in crate::service) fn subject_deks(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        record: &SubjectRecord,
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
