//! Key management use cases for the security team: rotate a tenant key (the re-wrap runs
//! in the background), rotate the root key, read the state of every key, run a key epoch,
//! shred a tenant. Each records one audit event.
//!
//! Background work (`jobs.rs`) runs one job at a time: re-wraps after tenant rotations
//! (also those a usage limit triggered, and those a restart interrupted), root rotations a
//! crash left half-done, and the scheduled key epochs.

mod epoch;
mod jobs;
mod sealing;
mod status;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex, Notify};

pub use epoch::EpochRun;
pub use jobs::run_key_jobs;
pub use status::{KeyStatus, RootStatus, TenantKeyStatus, VersionStatus};

use crate::audit::Operation;
use crate::authz::act;
use crate::domain::{TenantId, Timestamp};
use crate::keyring::{version_list as versions, KeyLimits, Keyring, KeyringError, RootRotation};

use super::usecase::Check;
use super::{Call, ServiceError, Vault};

/// Key usage limits and the pace of background re-wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySettings {
    pub limits: KeyLimits,
    /// Subjects re-wrapped per batch; progress is saved after each.
    pub rewrap_batch: usize,
    /// Pause between re-wrap batches, leaving room for live traffic.
    pub rewrap_pause: Duration,
    /// Unwrapped subject DEKs kept in memory (0: none, every read unwraps).
    pub dek_cache_entries: usize,
    /// How long a retired root key version still opens backups (`backup.retention_days`).
    pub backup_window: Duration,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            limits: KeyLimits::default(),
            rewrap_batch: 500,
            rewrap_pause: Duration::ZERO,
            dek_cache_entries: crate::keyring::DEFAULT_DEK_CACHE_ENTRIES,
            backup_window: crate::keyring::DEFAULT_BACKUP_WINDOW,
        }
    }
}

/// A request for a key epoch, answered when it is done.
type EpochRequest = (Call, oneshot::Sender<Result<EpochReport, ServiceError>>);

/// What the background key work shares with the use cases.
pub(super) struct KeyJobs {
    settings: KeySettings,
    /// Held by whoever runs a re-wrap, a root rotation's completion or an epoch.
    running: Mutex<()>,
    /// Wakes the worker when a rotation started a job.
    wake: Notify,
    /// Epochs asked for by `RunKeyEpoch`: the worker runs them, so an epoch completes even
    /// if the request that asked for it is cancelled (a client deadline, say).
    epochs: mpsc::UnboundedSender<EpochRequest>,
    /// The worker's end of `epochs`, taken when it starts.
    epoch_queue: std::sync::Mutex<Option<mpsc::UnboundedReceiver<EpochRequest>>>,
}

impl KeyJobs {
    pub(super) fn new(settings: KeySettings) -> Self {
        let (epochs, queue) = mpsc::unbounded_channel();
        Self {
            settings,
            running: Mutex::new(()),
            wake: Notify::new(),
            epochs,
            epoch_queue: std::sync::Mutex::new(Some(queue)),
        }
    }
}

/// A tenant key rotation that was started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRotation {
    pub tenant: TenantId,
    pub previous_version: u32,
    pub new_version: u32,
}

/// What a key epoch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochReport {
    /// Tenants whose KEK was rotated (they had erasures), with the versions destroyed.
    pub tenants: Vec<(TenantId, Vec<u32>)>,
    /// Shredded tenants whose epoch mark was cleared (nothing left to rotate).
    pub shredded_tenants: Vec<TenantId>,
    /// DEKs re-wrapped for those tenants.
    pub deks_rewrapped: u64,
    /// The root key rotation that ended the epoch.
    pub root: RootRotation,
    pub completed_at: Timestamp,
}

/// What shredding a tenant did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShredReport {
    pub tenant: TenantId,
    pub shredded_at: Timestamp,
    pub destroyed_versions: Vec<u32>,
}

/// Runs a keyring operation on a blocking thread (`service::blocking`): it reads, writes
/// and flushes the store.
impl Vault {
    async fn key_op<T: Send + 'static>(
        &self, op: impl FnOnce(&Keyring) -> Result<T, KeyringError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let keys = self.keys.clone();
        self.background
            .run(move || op(&keys))
            .await
            .map_err(|_| ServiceError::Internal("a key operation panicked".into()))?
            .map_err(ServiceError::from)
    }
}

impl Vault {
    /// Starts a rotation of a tenant's KEK: a new version wraps new DEKs at once, and the
    /// existing DEKs are re-wrapped in the background; the old version is destroyed when no
    /// DEK uses it any more. Refused while a re-wrap of the tenant is still running.
    pub async fn rotate_tenant_key(
        &self, call: &Call, tenant: &TenantId,
    ) -> Result<TenantRotation, ServiceError> {
        let result = self
            .use_case(call, Operation::RotateTenantKey)
            .tenant(tenant)
            .run(
                Check::action(act::KeyAdmin, Some(tenant)),
                |_| self.start_tenant_rotation(tenant),
                |r: &TenantRotation, ev| {
                    ev.reason = format!(
                        "v{} -> v{}; re-wrap started",
                        r.previous_version, r.new_version
                    );
                },
            )
            .await;
        self.key_jobs.wake.notify_one();
        result
    }

    async fn start_tenant_rotation(
        &self, tenant: &TenantId,
    ) -> Result<TenantRotation, ServiceError> {
        self.tenant_record(tenant)?;
        let (_, state) = self.keys.tenant_keys(tenant)?;
        if let Some(job) = state.rewrap {
            return Err(ServiceError::KeyPrecondition(format!(
                "the re-wrap to key version {} is still running; wait for it (GetKeyStatus)",
                job.target
            )));
        }
        let id = tenant.clone();
        let (previous_version, new_version) = self.key_op(move |k| k.rotate_tenant(&id)).await?;
        Ok(TenantRotation {
            tenant: tenant.clone(),
            previous_version,
            new_version,
        })
    }

    /// Rotates the root key: a new version, every tenant KEK and the audit key re-wrapped
    /// under it, the old versions destroyed in the root key file. Returns when done.
    pub async fn rotate_root_key(&self, call: &Call) -> Result<RootRotation, ServiceError> {
        self.use_case(call, Operation::RotateRootKey)
            .run(
                Check::action(act::KeyAdmin, None),
                |_| self.key_op(Keyring::rotate_root),
                |r: &RootRotation, ev| {
                    ev.reason = format!(
                        "root v{}; retired {}; destroyed {}; re-wrapped {}",
                        r.current,
                        versions(&r.retired),
                        versions(&r.destroyed),
                        r.rewrapped
                    );
                },
            )
            .await
    }

    /// Runs a key epoch now (see `jobs.rs`) on the background worker (`run_key_jobs`
    /// must be running), and returns when it is done.
    pub async fn run_key_epoch(&self, call: &Call) -> Result<EpochReport, ServiceError> {
        // Scheduled epochs run as the system; one asked for over the API needs key_admin.
        // A refusal is recorded here; the epoch itself is recorded by the worker that runs
        // it (`recorded_key_epoch`), so it is recorded even if this request is cancelled.
        self.use_case(call, Operation::KeyEpoch)
            .admit(Check::action(act::KeyAdmin, None))
            .await?;
        let (done, report) = oneshot::channel();
        self.key_jobs
            .epochs
            .send((call.clone(), done))
            .map_err(|_| ServiceError::Internal("the key worker stopped".into()))?;
        report
            .await
            .map_err(|_| ServiceError::Internal("the key worker stopped".into()))?
    }

    /// Runs a key epoch and records its audit event.
    async fn recorded_key_epoch(&self, call: &Call) -> Result<EpochReport, ServiceError> {
        let epoch = self
            .use_case(call, Operation::KeyEpoch)
            .run_system(self.key_epoch(), |r: &EpochReport, ev| {
                ev.fields = r.tenants.iter().map(|(t, _)| t.to_string()).collect();
                ev.reason = format!(
                    "rotated {} tenant keys; root v{}, retired {}, destroyed {}",
                    r.tenants.len(),
                    r.root.current,
                    versions(&r.root.retired),
                    versions(&r.root.destroyed)
                );
            })
            .await;
        self.key_job_ended(crate::metrics::KeyJob::Epoch, epoch.is_ok());
        if let Err(e) = &epoch {
            self.record_epoch_failure(e);
        }
        epoch
    }

    /// Destroys every KEK version of a tenant: all its subjects become unreadable at once,
    /// and every later request for the tenant answers NOT_FOUND ("shredded"). Irreversible.
    pub async fn shred_tenant(
        &self, call: &Call, tenant: &TenantId,
    ) -> Result<ShredReport, ServiceError> {
        self.use_case(call, Operation::ShredTenant)
            .tenant(tenant)
            .run(
                Check::action(act::KeyAdmin, Some(tenant)),
                |_| self.shred(tenant),
                |r: &ShredReport, ev| {
                    ev.reason =
                        format!("destroyed key versions {}", versions(&r.destroyed_versions));
                },
            )
            .await
    }

    /// Records the shred in the erasure ledger, then does it (cancelling the entry if it
    /// fails).
    async fn shred(&self, tenant: &TenantId) -> Result<ShredReport, ServiceError> {
        self.tenant_record(tenant)?;
        self.ledgered_shred(tenant, self.shred_unrecorded(tenant))
            .await
    }

    /// The shred itself, without a ledger entry (applying the ledger uses it).
    pub(in crate::service) async fn shred_unrecorded(
        &self, tenant: &TenantId,
    ) -> Result<ShredReport, ServiceError> {
        self.tenant_record(tenant)?;
        let id = tenant.clone();
        let destroyed_versions = self.key_op(move |k| k.shred_tenant(&id)).await?;
        let (record, _) = self.keys.tenant_keys(tenant)?;
        Ok(ShredReport {
            tenant: tenant.clone(),
            shredded_at: record.shredded_at.unwrap_or_else(|| self.clock.now()),
            destroyed_versions,
        })
    }
}
