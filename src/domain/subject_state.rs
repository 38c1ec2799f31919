//! What a subject decided about the processing of their data: consents per purpose and the
//! restriction of processing (GDPR art. 18 and 7(3)).

use super::{Purpose, Timestamp};

/// One consent decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consent {
    pub purpose: Purpose,
    pub granted: bool,
    pub at: Timestamp,
    /// Where the decision came from (a form, a support ticket id, ...); never personal data.
    pub source: String,
}

/// Consents and restriction of one subject.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectState {
    pub consents: Vec<Consent>,
    /// When processing was restricted, if it is.
    pub restricted_since: Option<Timestamp>,
}

impl SubjectState {
    /// The latest decision for `purpose`, if the subject made one.
    pub fn consent(&self, purpose: &Purpose) -> Option<&Consent> {
        self.consents.iter().find(|c| &c.purpose == purpose)
    }

    /// Records a decision, replacing an earlier one for the same purpose.
    pub fn set_consent(&mut self, consent: Consent) {
        self.consents.retain(|c| c.purpose != consent.purpose);
        self.consents.push(consent);
        self.consents.sort_by(|a, b| a.purpose.cmp(&b.purpose));
    }
}
