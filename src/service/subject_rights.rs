//! Restriction of processing and consent: the subject state that reads are checked against
//! (in `authz::Authz::decide_for_subject`).

use crate::audit::Operation;
use crate::authz::Action;
use crate::domain::{Consent, InvalidInput, Purpose, SubjectId, SubjectState, TenantId};

use super::{Call, ServiceError, Vault};

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
        &self,
        call: &Call,
        tenant: &TenantId,
        subject: &SubjectId,
        change: Option<StateChange>,
    ) -> Result<SubjectState, ServiceError> {
        let (op, action) = match &change {
            None => (Operation::ListConsents, Action::Consent),
            Some(StateChange::Restrict) => (Operation::RestrictSubject, Action::Restrict),
            Some(StateChange::Lift) => (Operation::LiftRestriction, Action::Restrict),
            Some(StateChange::Consent { .. }) => (Operation::SetConsent, Action::Consent),
        };
        let mut ev = self.draft(call, op);
        ev.tenant = tenant.to_string();
        ev.subject = subject.to_string();
        if let Some(StateChange::Consent {
            purpose, granted, ..
        }) = &change
        {
            ev.purpose = purpose.to_string();
            ev.reason = if *granted { "granted" } else { "withdrawn" }.into();
        }
        let result = self
            .authorize(call, &mut ev, action, Some(tenant), None)
            .and_then(|_| self.change_state(tenant, subject, change));
        self.record(ev, result).await
    }

    fn change_state(
        &self,
        tenant: &TenantId,
        subject: &SubjectId,
        change: Option<StateChange>,
    ) -> Result<SubjectState, ServiceError> {
        self.tenant(tenant)?;
        self.live_subject(tenant, subject)?;
        let mut state = self.store.subject_state(tenant, subject)?;
        let now = self.clock.now();
        match change {
            None => return Ok(state),
            Some(StateChange::Restrict) => {
                state.restricted_since.get_or_insert(now);
            }
            Some(StateChange::Lift) => state.restricted_since = None,
            Some(StateChange::Consent {
                purpose,
                granted,
                source,
            }) => {
                if source.is_empty() || source.len() > 128 || source.chars().any(char::is_control) {
                    return Err(
                        InvalidInput::new("source must be 1 to 128 printable characters").into(),
                    );
                }
                state.set_consent(Consent {
                    purpose,
                    granted,
                    at: now,
                    source,
                });
            }
        }
        self.store.set_subject_state(tenant, subject, &state)?;
        Ok(state)
    }
}
