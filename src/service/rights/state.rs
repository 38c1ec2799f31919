//! Restriction of processing and consent: the subject state that reads are checked against
//! (in `authz::Authz::decide_for_subject`).

use crate::audit::Operation;
use crate::authz::act;
use crate::domain::{Consent, InvalidInput, Purpose, SubjectId, SubjectState, TenantId};
use crate::storage::StateRecord;

use super::super::usecase::{no_detail, Check};
use super::super::{Call, ServiceError, Vault};

/// A change to a subject's state.
#[derive(Clone, Debug)]
pub enum StateChange {
    Restrict,
    Lift,
    Consent {
        purpose: Purpose,
        granted: bool,
        source: String,
    },
}

impl Vault {
    /// Applies `change` (or, with `None`, only reads the state).
    pub async fn subject_state(
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId, change: Option<StateChange>,
    ) -> Result<SubjectState, ServiceError> {
        // Restriction changes need `restrict`; reading the state and consent need `consent`.
        let (op, restrict) = match &change {
            None => (Operation::ListConsents, false),
            Some(StateChange::Restrict) => (Operation::RestrictSubject, true),
            Some(StateChange::Lift) => (Operation::LiftRestriction, true),
            Some(StateChange::Consent { .. }) => (Operation::SetConsent, false),
        };
        let mut case = self.use_case(call, op).tenant(tenant).subject(subject);
        if let Some(StateChange::Consent {
            purpose, granted, ..
        }) = &change
        {
            case = case
                .purpose(purpose)
                .reason(if *granted { "granted" } else { "withdrawn" });
        }
        let body = || async move { self.change_state(tenant, subject, change) };
        if restrict {
            let check = Check::action(act::Restrict, Some(tenant));
            case.run(check, |_| body(), no_detail).await
        } else {
            let check = Check::action(act::Consent, Some(tenant));
            case.run(check, |_| body(), no_detail).await
        }
    }

    fn change_state(
        &self, tenant: &TenantId, subject: &SubjectId, change: Option<StateChange>,
    ) -> Result<SubjectState, ServiceError> {
        self.tenant_record(tenant)?;
        self.live_subject(tenant, subject)?;
        let Some(change) = change else {
            return self.checked_state(tenant, subject);
        };
        if let StateChange::Consent { source, .. } = &change {
            if source.is_empty() || source.len() > 128 || source.chars().any(char::is_control) {
                return Err(
                    InvalidInput::new("source must be 1 to 128 printable characters").into(),
                );
            }
        }
        let now = self.clock.now();
        let sealer = self.keys.record_sealer(tenant)?;
        // Compare-and-swap in the store: the change is applied to the state as stored when
        // the write happens, so a concurrent restriction or consent change is never undone.
        // The stored record is checked first, so a forged one is never carried forward
        // under a fresh seal; the new one takes the next sequence number.
        let apply = |stored: &StateRecord| {
            sealer.check_state(subject, stored)?;
            let mut state = stored.state.clone();
            match &change {
                StateChange::Restrict => {
                    state.restricted_since.get_or_insert(now);
                }
                StateChange::Lift => state.restricted_since = None,
                StateChange::Consent {
                    purpose,
                    granted,
                    source,
                } => state.set_consent(Consent {
                    purpose: purpose.clone(),
                    granted: *granted,
                    at: now,
                    source: source.clone(),
                }),
            }
            if state == stored.state {
                return Ok(None);
            }
            Ok(Some(sealer.seal_state(subject, state, stored.seq() + 1)))
        };
        Ok(self
            .store
            .update_subject_state(tenant, subject, &apply)?
            .state)
    }

    /// A subject's consents and restriction, refused (`Integrity`) unless the stored record
    /// is the one last written for it: its sequence number is the anchored one (checked by
    /// the store) and its seal checks (here).
    pub(in crate::service) fn checked_state(
        &self, tenant: &TenantId, subject: &SubjectId,
    ) -> Result<SubjectState, ServiceError> {
        let record = self.store.subject_state(tenant, subject)?;
        self.keys
            .record_sealer(tenant)?
            .check_state(subject, &record)?;
        Ok(record.state)
    }
}
