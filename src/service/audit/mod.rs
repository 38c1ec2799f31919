//! The audit log (`log`: the writer task, query, verify, prune), its SIEM mirror (`sink`),
//! its high-water mark against a rolled-back store (`high_water`), and the operators' use
//! cases on it: query (itself audited), verify, prune.

mod high_water;
mod log;
mod sink;

pub use high_water::{HighWater, HighWaterError, HIGH_WATER_FILE};
pub(super) use log::Writer;
pub use log::{verify_store, AuditError, AuditLog, PruneReport};
pub use sink::{JsonlSink, SinkConfig};

use std::time::Duration;

use crate::audit::{AuditEvent, AuditFilter, Operation, VerifyReport};
use crate::authz::Action;
use crate::domain::Timestamp;

use super::usecase::{no_detail, Check};
use super::{Call, ServiceError, Vault};

/// Longest page one query returns.
pub const MAX_QUERY_PAGE: usize = 1000;

/// One page of audit events and where to resume.
#[derive(Debug)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `after` to continue; the last sequence number examined.
    pub cursor: u64,
}

impl Vault {
    /// Events matching `filter` after sequence number `after`. The query's own event is
    /// durable before any event is returned.
    pub async fn query_audit(
        &self,
        call: &Call,
        filter: &AuditFilter,
        after: u64,
        limit: usize,
    ) -> Result<AuditPage, ServiceError> {
        self.use_case(call, Operation::QueryAudit)
            .tenant(filter.tenant.clone().unwrap_or_default())
            .subject(filter.subject.clone().unwrap_or_default())
            .reason(format!("after seq {after}"))
            .run(
                Check::action(Action::AuditRead, None),
                |_| async move { self.query_audit_more(filter, after, limit) },
                no_detail,
            )
            .await
    }

    /// Continues a query that is already recorded (later pages of one streamed query).
    pub fn query_audit_more(
        &self,
        filter: &AuditFilter,
        after: u64,
        limit: usize,
    ) -> Result<AuditPage, ServiceError> {
        let (events, cursor) = self
            .audit
            .query(filter, after, limit.clamp(1, MAX_QUERY_PAGE))?;
        Ok(AuditPage { events, cursor })
    }

    /// Walks the whole chain.
    pub async fn verify_audit(&self, call: &Call) -> Result<VerifyReport, ServiceError> {
        self.use_case(call, Operation::VerifyAudit)
            .run(
                Check::action(Action::AuditRead, None),
                |_| async move { Ok(self.audit.verify()?) },
                |report: &VerifyReport, ev| {
                    ev.reason = match report.first_bad {
                        None => format!("verified {} events", report.checked),
                        Some(seq) => format!("chain broken at seq {seq}"),
                    };
                },
            )
            .await
    }

    /// Deletes events older than `older_than_days` (0: the configured retention), keeping
    /// verification intact.
    pub async fn prune_audit(
        &self,
        call: &Call,
        older_than_days: u32,
    ) -> Result<PruneReport, ServiceError> {
        let case = self.use_case(call, Operation::PruneAudit);
        let age = match older_than_days {
            0 => self.audit_retention,
            days => Duration::from_secs(u64::from(days) * 86_400),
        };
        let age_micros = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
        let before = Timestamp(self.clock.now().0.saturating_sub(age_micros));
        case.run(
            Check::action(Action::KeyAdmin, None),
            |_| async move { Ok(self.audit.prune(before)?) },
            |report: &PruneReport, ev| ev.reason = format!("pruned {} events", report.deleted),
        )
        .await
    }

    /// The current time of the vault's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}
