//! The audit log (`log`: the writer thread, query, verify, prune), its SIEM mirrors (`sink`:
//! JSON lines in a file; `syslog`: RFC 5424 over TCP or TLS),
//! its high-water mark against a rolled-back store (`high_water`), and the operators' use
//! cases on it: query (itself audited), verify, prune.

mod denials;
mod high_water;
mod index;
mod log;
mod sink;
mod syslog;

pub use denials::DenialSettings;
pub(super) use denials::{Denials, Noted};
pub use high_water::{HighWater, HighWaterError, HIGH_WATER_FILE};
pub(super) use log::Writer;
pub use log::{verify_store, AuditError, AuditLog, AuditPage, PruneReport};
pub use sink::{JsonlSink, SinkConfig};
pub use syslog::{host_of as syslog_host, SyslogConfig, SyslogSink};

use std::time::Duration;

use crate::audit::{AuditFilter, Operation, VerifyReport};
use crate::authz::act;
use crate::domain::{InvalidInput, TenantId, Timestamp};

use super::usecase::{no_detail, Check};
use super::{Call, ServiceError, Vault};

/// The identity of the vault's retention jobs (the field sweep and the audit prune).
pub(super) const RETENTION_JOB: &str = "pii-vault/retention";

fn describe_prune(report: &PruneReport, ev: &mut crate::audit::EventDraft) {
    ev.reason = format!("pruned {} events", report.deleted);
}

/// Longest page one query returns.
pub const MAX_QUERY_PAGE: usize = 1000;

impl Vault {
    /// Records the summaries of the denial windows that have ended (of every open window
    /// with `all`, at shutdown), so no counted denial goes unrecorded.
    pub async fn summarise_denials(&self, all: bool) {
        let now = self.clock.now();
        let due = self.denials.take_due((!all).then_some(now));
        self.record_summaries(due).await;
    }

    pub(super) async fn record_summaries(&self, summaries: Vec<denials::Summary>) {
        for summary in summaries {
            let event = summary.event(self.clock.now(), super::request_id(None));
            if let Err(e) = self.audit.append(event).await {
                tracing::error!(
                    caller = %summary.caller,
                    denials = summary.total(),
                    error = %e,
                    "a summary of denials could not be recorded"
                );
            }
        }
    }

    /// Events matching `filter` after sequence number `after`. The query's own event is
    /// durable before any event is returned.
    pub async fn query_audit(
        &self, call: &Call, filter: &AuditFilter, after: u64, limit: usize,
    ) -> Result<AuditPage, ServiceError> {
        let case = self
            .use_case(call, Operation::QueryAudit)
            .tenant(filter.tenant.clone().unwrap_or_default())
            .subject(filter.subject.clone().unwrap_or_default())
            .reason(format!("after seq {after}"));
        // A query with a tenant filter is decided for that tenant (and returns only its
        // events, the filter being exact); without one it is about every tenant, which
        // only a rule for all tenants grants. A filter that names no valid tenant (an
        // empty one, say) is refused rather than widened.
        let tenant = match filter.tenant.as_deref().map(TenantId::parse).transpose() {
            Ok(tenant) => tenant,
            Err(e) => {
                let e = InvalidInput::new(format!("tenant filter: {e}")).in_field("tenant_id");
                return Err(case.reject(e.into()).await);
            }
        };
        case.run(
            Check::action(act::AuditRead, tenant.as_ref()),
            |_| self.query_audit_more(filter, after, limit),
            no_detail,
        )
        .await
    }

    /// Continues a query that is already recorded (later pages of one streamed query). The
    /// scan runs on the blocking pool, a bounded number of events per call (`AuditPage`
    /// says where to resume and whether the end was reached).
    pub async fn query_audit_more(
        &self, filter: &AuditFilter, after: u64, limit: usize,
    ) -> Result<AuditPage, ServiceError> {
        let (log, filter) = (self.audit.clone(), filter.clone());
        let limit = limit.clamp(1, MAX_QUERY_PAGE);
        self.background
            .run_service("audit query", move || Ok(log.query(&filter, after, limit)?))
            .await
    }

    /// Runs `work` on the audit log off the async workers (a whole-log walk).
    async fn on_log<T: Send + 'static>(
        &self, what: &'static str,
        work: impl FnOnce(&AuditLog) -> Result<T, crate::storage::StoreError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let log = self.audit.clone();
        self.background
            .run_service(what, move || Ok(work(&log)?))
            .await
    }

    /// Walks the whole chain.
    pub async fn verify_audit(&self, call: &Call) -> Result<VerifyReport, ServiceError> {
        self.use_case(call, Operation::VerifyAudit)
            .run(
                Check::action(act::AuditRead, None),
                |_| self.on_log("audit verify", AuditLog::verify),
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
    /// verification intact. The log is the record of who did what for the configured
    /// retention (section 5 of the privacy policy), so a shorter age is refused, before the
    /// policy is asked. Needs `key_admin` for all tenants (it prunes every tenant's events).
    pub async fn prune_audit(
        &self, call: &Call, older_than_days: u32,
    ) -> Result<PruneReport, ServiceError> {
        let case = self.use_case(call, Operation::PruneAudit);
        let minimum_days = self.audit_retention.as_secs().div_ceil(86_400);
        let age = match older_than_days {
            0 => self.audit_retention,
            days if u64::from(days) < minimum_days => {
                let refused = InvalidInput::new(format!(
                    "older_than_days must be at least {minimum_days} (audit.retention_days), \
                     or 0 for the configured retention"
                ));
                return Err(case.reject(refused.into()).await);
            }
            days => Duration::from_secs(u64::from(days) * 86_400),
        };
        let before = self.prune_cutoff(age);
        case.run(
            Check::action(act::KeyAdmin, None),
            |_| self.on_log("audit prune", move |log| log.prune(before)),
            describe_prune,
        )
        .await
    }

    /// The daily prune of events past the configured retention: one of the vault's own jobs,
    /// run as `job:pii-vault/retention` without asking the policy (so it runs whatever the
    /// policy grants), audited like a caller's prune.
    pub async fn prune_expired_audit(&self) -> Result<PruneReport, ServiceError> {
        let call = Call::job(RETENTION_JOB, "audit-retention");
        let before = self.prune_cutoff(self.audit_retention);
        self.use_case(&call, Operation::PruneAudit)
            .run_system(
                self.on_log("audit prune", move |log| log.prune(before)),
                describe_prune,
            )
            .await
    }

    /// Events before this time are older than `age`.
    fn prune_cutoff(&self, age: Duration) -> Timestamp {
        let age_micros = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
        Timestamp(self.clock.now().0.saturating_sub(age_micros))
    }

    /// The current time of the vault's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}
