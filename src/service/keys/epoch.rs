//! Key epochs, every `key_epoch_interval` or when asked: every tenant with erasures since
//! the last epoch gets a new KEK, its DEKs re-wrapped and the old versions destroyed, so
//! stale copies of an erased subject's wrapped DEK (sled's old pages, backups) are useless,
//! and a new index key, every indexed field re-indexed under it and the old key destroyed,
//! so stale copies of the erased subjects' index entries match nothing; then the root key
//! is rotated and its old version destroyed, so stale copies of the destroyed KEKs are
//! useless too.
//!
//! An epoch is one resumable job. Its start is recorded in the store (`EPOCH_RUN`), each
//! tenant's finished steps too (`EPOCH_STEP`), and the tenants' epoch marks are cleared
//! only after the root step is done and durable: a failure or a crash at any step keeps
//! every mark, the failure is recorded (audit event, `keys status`, metrics), and the
//! worker runs the epoch again, skipping the tenant steps already done, until it completes.

use crate::codec::{Reader, Writer};
use crate::domain::{TenantId, Timestamp};
use crate::keyring::Keyring;
use crate::storage::StoreError;

use super::super::{ServiceError, Vault};
use super::EpochReport;

/// Store metadata key: when the epoch schedule started (before the first epoch ran).
const EPOCH_ANCHOR: &str = "key_epoch_anchor";
/// Store metadata key: the epoch under way (`EpochRun`), from its start to its completion.
const EPOCH_RUN: &str = "key_epoch_run";
/// Prefix of the store metadata keys of the tenant steps the epoch under way has done:
/// the tenant's erasure count they covered and how far they got (`Step`).
const EPOCH_STEP: &str = "key_epoch_step/";
const RUN_FORMAT: u8 = 1;

/// How far an epoch got with one tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    /// A new KEK version is current; its re-wrap (saved as a job) may still be running.
    Rotated = 1,
    /// Re-wrapped, old KEK versions destroyed, index re-keyed.
    Done = 2,
}

/// The epoch under way, as `keys status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochRun {
    pub started_at: Timestamp,
    /// Failed attempts so far; the worker retries.
    pub failures: u32,
    /// When the last attempt failed, and its error (a status message, never key material).
    pub last_failure: Option<(Timestamp, String)>,
}

impl EpochRun {
    fn encode(&self) -> Vec<u8> {
        let (at, why) = self
            .last_failure
            .as_ref()
            .map_or((0, ""), |(at, why)| (at.0, why.as_str()));
        Writer::new()
            .u8(RUN_FORMAT)
            .u64(self.started_at.0)
            .u32(self.failures)
            .u64(at)
            .str(why)
            .finish()
    }

    fn decode(buf: &[u8]) -> Result<Self, ServiceError> {
        let corrupt = |_| ServiceError::from(StoreError::Corrupt("key epoch record"));
        let mut r = Reader::new(buf, "key epoch record");
        if r.u8().map_err(corrupt)? != RUN_FORMAT {
            return Err(StoreError::Corrupt("key epoch record").into());
        }
        let started_at = Timestamp(r.u64().map_err(corrupt)?);
        let failures = r.u32().map_err(corrupt)?;
        let at = r.u64().map_err(corrupt)?;
        let why = r.str().map_err(corrupt)?.to_owned();
        r.finish().map_err(corrupt)?;
        Ok(Self {
            started_at,
            failures,
            last_failure: (at != 0).then_some((Timestamp(at), why)),
        })
    }
}

fn step_key(tenant: &TenantId) -> String {
    format!("{EPOCH_STEP}{tenant}")
}

impl Vault {
    /// One key epoch (see the module documentation); the caller holds no key job lock.
    pub(super) async fn key_epoch(&self) -> Result<EpochReport, ServiceError> {
        let _one = self.key_jobs.running.lock().await;
        match self.epoch_run()? {
            Some(run) => {
                tracing::info!(failures = run.failures, "resuming the key epoch under way");
            }
            None => {
                let run = EpochRun {
                    started_at: self.clock.now(),
                    failures: 0,
                    last_failure: None,
                };
                self.store.meta_init(EPOCH_RUN, &run.encode())?;
            }
        }
        let pending = self.store.epoch_pending()?;
        let mut tenants = Vec::new();
        let mut shredded_tenants = Vec::new();
        let mut deks_rewrapped = 0;
        for (tenant, seen) in &pending {
            match self.epoch_tenant(tenant, *seen).await? {
                Some((destroyed, rewrapped)) => {
                    deks_rewrapped += rewrapped;
                    tenants.push((tenant.clone(), destroyed));
                }
                None => shredded_tenants.push(tenant.clone()),
            }
        }
        let root = self.key_op(Keyring::rotate_root).await?;
        self.keys.record_epoch()?;
        self.commit.durable().await?;
        // Only now are the marks cleared, each only if no erasure came after `seen` (a
        // later one needs the next epoch). The step record goes first: a step left without
        // its mark could otherwise be taken for the step of a later mark.
        for (tenant, seen) in &pending {
            self.store.meta_remove(&step_key(tenant))?;
            self.store.clear_epoch_pending(tenant, *seen)?;
        }
        self.store.meta_remove(EPOCH_RUN)?;
        self.commit.durable().await?;
        Ok(EpochReport {
            tenants,
            shredded_tenants,
            deks_rewrapped,
            root,
            completed_at: self.clock.now(),
        })
    }

    /// The epoch's work on one tenant with `seen` erasures since its last epoch, resumed
    /// where an earlier attempt left it: the destroyed KEK versions and the DEKs
    /// re-wrapped (as far as this attempt saw them), or `None` for a shredded tenant.
    async fn epoch_tenant(
        &self, tenant: &TenantId, seen: u64,
    ) -> Result<Option<(Vec<u32>, u64)>, ServiceError> {
        if self.keys.tenant_keys(tenant)?.0.shredded_at.is_some() {
            return Ok(None);
        }
        let step = self.epoch_step(tenant, seen)?;
        if step == Some(Step::Done) {
            return Ok(Some((Vec::new(), 0)));
        }
        if step.is_none() {
            let id = tenant.clone();
            self.key_op(move |k| k.rotate_tenant(&id)).await?;
            self.set_epoch_step(tenant, seen, Step::Rotated)?;
        }
        // `None`: the re-wrap already finished (the worker completes a saved job on its
        // own), or the tenant was shredded meanwhile.
        let done = self.rewrap_to_completion(tenant).await?;
        if self.keys.tenant_keys(tenant)?.0.shredded_at.is_some() {
            return Ok(None);
        }
        // The index key that made the erased people's entries goes too, so an old copy of
        // the index (a stale page, a backup) cannot be matched against values with a key
        // the vault still holds.
        let reindexed = self.reindex(tenant)?;
        tracing::info!(%tenant, reindexed, "key epoch rotated the tenant's index key");
        self.set_epoch_step(tenant, seen, Step::Done)?;
        Ok(Some(
            done.map_or((Vec::new(), 0), |d| (d.destroyed, d.rewrapped)),
        ))
    }

    /// The step the epoch under way reached with the tenant for these `seen` erasures.
    fn epoch_step(&self, tenant: &TenantId, seen: u64) -> Result<Option<Step>, ServiceError> {
        let Some(stored) = self.store.meta(&step_key(tenant))? else {
            return Ok(None);
        };
        let Some((count, step)) = stored.split_first_chunk::<8>() else {
            return Err(StoreError::Corrupt("key epoch step").into());
        };
        if u64::from_be_bytes(*count) != seen {
            // Recorded for fewer erasures than the mark counts now: do the tenant again.
            return Ok(None);
        }
        match step {
            [1] => Ok(Some(Step::Rotated)),
            [2] => Ok(Some(Step::Done)),
            _ => Err(StoreError::Corrupt("key epoch step").into()),
        }
    }

    fn set_epoch_step(&self, tenant: &TenantId, seen: u64, step: Step) -> Result<(), ServiceError> {
        let mut value = seen.to_be_bytes().to_vec();
        value.push(step as u8);
        self.set_meta(&step_key(tenant), &value)
    }

    /// Replaces a metadata value the key worker alone writes (it holds the job lock).
    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), ServiceError> {
        let current = self.store.meta(key)?;
        if self.store.meta_swap(key, current.as_deref(), value)? {
            Ok(())
        } else {
            Err(ServiceError::Internal(format!(
                "the key epoch record {key} changed under the key worker"
            )))
        }
    }

    /// The epoch under way, if one is.
    pub(super) fn epoch_run(&self) -> Result<Option<EpochRun>, ServiceError> {
        self.store
            .meta(EPOCH_RUN)?
            .map(|b| EpochRun::decode(&b))
            .transpose()
    }

    /// Records a failed attempt at the epoch under way (if it got as far as starting).
    pub(super) fn record_epoch_failure(&self, error: &ServiceError) {
        let recorded = self.epoch_run().and_then(|run| {
            let Some(mut run) = run else {
                return Ok(());
            };
            run.failures = run.failures.saturating_add(1);
            run.last_failure = Some((self.clock.now(), error.to_string()));
            self.set_meta(EPOCH_RUN, &run.encode())
        });
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record the key epoch's failure");
        }
    }

    /// When the next scheduled epoch is due: now if one is under way, else the interval
    /// after the last one (or after the schedule started, before the first).
    pub(super) fn next_epoch(&self) -> Result<Timestamp, ServiceError> {
        if self.epoch_run()?.is_some() {
            return Ok(self.clock.now());
        }
        let last = match self.keys.root_state()?.last_epoch {
            Some(t) => t,
            None => {
                let now = self.clock.now().0.to_be_bytes();
                let anchor = self.store.meta_init(EPOCH_ANCHOR, &now)?;
                Timestamp(
                    <[u8; 8]>::try_from(anchor.as_slice())
                        .map(u64::from_be_bytes)
                        .map_err(|_| ServiceError::Internal("bad key epoch anchor".into()))?,
                )
            }
        };
        let interval = u64::try_from(self.key_epoch_interval.as_micros()).unwrap_or(u64::MAX);
        Ok(Timestamp(last.0.saturating_add(interval)))
    }

    /// True if an epoch is under way (to resume) or the next scheduled one is due.
    pub(super) fn epoch_due(&self) -> Result<bool, ServiceError> {
        let now = self.clock.now();
        Ok(self.epoch_run()?.is_some() || now >= self.next_epoch()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_run_round_trips_with_and_without_a_failure() {
        let fresh = EpochRun {
            started_at: Timestamp(7),
            failures: 0,
            last_failure: None,
        };
        assert_eq!(EpochRun::decode(&fresh.encode()).expect("decodes"), fresh);
        let failed = EpochRun {
            started_at: Timestamp(7),
            failures: 2,
            last_failure: Some((Timestamp(9), "root key file directory /k: no".into())),
        };
        assert_eq!(EpochRun::decode(&failed.encode()).expect("decodes"), failed);
        assert!(EpochRun::decode(&[9]).is_err());
    }
}
