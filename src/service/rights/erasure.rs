//! Erasure by crypto-shredding. One store transaction deletes the subject's wrapped DEK and
//! writes a tombstone; the field ciphertexts, noise without the key, are purged afterwards in
//! the background, so erasure takes the same time for one field or ten thousand.
//!
//! Stale copies of the wrapped DEK may survive in sled's log and in backups until the next
//! key epoch destroys the KEK version that wrapped them: the receipt says when that is.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::audit::Operation;
use crate::authz::act;
use crate::domain::{Category, SubjectId, TenantId, Timestamp};
use crate::storage::{categories_in, Erasure, Store, SubjectRecord, Tombstone};

use super::super::blocking::Background;
use super::super::usecase::Check;
use super::super::{Call, ServiceError, Vault};

/// Payment transaction records are kept 7 years (and two leap days) after erasure.
const LEGAL_RETENTION_MICROS: u64 = (7 * 365 + 2) * 86_400 * 1_000_000;

/// Field records deleted per purge step.
const PURGE_BATCH: usize = 1000;

/// Proof of an erasure, returned to the erasure job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasureReceipt {
    pub receipt_id: String,
    pub tenant: TenantId,
    pub subject: SubjectId,
    pub erased_at: Timestamp,
    /// Identity of the caller that erased the subject.
    pub caller: String,
    pub categories_erased: Vec<Category>,
    /// Categories kept under a legal duty (payment transaction records), and until when:
    /// their separate key is destroyed then.
    pub retained: Vec<(Category, Timestamp)>,
    /// After this time no copy of the subject's key survives anywhere, backups included: the
    /// next key epoch plus the backup window.
    pub final_after: Timestamp,
    /// True when the subject had been erased before (the original receipt is returned).
    pub already_erased: bool,
}

fn receipt_id() -> String {
    format!("er-{}", super::super::random_id(16))
}

/// Starts the background purger; returns its queue.
pub(in crate::service) fn start_purger(
    store: Arc<dyn Store>, background: &Background,
) -> mpsc::UnboundedSender<(TenantId, SubjectId)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(TenantId, SubjectId)>();
    // Erasures whose purge a restart interrupted are picked up again.
    match store.unpurged() {
        Ok(left) => left.into_iter().for_each(|job| {
            let _ = tx.send(job);
        }),
        Err(e) => tracing::warn!(error = %e, "cannot list unpurged erasures"),
    }
    let jobs = background.clone();
    background.spawn(async move {
        while let Some((tenant, subject)) = rx.recv().await {
            let store = store.clone();
            let done = jobs.run(move || loop {
                match store.purge_fields(&tenant, &subject, PURGE_BATCH) {
                    Ok(0) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(e),
                }
            })
            .await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "purging an erased subject's ciphertexts failed; retried at next start");
            }
        }
    });
    tx
}

impl Vault {
    /// A subject's record, or why there is none (never existed, or erased).
    pub(in crate::service) fn live_subject(
        &self, tenant: &TenantId, subject: &SubjectId,
    ) -> Result<SubjectRecord, ServiceError> {
        if let Some(rec) = self.store.subject(tenant, subject)? {
            return Ok(rec);
        }
        match self.store.tombstone(tenant, subject)? {
            Some(t) => {
                self.keys
                    .record_sealer(tenant)?
                    .check_tombstone(subject, &t)?;
                Err(ServiceError::SubjectErased {
                    receipt: Some(t.receipt_id),
                })
            }
            None => Err(ServiceError::SubjectNotFound),
        }
    }

    /// Erases a subject. Idempotent: erasing again returns the first receipt.
    pub async fn erase_subject(
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId,
    ) -> Result<ErasureReceipt, ServiceError> {
        let receipt = self
            .use_case(call, Operation::EraseSubject)
            .tenant(tenant)
            .subject(subject)
            .run(
                Check::action(act::Erase, Some(tenant)),
                |_| async move { self.erase(call, tenant, subject) },
                |r: &ErasureReceipt, ev| {
                    ev.fields = r
                        .categories_erased
                        .iter()
                        .map(|c| c.name().to_owned())
                        .collect();
                    ev.reason = format!("receipt {}", r.receipt_id);
                },
            )
            .await?;
        if !receipt.already_erased {
            // A store rolled back past this erasure must be refused at start, not serve
            // the subject again: the high-water mark moves past its event before the
            // receipt is returned.
            self.audit.persist_high_water().await;
            self.metrics.erasure();
            let _ = self.purger.send((tenant.clone(), subject.clone()));
        }
        Ok(receipt)
    }

    /// Records the erasure in the erasure ledger, then does it (cancelling the entry if it
    /// fails).
    fn erase(
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId,
    ) -> Result<ErasureReceipt, ServiceError> {
        self.tenant_record(tenant)?;
        self.ledgered_erasure(tenant, subject, || {
            self.erase_unrecorded(call, tenant, subject)
        })
    }

    /// The erasure itself, without a ledger entry (applying the ledger uses it).
    pub(super) fn erase_unrecorded(
        &self, call: &Call, tenant: &TenantId, subject: &SubjectId,
    ) -> Result<ErasureReceipt, ServiceError> {
        self.tenant_record(tenant)?;
        let now = self.clock.now();
        let tombstone = Tombstone {
            erased_at: now,
            caller: call.caller.to_string(),
            receipt_id: receipt_id(),
            categories: 0,
            purged: false,
            retained_categories: 0,
            retained_until: Timestamp(now.0.saturating_add(LEGAL_RETENTION_MICROS)),
            seal: None,
        };
        let sealer = self.keys.record_sealer(tenant)?;
        let seal = |t: Tombstone, seq: u64| sealer.seal_tombstone(subject, t, seq);
        let (t, already_erased) = match self
            .store
            .erase_subject(tenant, subject, &tombstone, &seal)?
        {
            Erasure::Erased(t) => (t, false),
            Erasure::AlreadyErased(t) => {
                // The first receipt is answered again only if its tombstone checks.
                sealer.check_tombstone(subject, &t)?;
                (t, true)
            }
            Erasure::NotFound => return Err(ServiceError::SubjectNotFound),
        };
        // The record is gone, so no read reaches the cached DEK any more; drop it now.
        self.keys.forget_subject_keys(tenant, subject);
        // Final when the root key version that wrapped the KEK version that wrapped this
        // subject's DEK is destroyed: the next epoch destroys the KEK version and retires
        // that root version; it is destroyed the backup window later.
        let epoch = u64::try_from(self.key_epoch_interval.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_add(
                u64::try_from(self.keys.backup_window().as_micros()).unwrap_or(u64::MAX),
            );
        Ok(ErasureReceipt {
            receipt_id: t.receipt_id,
            tenant: tenant.clone(),
            subject: subject.clone(),
            final_after: Timestamp(t.erased_at.0.saturating_add(epoch)),
            erased_at: t.erased_at,
            caller: t.caller,
            categories_erased: categories_in(t.categories),
            retained: categories_in(t.retained_categories)
                .into_iter()
                .map(|c| (c, t.retained_until))
                .collect(),
            already_erased,
        })
    }
}

/// The default interval of key epochs: the policy allows at most 30 days (its backup window).
pub const DEFAULT_KEY_EPOCH: Duration = Duration::from_secs(24 * 3600);
