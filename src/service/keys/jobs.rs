//! Background key work, one job at a time:
//!
//! - **Re-wraps.** A tenant rotation stores a job (target version, cursor, counts) with the
//!   new version. The worker re-wraps the tenant's DEKs in batches, saving the cursor after
//!   each, so a killed vault resumes where it stopped. When a pass ends, a count of every
//!   wrapped DEK decides: none left under an older version → the older versions are
//!   destroyed (deleted from the store, evicted from the cache); else another pass.
//! - **Root rotations** left half-done (a crash, or a version added at the usage limit) are
//!   completed. On a shared store every node also follows the shared root key file
//!   (`Keyring::sync_root`) each time round.
//! - **Key epochs** (`epoch.rs`), every `key_epoch_interval`, and resumed until they
//!   complete once started.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::Operation;
use crate::domain::{SubjectId, TenantId};
use crate::keyring::{version_list as versions, Keyring, KeyringError, RewrapBatch, RootRotation};
use crate::metrics::KeyJob;
use crate::storage::StoreError;

use super::super::{Call, ServiceError, Vault};

/// How often the worker looks for work when nobody woke it.
const POLL: Duration = Duration::from_secs(1);
/// How long the worker waits after a failed job before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// On a store shared by several nodes, the longest a DEK stays cached after its unwrap: the
/// bound on how long a subject another node erased keeps its key in this node's memory.
const SHARED_DEK_CACHE_AGE: Duration = Duration::from_secs(30);
/// The job lease name of the key worker.
const KEY_JOBS: &str = "key-jobs";

/// A re-wrap that destroyed its old versions.
pub(super) struct RewrapDone {
    target: u32,
    pub(super) destroyed: Vec<u32>,
    pub(super) rewrapped: u64,
}

/// The background worker; runs until its task is aborted.
pub async fn run_key_jobs(vault: Arc<Vault>) {
    let call = Call::job("pii-vault/keys", "key-jobs");
    let scheduled = Call::job("pii-vault/key-epoch", "key-epoch");
    let taken = vault
        .key_jobs
        .epoch_queue
        .lock()
        .ok()
        .and_then(|mut q| q.take());
    let Some(mut asked) = taken else {
        tracing::error!("key worker started twice; this one stops");
        return;
    };
    let mut unsynced = false;
    // After a failed epoch (scheduled or asked for), the next attempt waits `RETRY_AFTER`.
    let mut retry_epoch_at: Option<tokio::time::Instant> = None;
    loop {
        // On a shared store another node may have rotated the root key or destroyed tenant
        // keys: follow it, so destroyed keys leave this node's memory within a second too.
        if vault.store.shared() {
            vault.keys.forget_deks_cached_before(SHARED_DEK_CACHE_AGE);
        }
        match vault
            .key_op(|k| k.sync_root().and_then(|_| k.sync_caches()))
            .await
        {
            Ok(_) => unsynced = false,
            Err(e) if !unsynced => {
                tracing::error!(error = %e, "cannot follow the other nodes' key changes");
                unsynced = true;
            }
            Err(_) => {}
        }
        // On a store shared by several nodes, one of them runs the key jobs; the others
        // wait and take over (resuming a re-wrap at its saved cursor) if it goes away.
        if !vault.holds_job(KEY_JOBS) {
            tokio::select! {
                () = vault.key_jobs.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                Some((_, done)) = asked.recv() => {
                    let _ = done.send(Err(ServiceError::KeyPrecondition(
                        "another vault node runs the key jobs; ask that node to run the epoch"
                            .into(),
                    )));
                }
            }
            continue;
        }
        let mut failed = false;
        if let Err(e) = vault.run_pending_key_jobs(&call).await {
            tracing::warn!(error = %e, "background key job failed; retrying later");
            failed = true;
        }
        let waiting = retry_epoch_at.is_some_and(|at| tokio::time::Instant::now() < at);
        match vault.epoch_due() {
            Ok(true) if !waiting => match vault.recorded_key_epoch(&scheduled).await {
                Ok(r) => {
                    tracing::info!(tenants = r.tenants.len(), "scheduled key epoch done");
                    retry_epoch_at = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "key epoch failed; it stays under way and is retried");
                    retry_epoch_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
                    failed = true;
                }
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the key epoch schedule"),
        }
        let pause = if failed { RETRY_AFTER } else { POLL };
        tokio::select! {
            () = vault.key_jobs.wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
            Some((call, done)) = asked.recv() => {
                let result = vault.recorded_key_epoch(&call).await;
                retry_epoch_at = result
                    .is_err()
                    .then(|| tokio::time::Instant::now() + RETRY_AFTER);
                // The caller may have gone; the epoch is done (or under way) either way.
                let _ = done.send(result);
            }
        }
    }
}

impl Vault {
    /// Completes a half-done root rotation and every tenant re-wrap that is waiting.
    async fn run_pending_key_jobs(&self, call: &Call) -> Result<(), ServiceError> {
        let _one = self.key_jobs.running.lock().await;
        if self.keys.root_rotation_pending() {
            let finished = self
                .use_case(call, Operation::RotateRootKey)
                .run_system(
                    self.key_op(Keyring::finish_root_rotation),
                    |r: &Option<RootRotation>, ev| {
                        if let Some(r) = r {
                            ev.reason = format!(
                                "completed: root v{}; retired {}; destroyed {}",
                                r.current,
                                versions(&r.retired),
                                versions(&r.destroyed)
                            );
                        }
                    },
                )
                .await;
            self.key_job_ended(KeyJob::RootRotation, finished.is_ok());
            finished?;
        }
        if self.keys.root_destruction_due()? {
            let destroyed = self
                .use_case(call, Operation::RotateRootKey)
                .run_system(
                    self.key_op(Keyring::destroy_expired_root_versions),
                    |d: &Vec<u32>, ev| {
                        ev.reason = format!(
                            "backup window passed: destroyed retired root versions {}",
                            versions(d)
                        );
                    },
                )
                .await;
            self.key_job_ended(KeyJob::RootRotation, destroyed.is_ok());
            destroyed?;
        }
        for (tenant, state) in self.store.all_tenant_keys()? {
            if state.rewrap.is_none() {
                continue;
            }
            // Shredded meanwhile (`None`): nothing to record.
            let rewrapped = self
                .use_case(call, Operation::RotateTenantKey)
                .tenant(&tenant)
                .run_job(self.rewrap_to_completion(&tenant), |done, ev| {
                    ev.reason = format!(
                        "re-wrap to v{} complete ({} DEKs); destroyed {}",
                        done.target,
                        done.rewrapped,
                        versions(&done.destroyed)
                    );
                })
                .await;
            self.key_job_ended(KeyJob::Rewrap, rewrapped.is_ok());
            rewrapped?;
        }
        Ok(())
    }

    /// Times the end of a background key job for the metrics (its audit event is written
    /// by the job itself).
    pub(super) fn key_job_ended(&self, job: KeyJob, ok: bool) {
        self.metrics.key_job(job, ok, self.clock.now());
    }

    /// Runs the tenant's re-wrap job until its old versions are destroyed. `None` if there
    /// is no job (or the tenant was shredded).
    pub(super) async fn rewrap_to_completion(
        &self, tenant: &TenantId,
    ) -> Result<Option<RewrapDone>, ServiceError> {
        let settings = self.key_jobs.settings;
        let mut rewrapped_here = 0u64;
        loop {
            // A node whose lease session ended may have lost the job to another node: it
            // stops before its next batch (a batch is idempotent, so one overlapping batch
            // does no harm; the other node resumes from the saved cursor).
            if !self.holds_job(KEY_JOBS) {
                return Err(ServiceError::Unavailable(StoreError::Backend(
                    "this node lost the key-jobs lease; another node continues the re-wrap".into(),
                )));
            }
            let (record, state) = self.keys.tenant_keys(tenant)?;
            let Some(mut job) = state.rewrap else {
                return Ok(None);
            };
            if record.shredded_at.is_some() {
                return Ok(None);
            }
            if job.target != record.kek_version {
                // `rotate_tenant` sets version and job together; anything else is damage.
                return Err(ServiceError::Internal(format!(
                    "re-wrap job of tenant {tenant} targets a key version that is not current"
                )));
            }
            if job.total == 0 && job.cursor.is_none() {
                let id = tenant.clone();
                job.total = self.key_op(move |k| k.count_wraps(&id)).await?.subjects;
            }
            let (id, target, cursor) = (tenant.clone(), job.target, job.cursor.clone());
            let batch = self
                .key_op(move |k| {
                    rewrap_or_rotate(k, &id, target, cursor.as_ref(), settings.rewrap_batch)
                })
                .await?;
            let Some(batch) = batch else {
                // The target reached its usage limit and the tenant key was rotated again.
                continue;
            };
            job.scanned += batch.scanned;
            job.rewrapped += batch.rewrapped;
            rewrapped_here += batch.rewrapped;
            self.metrics.rewrap_progress(tenant, job.scanned, job.total);
            job.cursor = batch.last.clone();
            if batch.end_of_pass {
                let id = tenant.clone();
                let counts = self.key_op(move |k| k.count_wraps(&id)).await?;
                let left: u64 = counts
                    .by_kek
                    .iter()
                    .filter(|(v, _)| **v != job.target)
                    .map(|(_, n)| n)
                    .sum();
                if left == 0 {
                    let id = tenant.clone();
                    let target = job.target;
                    match self.key_op(move |k| k.finish_rewrap(&id, target)).await? {
                        Some(destroyed) => {
                            self.metrics.rewrap_progress(tenant, 1, 1);
                            self.metrics.tenant_key_version(tenant, target);
                            tracing::info!(%tenant, version = target, destroyed = %versions(&destroyed), "re-wrap complete; old tenant key versions destroyed");
                            return Ok(Some(RewrapDone {
                                target,
                                destroyed,
                                rewrapped: rewrapped_here,
                            }));
                        }
                        None => continue,
                    }
                }
                job.cursor = None;
                job.passes += 1;
                job.total = counts.subjects;
            }
            if !self.keys.save_rewrap_progress(tenant, &job)? {
                continue;
            }
            if settings.rewrap_pause.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(settings.rewrap_pause).await;
            }
        }
    }
}

/// One batch; if the target KEK version reached its usage limit, rotates the tenant key
/// (the job follows the new version) and returns `None`.
fn rewrap_or_rotate(
    keys: &Keyring, tenant: &TenantId, target: u32, after: Option<&SubjectId>, limit: usize,
) -> Result<Option<RewrapBatch>, KeyringError> {
    match keys.rewrap_batch(tenant, target, after, limit) {
        Ok(batch) => Ok(Some(batch)),
        Err(KeyringError::LimitReached(why)) => {
            tracing::info!(%tenant, %why, "tenant key reached its usage limit during a re-wrap; rotating");
            keys.rotate_tenant(tenant)?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
