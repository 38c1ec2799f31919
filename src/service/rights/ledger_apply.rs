//! Applying the erasure ledger to a store: every erasure and shred the ledger recorded after
//! the store last saw it is done again (audited, as the vault's own job), so a restored
//! backup never serves a person erased or a tenant shredded after it was taken. The store
//! counts the entries it has seen (`LEDGER_SEEN`); a start with a ledger shorter than that
//! count is refused, since it is another vault's ledger or a truncated one.

use std::collections::{HashMap, HashSet};

use crate::audit::Operation;
use crate::domain::{SubjectId, TenantId};
use crate::keyring::LEDGER_TAG_LEN;
use crate::storage::StoreError;

use super::super::{Call, ServiceError, Vault};
use super::ledger::{Erased, ErasureLedger};

/// Store metadata key: how many ledger entries this store has applied (8 bytes, BE).
const LEDGER_SEEN: &str = "erasure_ledger_seen";
/// Tenants and subjects listed per store read.
const PAGE: usize = 512;

type Tag = [u8; LEDGER_TAG_LEN];

/// What applying the ledger did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerApplied {
    /// Ledger entries the store had not seen.
    pub entries: u64,
    /// Subjects erased now (live in the store, erased in the ledger).
    pub subjects_erased: u64,
    /// Tenants shredded now.
    pub tenants_shredded: u64,
}

impl Vault {
    /// Applies every ledger entry the store has not seen (module comment). Run before
    /// serving: by `serve` at every start and by `restore`.
    pub async fn apply_erasure_ledger(&self) -> Result<LedgerApplied, ServiceError> {
        let Some(ledger) = self.ledger.clone() else {
            return Ok(LedgerApplied::default());
        };
        let stored = self.store.meta(LEDGER_SEEN)?;
        let seen = stored
            .as_deref()
            .map(|b| <[u8; 8]>::try_from(b).map(u64::from_be_bytes))
            .transpose()
            .map_err(|_| StoreError::Corrupt("erasure ledger mark"))?
            .unwrap_or(0);
        let total = ledger.len();
        if seen > total {
            return Err(ServiceError::KeyPrecondition(format!(
                "the erasure ledger {} holds {total} entries, but this store has applied \
                 {seen}: it is another vault's ledger or a truncated copy; start with the \
                 ledger kept with this vault's root key",
                ledger.path().display()
            )));
        }
        let pending = ledger.entries_after(seen);
        let mut done = LedgerApplied {
            entries: pending.len() as u64,
            ..LedgerApplied::default()
        };
        if pending.is_empty() {
            return Ok(done);
        }
        // A cancelled entry's erasure failed: it never happened, here or anywhere.
        let cancelled: HashSet<u64> = pending
            .iter()
            .filter_map(|e| match e.erased {
                Erased::Cancel { seq } => Some(seq),
                _ => None,
            })
            .collect();
        let mut shreds: HashSet<Tag> = HashSet::new();
        let mut erasures: HashMap<Tag, HashSet<Tag>> = HashMap::new();
        for e in pending.iter().filter(|e| !cancelled.contains(&e.seq)) {
            match e.erased {
                Erased::Tenant { tenant } => {
                    shreds.insert(tenant);
                }
                Erased::Subject { tenant, subject } => {
                    erasures.entry(tenant).or_default().insert(subject);
                }
                Erased::Cancel { .. } => {}
            }
        }
        let call = Call::job("pii-vault/erasure-ledger", "erasure-ledger");
        let mut after: Option<TenantId> = None;
        loop {
            let tenants = self.store.tenants(after.as_ref(), PAGE)?;
            for t in &tenants {
                if t.shredded_at.is_some() {
                    continue;
                }
                let tag = ledger.tenant_tag(&t.id);
                if shreds.contains(&tag) {
                    self.use_case(&call, Operation::ShredTenant)
                        .tenant(&t.id)
                        .run_system(self.shred_unrecorded(&t.id), |_, ev| {
                            ev.reason = "erasure ledger: shredded after the backup".into();
                        })
                        .await?;
                    done.tenants_shredded += 1;
                } else if let Some(subjects) = erasures.get(&tag) {
                    done.subjects_erased +=
                        self.erase_listed(&ledger, &call, &t.id, subjects).await?;
                }
            }
            if tenants.len() < PAGE {
                break;
            }
            after = tenants.last().map(|t| t.id.clone());
        }
        self.store.flush()?;
        if !self
            .store
            .meta_swap(LEDGER_SEEN, stored.as_deref(), &total.to_be_bytes())?
        {
            return Err(ServiceError::Internal(
                "the erasure ledger mark changed while the ledger was applied".into(),
            ));
        }
        self.store.flush()?;
        tracing::info!(
            entries = done.entries,
            subjects = done.subjects_erased,
            tenants = done.tenants_shredded,
            "erasure ledger applied"
        );
        Ok(done)
    }

    /// Erases every live subject of `tenant` whose ledger hash is in `tags`.
    async fn erase_listed(
        &self, ledger: &ErasureLedger, call: &Call, tenant: &TenantId, tags: &HashSet<Tag>,
    ) -> Result<u64, ServiceError> {
        let mut found: Vec<SubjectId> = Vec::new();
        let mut after: Option<SubjectId> = None;
        loop {
            let page = self.store.subjects(tenant, after.as_ref(), PAGE)?;
            found.extend(
                page.iter()
                    .filter(|s| tags.contains(&ledger.subject_tag(tenant, s)))
                    .cloned(),
            );
            if page.len() < PAGE {
                break;
            }
            after = page.last().cloned();
        }
        for subject in &found {
            self.use_case(call, Operation::EraseSubject)
                .tenant(tenant)
                .subject(subject)
                .run_system(
                    async { self.erase_unrecorded(call, tenant, subject) },
                    |r: &super::ErasureReceipt, ev| {
                        ev.reason = format!("erasure ledger: receipt {}", r.receipt_id);
                    },
                )
                .await?;
            let _ = self.purger.send((tenant.clone(), subject.clone()));
        }
        Ok(found.len() as u64)
    }

    /// Records a subject's erasure in the ledger, does it with `erase`, and cancels the
    /// entry if that fails (nothing to record for a subject that is not live: it is erased
    /// already, or never was).
    pub(super) fn ledgered_erasure<T>(
        &self, tenant: &TenantId, subject: &SubjectId,
        erase: impl FnOnce() -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let seq = match &self.ledger {
            Some(ledger) if self.store.subject(tenant, subject)?.is_some() => Some(
                ledger
                    .record_erasure(tenant, subject, self.clock.now())
                    .map_err(ledger_unavailable)?,
            ),
            _ => None,
        };
        let done = erase();
        self.cancel_if_failed(seq, done.is_err());
        done
    }

    /// Records a tenant's shred in the ledger before `shred` does it; cancels the entry if
    /// that fails.
    pub(in crate::service) async fn ledgered_shred<T>(
        &self, tenant: &TenantId, shred: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let seq = match &self.ledger {
            Some(ledger) => Some(
                ledger
                    .record_shred(tenant, self.clock.now())
                    .map_err(ledger_unavailable)?,
            ),
            None => None,
        };
        let done = shred.await;
        self.cancel_if_failed(seq, done.is_err());
        done
    }

    /// Cancels ledger entry `seq` after its erasure or shred failed. A cancel that cannot be
    /// written leaves the entry, which the next start then completes: logged loudly.
    fn cancel_if_failed(&self, seq: Option<u64>, failed: bool) {
        let (Some(ledger), Some(seq), true) = (&self.ledger, seq, failed) else {
            return;
        };
        if let Err(e) = ledger.record_cancel(seq, self.clock.now()) {
            tracing::error!(
                error = %e,
                seq,
                "an erasure failed and its ledger entry cannot be cancelled: the next start \
                 will complete it"
            );
        }
    }
}

/// A ledger that cannot be written: the erasure is not done, and the caller may retry.
fn ledger_unavailable(e: super::ledger::LedgerError) -> ServiceError {
    ServiceError::Unavailable(StoreError::Backend(e.to_string()))
}
