//! The audit log's vocabulary and integrity: the event type (which has no place for a
//! value), its canonical encoding, the HMAC chain, and pure verification.
//!
//! Writing, querying and pruning the log are use cases and live in `service::audit_log`.

mod event;
mod verify;

pub use event::{AuditEvent, EventDraft, Operation, Outcome};
pub use verify::{
    node_label, verify, verify_chains, ChainMark, Checkpoint, Head, VerifyReport, CHECKPOINT, HEAD,
};

use crate::domain::Timestamp;

/// Which events a query wants. Empty criteria match everything.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    pub subject: Option<String>,
    pub caller: Option<String>,
    pub operation: Option<Operation>,
    /// Inclusive lower bound on the event time.
    pub since: Option<Timestamp>,
    /// Exclusive upper bound on the event time.
    pub until: Option<Timestamp>,
}

impl AuditFilter {
    pub fn matches(&self, d: &EventDraft) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == d.tenant)
            && self.subject.as_ref().is_none_or(|s| *s == d.subject)
            && self.caller.as_ref().is_none_or(|c| *c == d.caller)
            && self.operation.is_none_or(|o| o == d.operation)
            && self.since.is_none_or(|s| d.time >= s)
            && self.until.is_none_or(|u| d.time < u)
    }
}

#[cfg(test)]
mod tests;
