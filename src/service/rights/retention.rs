//! Retention: every field gets an expiry when written, from its own TTL or from its
//! category's rule (section 6 of the privacy policy); the sweeper deletes expired fields
//! and audits each deletion.

use std::collections::HashMap;
use std::time::Duration;

use crate::audit::Operation;
use crate::domain::retention::retention_rule;
use crate::domain::{Category, Timestamp};
use crate::storage::{Erasure, Tombstone};

use super::super::audit::RETENTION_JOB;
use super::super::usecase::no_detail;
use super::super::{Call, ServiceError, Vault};

/// How long each category is kept after its last write, when no TTL is given.
#[derive(Clone, Debug)]
pub struct RetentionRules {
    pub periods: HashMap<Category, Duration>,
}

impl Default for RetentionRules {
    /// The policy's section 6 rules, from the one table in `domain::retention` (which the
    /// access report also shows), so what a report promises is what the sweeper does.
    fn default() -> Self {
        let periods = Category::ALL
            .into_iter()
            .filter_map(|c| retention_rule(c).period.map(|p| (c, p)))
            .collect();
        Self { periods }
    }
}

impl RetentionRules {
    /// When a field written `now` expires: its TTL, else its category's period, else never
    /// (`Timestamp(0)`).
    pub fn expiry(&self, category: Category, ttl: Option<Duration>, now: Timestamp) -> Timestamp {
        match ttl.or_else(|| self.periods.get(&category).copied()) {
            None => Timestamp(0),
            Some(d) => Timestamp(
                now.0
                    .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            ),
        }
    }
}

/// Fields deleted per store scan.
const SWEEP_BATCH: usize = 1000;

impl Vault {
    /// Erases the legal shadows whose retention duty ended: their separate key is destroyed
    /// like any erased subject's. Returns how many.
    async fn end_legal_holds(&self, call: &Call, now: Timestamp) -> Result<u64, ServiceError> {
        let mut ended = 0;
        for (tenant, shadow, until) in self.store.legal_holds_due(now)? {
            let tombstone = Tombstone {
                erased_at: now,
                caller: call.caller.to_string(),
                receipt_id: format!("legal-hold-end-{}", until.0),
                categories: 0,
                purged: false,
                retained_categories: 0,
                retained_until: Timestamp(0),
                seal: None,
            };
            let sealer = self.keys.record_sealer(&tenant)?;
            let seal = |t: Tombstone, seq: u64| sealer.seal_tombstone(&shadow, t, seq);
            let erased = self
                .use_case(call, Operation::RetentionDelete)
                .tenant(&tenant)
                .subject(&shadow)
                .reason("legal retention duty ended; records' key destroyed")
                .run_system(
                    async {
                        let erased = self
                            .store
                            .erase_subject(&tenant, &shadow, &tombstone, &seal)?;
                        // The shadow's record is gone; its cached key goes too.
                        self.keys.forget_subject_keys(&tenant, &shadow);
                        Ok(erased)
                    },
                    no_detail,
                )
                .await?;
            self.store.clear_legal_hold(&tenant, &shadow, until)?;
            if matches!(erased, Erasure::Erased(_)) {
                let _ = self.purger.send((tenant, shadow));
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Deletes every field whose expiry has passed; returns how many. Each deletion is one
    /// audit event by the `job:pii-vault/retention` identity (no policy is asked). Also
    /// drops the idempotency records that expired.
    pub async fn sweep_retention(&self) -> Result<u64, ServiceError> {
        let call = Call::job(RETENTION_JOB, "retention-sweep");
        let now = self.clock.now();
        let mut deleted = self.end_legal_holds(&call, now).await?;
        let mut after = None;
        loop {
            let tenants = self.store.tenants(after.as_ref(), 100)?;
            let Some(last) = tenants.last().map(|t| t.id.clone()) else {
                return Ok(deleted);
            };
            for tenant in tenants {
                loop {
                    let due = self.store.expired(&tenant.id, now, SWEEP_BATCH)?;
                    if due.is_empty() {
                        break;
                    }
                    for (subject, field, at) in due {
                        let removed = self
                            .use_case(&call, Operation::RetentionDelete)
                            .tenant(&tenant.id)
                            .subject(&subject)
                            .fields([&field])
                            .reason("retention period ended")
                            .run_system(
                                async {
                                    Ok(self
                                        .store
                                        .delete_expired(&tenant.id, &subject, &field, at)?)
                                },
                                |removed, ev| {
                                    if !*removed {
                                        ev.reason = "retention period ended; already gone".into();
                                    }
                                },
                            )
                            .await?;
                        if removed {
                            self.metrics.retention_deletions(1);
                            deleted += 1;
                        }
                    }
                }
                // Idempotency records past their 24 hours answer nothing: dropped, no event
                // (they hold no personal data, and their write has its own).
                while self.store.prune_idempotency(&tenant.id, now, SWEEP_BATCH)? == SWEEP_BATCH {}
            }
            after = Some(last);
        }
    }
}
