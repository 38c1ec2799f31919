//! The server's background tasks: policy and TLS reload on SIGHUP, the hourly retention sweep, the
//! daily audit prune, key jobs, store sampling for the metrics, and the shutdown grace timer.
//! `Tasks` starts them with the server and stops them before the store is flushed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::Authz;
use crate::metrics::Metrics;
use crate::service::Vault;
use crate::storage::Store;

use super::tls::ReloadableTls;

/// How often the store's size on disk is sampled for the metrics.
const STORE_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);
/// How often ended windows of counted denials are summarised.
const DENIAL_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The background tasks of a running server, aborted together at shutdown.
pub(super) struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    /// Starts every background task of a server over `vault` and `store`; `extra` are tasks
    /// started elsewhere (the metrics endpoint, the grace timer) stopped with them.
    pub(super) fn start(
        vault: &Arc<Vault>, store: &Arc<dyn Store>, authz: Arc<Authz>, tls: Arc<ReloadableTls>,
        metrics: &Metrics, extra: impl IntoIterator<Item = JoinHandle<()>>,
    ) -> Self {
        let mut tasks = vec![
            tokio::spawn(reload_on_sighup(authz, tls)),
            tokio::spawn(prune_audit_daily(vault.clone())),
            tokio::spawn(summarise_denials(vault.clone())),
            tokio::spawn(sweep_retention_hourly(vault.clone())),
            tokio::spawn(sample_store(
                Arc::downgrade(store),
                metrics.clone(),
                vault.tasks(),
            )),
            tokio::spawn(crate::service::run_key_jobs(vault.clone())),
        ];
        tasks.extend(extra);
        Self(tasks)
    }

    /// Aborts every task and waits until each has stopped (so none holds the vault).
    pub(super) async fn stop(self) {
        for task in self.0 {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Re-reads the policy file and the TLS files (certificate, client CA, revocation lists) on
/// SIGHUP; a bad file leaves the old policy or TLS configuration in force.
async fn reload_on_sighup(authz: Arc<Authz>, tls: Arc<ReloadableTls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match authz.reload() {
                Ok(()) => tracing::info!("policy reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "policy reload failed; the previous policy stays in force")
                }
            }
            match tls.reload() {
                Ok(()) => tracing::info!("TLS configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; the previous configuration stays in force")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (authz, tls);
}

/// Records the summaries of ended denial windows every ten seconds.
async fn summarise_denials(vault: Arc<Vault>) {
    let mut tick = tokio::time::interval(DENIAL_SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        vault.summarise_denials(false).await;
    }
}

/// Deletes expired fields once an hour (and a minute after start).
async fn sweep_retention_hourly(vault: Arc<Vault>) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    loop {
        tick.tick().await;
        if !vault.holds_job("retention-sweep") {
            continue;
        }
        match vault.sweep_retention().await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "retention sweep deleted expired fields"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }
}

/// Once shutdown starts, gives in-flight calls `grace` to finish, then cuts every
/// connection still open so the drain ends.
pub(super) async fn cut_after_grace(
    stopping: CancellationToken, cut: CancellationToken, grace: Duration,
) {
    stopping.cancelled().await;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutdown: draining in-flight calls"
    );
    tokio::time::sleep(grace).await;
    tracing::warn!("shutdown grace period over; dropping the remaining connections");
    cut.cancel();
}

/// Prunes audit events past their retention once a day (and once shortly after start), as
/// the vault's own retention job: no policy grant is needed (`Vault::prune_expired_audit`).
async fn prune_audit_daily(vault: Arc<Vault>) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(60),
        Duration::from_secs(86_400),
    );
    loop {
        tick.tick().await;
        if !vault.holds_job("audit-prune") {
            continue;
        }
        match vault.prune_expired_audit().await {
            Ok(r) if r.deleted > 0 => {
                tracing::info!(deleted = r.deleted, "pruned expired audit events")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit retention prune failed"),
        }
    }
}

/// Samples the store's size on disk now and then, and records every tenant's key version
/// once at start (afterwards the use cases keep it current).
async fn sample_store(store: Weak<dyn Store>, metrics: Metrics, jobs: TaskTracker) {
    let mut tick = tokio::time::interval(STORE_SAMPLE_INTERVAL);
    let mut first = true;
    loop {
        tick.tick().await;
        // A weak handle, so that sampling never keeps the store open at shutdown.
        let Some(store) = store.upgrade() else {
            return;
        };
        let metrics = metrics.clone();
        let key_versions = std::mem::take(&mut first);
        // Tracked with the vault's jobs: shutdown waits for a sample under way.
        let _ = jobs
            .spawn_blocking(move || {
                match store.disk_bytes() {
                    Ok(Some(bytes)) => metrics.store_size(bytes),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the store size"),
                }
                if key_versions {
                    record_key_versions(store.as_ref(), &metrics);
                }
            })
            .await;
    }
}

fn record_key_versions(store: &dyn Store, metrics: &Metrics) {
    let mut after = None;
    loop {
        match store.tenants(after.as_ref(), 1000) {
            Ok(page) if page.is_empty() => return,
            Ok(page) => {
                for t in &page {
                    metrics.tenant_key_version(&t.id, t.kek_version);
                }
                after = page.last().map(|t| t.id.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list tenants for the key version metrics");
                return;
            }
        }
    }
}
