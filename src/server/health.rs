//! Health that follows what the vault can do: every gRPC service (and the server as a
//! whole, service "") is SERVING only while the vault is not draining, its store answers a
//! flush and a read, and no audit append has failed since the last probe. The same state
//! answers `/readyz` on the metrics listener; `/livez` says only that the process answers.
//!
//! A probe runs every `PROBE_EVERY` on the blocking pool and must finish within
//! `PROBE_TIMEOUT` (a store that hangs is as unready as one that fails). A change is logged
//! once, with its reason.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::metrics::Metrics;
use crate::storage::Store;

/// How often the store and the audit log are probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Longest a probe may take before the store counts as failing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the vault can serve, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    Ready = 0,
    /// Shutting down: in-flight calls finish, new ones should go elsewhere.
    Draining = 1,
    /// The store failed or did not answer a probe.
    StoreFailing = 2,
    /// An audit append failed since the last probe: reads would fail closed.
    AuditFailing = 3,
}

impl Readiness {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Ready,
            1 => Self::Draining,
            2 => Self::StoreFailing,
            _ => Self::AuditFailing,
        }
    }

    /// What `/readyz` says.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::StoreFailing => "the store cannot be written",
            Self::AuditFailing => "the audit log cannot be written",
        }
    }
}

/// The current readiness, shared by the gRPC health service and `/readyz`.
#[derive(Debug, Default)]
pub struct ReadyState(AtomicU8);

impl ReadyState {
    pub fn get(&self) -> Readiness {
        Readiness::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Moves to `now` unless it is there already or draining (never undone). Returns the
    /// readiness it left, or `None` when nothing changed.
    fn change(&self, now: Readiness) -> Option<Readiness> {
        let draining = Readiness::Draining as u8;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |was| {
                (was != draining && was != now as u8).then_some(now as u8)
            })
            .ok()
            .map(Readiness::from_u8)
    }
}

/// Publishes readiness to the gRPC health service of every vault service.
pub(super) struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
    state: Arc<ReadyState>,
    /// Held while the services are told: the last to tell says the latest state.
    telling: tokio::sync::Mutex<()>,
}

impl Health {
    /// Starts with every service reporting `state` as it is now.
    pub(super) async fn new(
        reporter: HealthReporter, services: Vec<&'static str>, state: Arc<ReadyState>,
    ) -> Arc<Self> {
        let health = Arc::new(Self {
            reporter,
            services,
            state,
            telling: tokio::sync::Mutex::new(()),
        });
        health.tell().await;
        health
    }

    /// Sets every service SERVING or NOT_SERVING after `now`, if that changes anything;
    /// draining is never undone.
    pub(super) async fn publish(&self, now: Readiness) {
        if self.state.change(now).is_none() {
            return;
        }
        match now {
            Readiness::Ready => tracing::info!("health: serving"),
            other => tracing::warn!(reason = other.reason(), "health: not serving"),
        }
        self.tell().await;
    }

    /// Tells every service the current state (read under the lock, so two changes told at
    /// once end on the later one).
    async fn tell(&self) {
        let _one_at_a_time = self.telling.lock().await;
        let status = match self.state.get() {
            Readiness::Ready => ServingStatus::Serving,
            _ => ServingStatus::NotServing,
        };
        for name in std::iter::once("").chain(self.services.iter().copied()) {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Probes the store and the audit log every `PROBE_EVERY`, until the task is aborted with
/// the server's other tasks.
pub(super) async fn watch(health: Arc<Health>, store: Arc<dyn Store>, metrics: Metrics) {
    let mut audit_failures = metrics.audit_failures();
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let probe = store.clone();
        let answered = tokio::time::timeout(
            PROBE_TIMEOUT,
            tokio::task::spawn_blocking(move || probe.flush().and_then(|()| probe.audit_last())),
        )
        .await;
        let store_ok = matches!(answered, Ok(Ok(Ok(_))));
        let failures = metrics.audit_failures();
        let audit_ok = failures == audit_failures;
        audit_failures = failures;
        let now = if !store_ok {
            Readiness::StoreFailing
        } else if !audit_ok {
            Readiness::AuditFailing
        } else {
            Readiness::Ready
        };
        health.publish(now).await;
    }
}
