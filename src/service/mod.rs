//! Use cases of the vault. Handlers in `api` call these with validated domain types; this
//! layer orders the keyring, the store and the audit log, and decides what is durable when.
//!
//! Every use case records one audit event, and returns its result only after that event is
//! on disk: a read whose event cannot be written fails closed with `AuditUnavailable`. The
//! sequence (draft the event, authorize, run, record) is written once, in `usecase`; each
//! public method of `Vault` is one run of it, in the folder of its use cases:
//!
//! - `records/`: put, get, delete, list, blind-index lookup, card tokens;
//! - `rights/`: erasure, access report, export, restriction and consent, retention;
//! - `keys/`: rotations, key status, epochs, shredding, and the background key jobs;
//! - `audit/`: the audit log itself and the operators' query, verify, prune;
//! - `tenants.rs`, `admin.rs` (backup, policy reload).
//!
//! Where blocking work leaves the async workers is decided in `blocking`; the write path's
//! one retry policy is in `retry`.

mod admin;
mod audit;
mod blocking;
mod error;
mod keys;
mod records;
mod retry;
mod rights;
mod tenants;
mod usecase;

use std::sync::Arc;
use std::time::Duration;

/// The audit vocabulary the api layer shows callers: operation names (also for the events
/// of rejected requests), outcomes, query filters and the events a query returns.
pub use crate::audit::{AuditEvent, AuditFilter, Operation, Outcome, VerifyReport};
pub use audit::{
    syslog_host, verify_store, AuditError, AuditLog, AuditPage, DenialSettings, HighWater,
    HighWaterError, JsonlSink, PruneReport, SinkConfig, SyslogConfig, SyslogSink, HIGH_WATER_FILE,
};
pub use error::{OpenError, ServiceError};
pub use keys::{
    run_key_jobs, EpochReport, KeySettings, KeyStatus, RootStatus, ShredReport, TenantKeyStatus,
    TenantRotation, VersionStatus,
};
pub use records::{token_field, SubjectPage, TokenSettings, Tokenized};
pub use rights::{
    AccessReport, ErasureReceipt, Export, HeldField, LedgerApplied, LedgerError, Recipient,
    RetentionRules, StateChange, DEFAULT_KEY_EPOCH, EXPORT_CHUNK, EXPORT_SCHEMA,
};
pub use tenants::TenantPage;

use crate::authz::{Authz, PeerIdentity};
use crate::domain::{Clock, SubjectId, TenantId};
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::storage::{GroupCommit, Store};
use blocking::Background;
use tokio_util::task::task_tracker::{TaskTracker, TaskTrackerToken};

/// Limits on what one request may carry.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted field value, in bytes.
    pub max_value_bytes: usize,
    /// Most fields one `PutFields` or `GetFields` may name.
    pub max_fields_per_request: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_bytes: 64 * 1024,
            max_fields_per_request: 1000,
        }
    }
}

/// Settings of the vault's use cases.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    pub limits: Limits,
    /// Longest a request waits for its audit event to be durable before failing closed.
    pub audit_timeout: Duration,
    /// Optional JSON-lines mirror of the audit log for a SIEM.
    pub audit_sink: Option<SinkConfig>,
    /// Optional RFC 5424 syslog mirror of the audit log (TCP, TLS unless disabled).
    pub audit_syslog: Option<SyslogConfig>,
    /// Audit events older than this may be pruned (the policy keeps logs 12 months).
    pub audit_retention: Duration,
    /// How often key epochs run; an erasure is final (no surviving key copy) after the next.
    pub key_epoch_interval: Duration,
    /// How long fields of each category are kept when written without a TTL.
    pub retention: RetentionRules,
    /// Key usage limits and the pace of background re-wraps.
    pub keys: KeySettings,
    /// The shape of each tenant's card tokens.
    pub tokens: TokenSettings,
    /// False only for the load generator's "auditing off" baseline: no configuration key
    /// reaches it, `serve` always audits, and it exists only with the `testing` feature
    /// (benches and tests), never in the production library.
    #[cfg(feature = "testing")]
    pub audit_enabled: bool,
    /// The file holding the audit log's high-water mark (see `high_water.rs`), for a store
    /// that can silently lose its tail (sled); `None` for none.
    pub high_water_file: Option<std::path::PathBuf>,
    /// How repeated denials of one identity are summarised in the audit log.
    pub denials: DenialSettings,
    /// The erasure ledger (`rights/ledger.rs`): every erasure and shred recorded outside
    /// the store, applied to restored stores. `None`: no ledger (a store whose backups are
    /// not this vault's, such as PostgreSQL's).
    pub erasure_ledger: Option<std::path::PathBuf>,
    /// Where the vault reports what it measures. The server hands in the registry it
    /// exposes; the default is a private one that nobody reads.
    pub metrics: Metrics,
}

impl Default for VaultSettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            audit_timeout: Duration::from_secs(2),
            audit_sink: None,
            audit_syslog: None,
            audit_retention: Duration::from_secs(365 * 86_400),
            #[cfg(feature = "testing")]
            audit_enabled: true,
            high_water_file: None,
            erasure_ledger: None,
            denials: DenialSettings::default(),
            key_epoch_interval: DEFAULT_KEY_EPOCH,
            retention: RetentionRules::default(),
            metrics: Metrics::default(),
            keys: KeySettings::default(),
            tokens: TokenSettings::default(),
        }
    }
}

/// Who makes a request and how to find it again: attached to its audit event and logs.
#[derive(Clone, Debug)]
pub struct Call {
    pub caller: PeerIdentity,
    pub request_id: String,
}

impl Call {
    /// A call of one of the vault's own jobs: its `job:` identity (which no certificate can
    /// carry) and a fixed request id naming the job, so its audit events are easy to find.
    pub fn job(identity: &str, job: &str) -> Self {
        Self {
            caller: PeerIdentity::job(identity),
            request_id: job.to_owned(),
        }
    }
}

/// The request id of a call, made here and nowhere else: the client's id if it is
/// well-formed (1 to 64 of `A-Za-z0-9-_.`), else a new random one.
pub fn request_id(client: Option<&str>) -> String {
    match client {
        Some(id) if well_formed_request_id(id) => id.to_owned(),
        _ => random_id(12),
    }
}

/// Whether a client-chosen request id may be used as it is (logged and audited verbatim).
pub fn well_formed_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The vault's use cases, shared by every handler.
pub struct Vault {
    store: Arc<dyn Store>,
    /// Shared with background re-wrap batches, which run on blocking threads.
    keys: Arc<Keyring>,
    /// The policy decision point: every use case asks it first.
    authz: Arc<Authz>,
    /// Shared flushes; the audit writer uses it too, so data and events share a flush.
    commit: GroupCommit,
    audit: AuditLog,
    /// Counts of denials not recorded one by one, until their summary.
    denials: audit::Denials,
    clock: Arc<dyn Clock>,
    limits: Limits,
    audit_retention: Duration,
    /// The benchmark baseline's switch (see `VaultSettings::audit_enabled`).
    #[cfg(feature = "testing")]
    audit_enabled: bool,
    key_epoch_interval: Duration,
    /// Erasures and shreds recorded outside the store (`rights/ledger.rs`).
    ledger: Option<Arc<rights::ErasureLedger>>,
    retention: RetentionRules,
    tokens: TokenSettings,
    /// Queue of erased subjects whose field ciphertexts are purged in the background.
    purger: tokio::sync::mpsc::UnboundedSender<(TenantId, SubjectId)>,
    metrics: Metrics,
    /// Background key work: one job (re-wrap, root rotation, epoch) at a time.
    key_jobs: keys::KeyJobs,
    /// Tracks every task and blocking job the vault starts (`blocking::Background`).
    background: Background,
    /// Counts this vault as a running task until it is dropped; declared last, so it goes
    /// after the store and keyring handles above (shutdown waits for it).
    _alive: TaskTrackerToken,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Vault {
    /// Assembles the vault and starts its background tasks (flusher, audit writer). Must be
    /// called inside a tokio runtime.
    pub fn open(
        store: Arc<dyn Store>, keys: Keyring, authz: Arc<Authz>, clock: Arc<dyn Clock>,
        settings: VaultSettings,
    ) -> Result<Self, OpenError> {
        // First, before any task holds the store: a refused store is released at once.
        let audit_key = keys.audit_key().map_err(OpenError::AuditKey)?;
        let high_water = match settings.high_water_file {
            Some(path) => Some(HighWater::check(path, store.as_ref(), &audit_key)?),
            None => None,
        };
        let high_water = high_water.map(Arc::new);
        let background = Background::default();
        // The audit writer keeps the newest durable sequence number; each flush stores it in
        // the store and, once flushed, hands it to the high-water mark (a rolled-back store
        // holds an older one).
        let durable_seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let flush_mark = high_water.clone().map(|hw| crate::storage::FlushMark {
            source: durable_seq.clone(),
            flushed: Arc::new(move |seq| hw.advance_data(seq)),
        });
        let commit = GroupCommit::start(
            store.clone(),
            settings.metrics.clone(),
            background.tracker(),
            flush_mark,
        );
        let sink = settings
            .audit_sink
            .map(JsonlSink::open)
            .transpose()
            .map_err(OpenError::AuditSink)?;
        let syslog = settings
            .audit_syslog
            .map(SyslogSink::open)
            .transpose()
            .map_err(OpenError::AuditSink)?;
        let observer = {
            let metrics = settings.metrics.clone();
            Box::new(move |hit| metrics.dek_cache(hit)) as crate::keyring::LookupObserver
        };
        let keys = keys
            .with_backup_window(settings.keys.backup_window)
            .with_limits(settings.keys.limits)
            .with_dek_cache(settings.keys.dek_cache_entries, Some(observer))
            .with_clock(clock.clone());
        let ledger = match &settings.erasure_ledger {
            Some(path) => {
                let key = keys.ledger_key().map_err(OpenError::AuditKey)?;
                Some(Arc::new(rights::ErasureLedger::open(path, key)?))
            }
            None => None,
        };
        let writer = audit::Writer {
            store: store.clone(),
            key: Arc::new(audit_key),
            now: clock.now(),
            metrics: settings.metrics.clone(),
            high_water,
            durable_seq,
            background: background.clone(),
            syslog,
        };
        let audit =
            AuditLog::start(writer, sink, settings.audit_timeout).map_err(OpenError::AuditLog)?;
        Ok(Self {
            purger: rights::start_purger(store.clone(), &background),
            store,
            keys: Arc::new(keys),
            authz,
            commit,
            audit,
            denials: audit::Denials::new(settings.denials),
            clock,
            limits: settings.limits,
            audit_retention: settings.audit_retention,
            #[cfg(feature = "testing")]
            audit_enabled: settings.audit_enabled,
            key_epoch_interval: settings.key_epoch_interval,
            ledger,
            retention: settings.retention,
            tokens: settings.tokens,
            metrics: settings.metrics,
            key_jobs: keys::KeyJobs::new(settings.keys),
            _alive: background.token(),
            background,
        })
    }

    /// What shutdown waits for: every task and blocking job of the vault, and every handle
    /// of the vault itself. Take it, drop the handle, then `closed(tracker).await`.
    pub fn tasks(&self) -> TaskTracker {
        self.background.tracker().clone()
    }

    /// Whether this node runs the background job `job` now (see `Store::job_lease`); a
    /// store error counts as no, so two nodes never both run one.
    pub fn holds_job(&self, job: &str) -> bool {
        match self.store.job_lease(job) {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(job, error = %e, "cannot take the job lease");
                false
            }
        }
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Hits, misses and size of the unwrapped-DEK cache (also exported as metrics).
    pub fn dek_cache_stats(&self) -> crate::keyring::DekCacheStats {
        self.keys.dek_cache_stats()
    }

    /// The policy decision point (reloaded on SIGHUP and by the admin RPC).
    pub fn authz(&self) -> &Authz {
        &self.authz
    }

    /// The audit log (for verification and pruning by operators).
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Records a request refused before it reached a use case (malformed input), and
    /// returns the error to answer with.
    pub async fn reject(
        &self, call: &Call, operation: Operation, error: ServiceError,
    ) -> ServiceError {
        self.use_case(call, operation).reject(error).await
    }
}

/// Waits until every task and blocking job tracked by `tasks` (from `Vault::tasks`) has
/// ended and every handle of its vault was dropped: then nothing of the vault holds the
/// store any more.
pub async fn closed(tasks: TaskTracker) {
    tasks.close();
    tasks.wait().await;
}

/// A random id of `bytes` bytes, in hex: request ids, receipt ids. Ids only need to be
/// unique; a failing CSPRNG is caught where keys are generated, so this never fails.
pub fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = crate::crypto::fill_random(&mut buf);
    hex::encode(buf)
}
