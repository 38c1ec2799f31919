//! Use cases of the vault. Handlers in `api` call these with validated domain types; this
//! layer orders the keyring, the store and the audit log, and decides what is durable when.
//!
//! Every use case records one audit event, and returns its result only after that event is
//! on disk: a read whose event cannot be written fails closed with `AuditUnavailable`.

mod access;
mod audit_log;
mod audit_ops;
mod audit_sink;
mod backup;
mod erasure;
mod error;
mod export;
mod high_water;
mod keys;
mod lookup;
mod records;
mod retention;
mod subject_rights;
mod tenants;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

pub use access::{AccessReport, HeldField, Recipient};
pub use audit_log::{verify_store, AuditError, AuditLog, PruneReport};
pub use audit_ops::AuditPage;
pub use audit_sink::{JsonlSink, SinkConfig};
pub use erasure::{ErasureReceipt, DEFAULT_KEY_EPOCH};
pub use error::ServiceError;
pub use export::{Export, EXPORT_CHUNK, EXPORT_SCHEMA};
pub use high_water::{HighWater, HighWaterError, HIGH_WATER_FILE};
pub use keys::{
    run_key_jobs, EpochReport, KeySettings, KeyStatus, RootStatus, ShredReport, TenantKeyStatus,
    TenantRotation, VersionStatus,
};
pub use records::SubjectPage;
pub use retention::RetentionRules;
pub use subject_rights::StateChange;
pub use tenants::TenantPage;
pub use tokens::Tokenized;

use crate::audit::{EventDraft, Operation, Outcome};
use crate::authz::{Action, Authz, Grant, PeerIdentity};
use crate::domain::{Clock, Purpose, SubjectId, TenantId};
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::storage::{GroupCommit, Store};

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
    /// Audit events older than this may be pruned (the policy keeps logs 12 months).
    pub audit_retention: Duration,
    /// How often key epochs run; an erasure is final (no surviving key copy) after the next.
    pub key_epoch_interval: Duration,
    /// How long fields of each category are kept when written without a TTL.
    pub retention: RetentionRules,
    /// Key usage limits and the pace of background re-wraps.
    pub keys: KeySettings,
    /// False only for the load generator's "auditing off" baseline: no configuration key
    /// reaches it, and `serve` always audits.
    pub audit_enabled: bool,
    /// The file holding the audit log's high-water mark (see `high_water.rs`), for a store
    /// that can silently lose its tail (sled); `None` for none.
    pub high_water_file: Option<std::path::PathBuf>,
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
            audit_retention: Duration::from_secs(365 * 86_400),
            audit_enabled: true,
            high_water_file: None,
            key_epoch_interval: DEFAULT_KEY_EPOCH,
            retention: RetentionRules::default(),
            metrics: Metrics::default(),
            keys: KeySettings::default(),
        }
    }
}

/// Who makes a request and how to find it again: attached to its audit event and logs.
#[derive(Clone, Debug)]
pub struct Call {
    pub caller: PeerIdentity,
    pub request_id: String,
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
    clock: Arc<dyn Clock>,
    limits: Limits,
    audit_retention: Duration,
    audit_enabled: bool,
    key_epoch_interval: Duration,
    retention: RetentionRules,
    /// Queue of erased subjects whose field ciphertexts are purged in the background.
    purger: tokio::sync::mpsc::UnboundedSender<(crate::domain::TenantId, crate::domain::SubjectId)>,
    metrics: Metrics,
    /// Background key work: one job (re-wrap, root rotation, epoch) at a time.
    key_jobs: keys::KeyJobs,
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
        store: Arc<dyn Store>,
        keys: Keyring,
        authz: Arc<Authz>,
        clock: Arc<dyn Clock>,
        settings: VaultSettings,
    ) -> Result<Self, ServiceError> {
        // First, before any task holds the store: a refused store is released at once.
        let audit_key = keys.audit_key()?;
        let high_water = match settings.high_water_file {
            Some(path) => Some(HighWater::check(path, store.as_ref(), &audit_key)?),
            None => None,
        };
        let commit = GroupCommit::start(store.clone(), settings.metrics.clone());
        let sink = settings
            .audit_sink
            .map(JsonlSink::open)
            .transpose()
            .map_err(|e| ServiceError::Internal(format!("audit sink: {e}")))?;
        let observer = {
            let metrics = settings.metrics.clone();
            Box::new(move |hit| metrics.dek_cache(hit)) as crate::keyring::LookupObserver
        };
        let keys = keys
            .with_limits(settings.keys.limits)
            .with_dek_cache(settings.keys.dek_cache_entries, Some(observer))
            .with_clock(clock.clone());
        let audit = AuditLog::start(
            store.clone(),
            commit.clone(),
            audit_key,
            sink,
            settings.audit_timeout,
            settings.metrics.clone(),
            high_water,
        )?;
        Ok(Self {
            purger: erasure::start_purger(store.clone()),
            store,
            keys: Arc::new(keys),
            authz,
            commit,
            audit,
            clock,
            limits: settings.limits,
            audit_retention: settings.audit_retention,
            audit_enabled: settings.audit_enabled,
            key_epoch_interval: settings.key_epoch_interval,
            retention: settings.retention,
            metrics: settings.metrics,
            key_jobs: keys::KeyJobs::new(settings.keys),
        })
    }

    /// The limits requests are checked against.
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

    /// Asks the policy whether `call` may do `action`; records the deciding rule in `ev`.
    fn authorize(
        &self,
        call: &Call,
        ev: &mut EventDraft,
        action: Action,
        tenant: Option<&TenantId>,
        purpose: Option<&Purpose>,
    ) -> Result<Grant, ServiceError> {
        let grant = self.authz.decide(&call.caller, action, tenant, purpose)?;
        ev.rule = grant.rule().to_owned();
        Ok(grant)
    }

    /// `authorize` for an action on one subject's data: the subject's restriction and
    /// consents are decided in the same check.
    fn authorize_subject(
        &self,
        call: &Call,
        ev: &mut EventDraft,
        action: Action,
        tenant: &TenantId,
        subject: &SubjectId,
        purpose: Option<&Purpose>,
    ) -> Result<Grant, ServiceError> {
        let state = self.store.subject_state(tenant, subject)?;
        let grant = self
            .authz
            .decide_for_subject(&call.caller, action, tenant, purpose, &state)?;
        ev.rule = grant.rule().to_owned();
        Ok(grant)
    }

    /// Re-reads the policy file (the admin RPC; SIGHUP calls `Authz::reload` directly).
    pub async fn reload_policy(&self, call: &Call) -> Result<(), ServiceError> {
        let mut ev = self.draft(call, Operation::ReloadPolicy);
        let result = self
            .authorize(call, &mut ev, Action::PolicyAdmin, None, None)
            .and_then(|_| {
                self.authz
                    .reload()
                    .map_err(|e| crate::domain::InvalidInput::new(e.to_string()).into())
            });
        self.record(ev, result).await
    }

    /// The audit log (for verification and pruning by operators).
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// A new audit event for `call` doing `operation`, not yet about any tenant or subject.
    fn draft(&self, call: &Call, operation: Operation) -> EventDraft {
        EventDraft {
            time: self.clock.now(),
            request_id: call.request_id.clone(),
            caller: call.caller.as_str().to_owned(),
            operation,
            tenant: String::new(),
            subject: String::new(),
            fields: Vec::new(),
            purpose: String::new(),
            outcome: Outcome::Ok,
            reason: String::new(),
            rule: String::new(),
        }
    }

    /// Records how a request ended, then hands back its result: only once the event is
    /// durable. If it cannot be recorded, the result is withheld and the call fails closed.
    async fn record<T>(
        &self,
        mut draft: EventDraft,
        result: Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        if !self.audit_enabled {
            // Benchmark baseline: no event, but writes are still flushed before success.
            if result.is_ok() && draft.operation.is_write() {
                self.commit.durable().await?;
            }
            return result;
        }
        if let Err(e) = &result {
            draft.outcome = e.outcome();
            draft.reason = e.audit_reason();
        }
        match self.audit.append(draft).await {
            Ok(_) => result,
            Err(e) => Err(ServiceError::AuditUnavailable(e)),
        }
    }

    /// Records a request refused before it reached a use case (malformed input), and
    /// returns the error to answer with.
    pub async fn reject(
        &self,
        call: &Call,
        operation: Operation,
        error: ServiceError,
    ) -> ServiceError {
        let draft = self.draft(call, operation);
        match self.record::<()>(draft, Err(error)).await {
            Err(e) => e,
            Ok(()) => ServiceError::Internal("a rejection was recorded as a success".into()),
        }
    }
}
