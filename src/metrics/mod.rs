//! Operational metrics: what the vault measures about itself, in one registry that the
//! server exposes in the Prometheus text format on its own port (`[metrics] listen`).
//!
//! The API is a handful of methods named after what happened (`rpc`, `audit_append`,
//! `flush`, ...), so callers never touch the registry. Labels are chosen here and only
//! here: RPC service, method and status code, and tenant ids. Never a subject id (too
//! many, and personal), never a field name or value, never key material. A label taking a
//! tenant is typed `&TenantId`, so nothing else can end up in it.
//!
//! Unlabelled series are exposed from the start (counters at 0); a labelled series appears
//! with its first label set (an RPC's first call, a tenant's first key version), except
//! where the label values are a fixed set (TLS handshake failure reasons), which start at 0.
//!
//! Names follow the Prometheus conventions: the base unit in the name (`_seconds`,
//! `_bytes`), `_total` on counters, `_ratio` for a fraction between 0 and 1, timestamps as
//! `_timestamp_seconds` since the Unix epoch. Besides the vault's own `piivault_*` series,
//! the registry carries `piivault_build_info` and the standard `process_*` series
//! (`process.rs`).

mod kinds;
mod process;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::domain::{TenantId, Timestamp};

pub use kinds::{CertRole, KeyJob, TlsFailure};
use process::ProcessCollector;
pub use process::ProcessSample;

/// The commit the binary was built from (`build.rs`), or `unknown`.
const GIT_COMMIT: &str = env!("PIIVAULT_GIT_COMMIT");

/// Content type of the exposition `encode` produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    /// gRPC service, e.g. `piivault.v1.RecordService`.
    service: String,
    /// gRPC method, e.g. `PutFields`.
    method: String,
    /// gRPC status code name, e.g. `OK`, `NOT_FOUND`.
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabel {
    cert: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
/// A gauge holding a fraction or a timestamp with sub-second precision.
type FloatGauge = Gauge<f64, AtomicU64>;

/// Latency buckets from 100 µs to about 26 s (factor 2): covers a cached read and a stuck
/// fsync alike.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// The unit of a fraction from 0 to 1: Prometheus' naming guide says `_ratio` (the client's
/// own `Unit::Ratios` would name it `_ratios`).
fn ratio() -> Unit {
    Unit::Other("ratio".to_owned())
}

/// Registers `metric` under `name` (with the registry's `piivault` prefix) and hands it back,
/// so that the registry and the vault record into the same series.
fn register<M: Metric + Clone>(
    registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, metric: M,
) -> M {
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric.clone()),
        None => registry.register(name, help, metric.clone()),
    }
    metric
}

/// The vault's metrics. Cheap to clone; every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<RpcLabels>,
    audit_append_duration: Histogram,
    audit_events: Counter,
    audit_append_failures: Counter,
    flush_duration: Histogram,
    flush_failures: Counter,
    erasures: Counter,
    retention_deletions: Counter,
    dek_cache_hits: Counter,
    dek_cache_misses: Counter,
    tenant_key_version: Family<TenantLabel, Gauge>,
    rewrap_progress: Family<TenantLabel, FloatGauge>,
    store_bytes: Gauge,
    key_job_success: Family<JobLabel, FloatGauge>,
    key_job_failure: Family<JobLabel, FloatGauge>,
    key_epoch_failures: Counter,
    tls_handshake_failures: Family<ReasonLabel, Counter>,
    certificate_expiry: Family<CertLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    /// A registry of its own, which nobody reads unless it is handed to the server.
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every series of the vault defined (counters start at 0).
    pub fn new() -> Self {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("piivault");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: GIT_COMMIT,
            })
            .set(1);
        register(
            r,
            "build_info",
            "The version and commit of the running vault (always 1)",
            None,
            build_info,
        );
        let inner = Inner {
            rpc_requests: register(r, "rpc_requests", "gRPC calls handled, by service, method and status code", None, Family::<RpcLabels, Counter>::default()),
            rpc_duration: register(r, "rpc_duration", "Time from receiving a gRPC call to its final status, by service, method and status code", Some(Unit::Seconds), Family::new_with_constructor(latency_histogram)),
            audit_append_duration: register(r, "audit_append_duration", "Time to store and flush one batch of audit events", Some(Unit::Seconds), latency_histogram()),
            audit_events: register(r, "audit_events", "Audit events made durable", None, Counter::default()),
            audit_append_failures: register(r, "audit_append_failures", "Audit events that could not be made durable (each failed its request closed)", None, Counter::default()),
            flush_duration: register(r, "store_flush_duration", "Time of one group-commit flush of the store", Some(Unit::Seconds), latency_histogram()),
            flush_failures: register(r, "store_flush_failures", "Store flushes that failed", None, Counter::default()),
            erasures: register(r, "erasures", "Subjects erased", None, Counter::default()),
            retention_deletions: register(r, "retention_deletions", "Fields deleted because their retention period ended", None, Counter::default()),
            dek_cache_hits: register(r, "dek_cache_hits", "Subject key lookups answered from the cache", None, Counter::default()),
            dek_cache_misses: register(r, "dek_cache_misses", "Subject key lookups that had to unwrap the key", None, Counter::default()),
            tenant_key_version: register(r, "tenant_key_version", "Current KEK version of each tenant", None, Family::<TenantLabel, Gauge>::default()),
            rewrap_progress: register(r, "rewrap_progress", "Progress of the latest subject key re-wrap of each tenant, 0 to 1 (1: done)", Some(ratio()), Family::<TenantLabel, FloatGauge>::default()),
            store_bytes: register(r, "store_size", "Bytes the store occupies on disk (sampled)", Some(Unit::Bytes), Gauge::default()),
            key_job_success: register(r, "key_job_last_success_timestamp", "When each background key job last succeeded (key_epoch, rewrap, root_rotation)", Some(Unit::Seconds), Family::default()),
            key_job_failure: register(r, "key_job_last_failure_timestamp", "When each background key job last failed (it is retried)", Some(Unit::Seconds), Family::default()),
            key_epoch_failures: register(r, "key_epoch_failures", "Key epoch attempts that failed (each is retried until the epoch completes)", None, Counter::default()),
            tls_handshake_failures: register(r, "tls_handshake_failures", "TLS handshakes on the gRPC port that failed, by reason", None, Family::default()),
            certificate_expiry: register(r, "tls_certificate_expiry_timestamp", "When each certificate the server loaded expires (not after), since the Unix epoch", Some(Unit::Seconds), Family::default()),
            registry: {
                root.register_collector(Box::new(ProcessCollector));
                root
            },
        };
        // The reasons are a fixed set: every one is exposed from the start, at 0.
        for reason in TlsFailure::ALL {
            let _ = inner.tls_handshake_failures.get_or_create(&ReasonLabel {
                reason: reason.label(),
            });
        }
        Self(Arc::new(inner))
    }

    /// One gRPC call finished with status `code` (a name such as `OK`) after `elapsed`.
    pub fn rpc(&self, service: &str, method: &str, code: &'static str, elapsed: Duration) {
        let labels = RpcLabels {
            service: service.to_owned(),
            method: method.to_owned(),
            code,
        };
        self.0.rpc_requests.get_or_create(&labels).inc();
        self.0
            .rpc_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// A batch of `events` audit events was stored and flushed (`ok`) or failed.
    pub fn audit_append(&self, events: usize, elapsed: Duration, ok: bool) {
        self.0.audit_append_duration.observe(elapsed.as_secs_f64());
        let counter = if ok {
            &self.0.audit_events
        } else {
            &self.0.audit_append_failures
        };
        counter.inc_by(events as u64);
    }

    /// Audit events whose append failed, since start (what health compares between probes).
    pub fn audit_failures(&self) -> u64 {
        self.0.audit_append_failures.get()
    }

    /// One store flush took `elapsed` and succeeded (`ok`) or failed.
    pub fn flush(&self, elapsed: Duration, ok: bool) {
        self.0.flush_duration.observe(elapsed.as_secs_f64());
        if !ok {
            self.0.flush_failures.inc();
        }
    }

    /// A subject was erased.
    pub fn erasure(&self) {
        self.0.erasures.inc();
    }

    /// `n` fields were deleted by the retention sweep.
    pub fn retention_deletions(&self, n: u64) {
        self.0.retention_deletions.inc_by(n);
    }

    /// A subject key was looked up in the cache: found (`hit`) or not. The hit rate is
    /// `rate(piivault_dek_cache_hits_total[5m]) / (rate(piivault_dek_cache_hits_total[5m])
    /// + rate(piivault_dek_cache_misses_total[5m]))`; in process, `Vault::dek_cache_stats`.
    pub fn dek_cache(&self, hit: bool) {
        if hit {
            self.0.dek_cache_hits.inc();
        } else {
            self.0.dek_cache_misses.inc();
        }
    }

    /// The current KEK version of `tenant`.
    pub fn tenant_key_version(&self, tenant: &TenantId, version: u32) {
        self.0
            .tenant_key_version
            .get_or_create(&tenant_label(tenant))
            .set(i64::from(version));
    }

    /// Progress of a re-wrap of `tenant`'s subject keys: `done` of `total`.
    pub fn rewrap_progress(&self, tenant: &TenantId, done: u64, total: u64) {
        // Nothing to re-wrap counts as done.
        let ratio = if total == 0 {
            1.0
        } else {
            done.min(total) as f64 / total as f64
        };
        self.0
            .rewrap_progress
            .get_or_create(&tenant_label(tenant))
            .set(ratio);
    }

    /// A background key job ended at `at`, successfully (`ok`) or not.
    pub fn key_job(&self, job: KeyJob, ok: bool, at: Timestamp) {
        let series = if ok {
            &self.0.key_job_success
        } else {
            if job == KeyJob::Epoch {
                self.0.key_epoch_failures.inc();
            }
            &self.0.key_job_failure
        };
        series
            .get_or_create(&JobLabel { job: job.label() })
            .set(at.0 as f64 / 1e6);
    }

    /// A TLS handshake on the gRPC port failed for `reason`.
    pub fn tls_handshake_failure(&self, reason: TlsFailure) {
        self.0
            .tls_handshake_failures
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// The certificate in `role` expires at `not_after` (seconds since the Unix epoch), as
    /// loaded at start or by the latest reload.
    pub fn certificate_expiry(&self, role: CertRole, not_after: i64) {
        self.0
            .certificate_expiry
            .get_or_create(&CertLabel { cert: role.label() })
            .set(not_after);
    }

    /// The store's size on disk.
    pub fn store_size(&self, bytes: u64) {
        self.0
            .store_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The exposition of every series, in the OpenMetrics text format (`CONTENT_TYPE`),
    /// which Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would only truncate.
        if prometheus_client::encoding::text::encode(&mut out, &self.0.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn tenant_label(tenant: &TenantId) -> TenantLabel {
    TenantLabel {
        tenant: tenant.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_defined_before_anything_happens() {
        let text = Metrics::new().encode();
        for name in [
            "piivault_erasures_total 0",
            "piivault_retention_deletions_total 0",
            "piivault_dek_cache_hits_total 0",
            "piivault_dek_cache_misses_total 0",
            "piivault_audit_append_failures_total 0",
            "piivault_audit_append_duration_seconds_count 0",
            "piivault_store_size_bytes 0",
            "# TYPE piivault_build_info gauge",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn labelled_series_appear_with_their_first_label_set() {
        let m = Metrics::new();
        assert!(!m.encode().contains("piivault_rewrap_progress"));
        let acme = TenantId::parse("acme").expect("tenant id");
        m.rewrap_progress(&acme, 1, 4);
        m.tenant_key_version(&acme, 3);
        let text = m.encode();
        assert!(
            text.contains(r#"piivault_rewrap_progress_ratio{tenant="acme"} 0.25"#),
            "{text}"
        );
        assert!(
            text.contains(r#"piivault_tenant_key_version{tenant="acme"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn rpc_calls_are_counted_by_method_and_code() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.rpc(
                "piivault.v1.RecordService",
                "PutFields",
                "OK",
                Duration::from_millis(2),
            );
        }
        m.rpc(
            "piivault.v1.RecordService",
            "GetFields",
            "NOT_FOUND",
            Duration::from_millis(1),
        );
        let text = m.encode();
        assert!(text.contains(
            r#"piivault_rpc_requests_total{service="piivault.v1.RecordService",method="PutFields",code="OK"} 3"#
        ), "{text}");
        assert!(text.contains(
            r#"piivault_rpc_duration_seconds_count{service="piivault.v1.RecordService",method="GetFields",code="NOT_FOUND"} 1"#
        ), "{text}");
    }

    #[test]
    fn key_jobs_tls_failures_and_certificates_are_recorded() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains(r#"piivault_tls_handshake_failures_total{reason="unknown_ca"} 0"#),
            "{text}"
        );
        assert!(!text.contains("piivault_key_job_last"), "{text}");
        m.key_job(KeyJob::Epoch, true, Timestamp(1_700_000_000_500_000));
        m.key_job(KeyJob::Rewrap, false, Timestamp(1_700_000_100_000_000));
        m.tls_handshake_failure(TlsFailure::NoClientCert);
        m.tls_handshake_failure(TlsFailure::NoClientCert);
        m.certificate_expiry(CertRole::Server, 1_800_000_000);
        let text = m.encode();
        for line in [
            r#"piivault_key_job_last_success_timestamp_seconds{job="key_epoch"} 1700000000.5"#,
            r#"piivault_key_job_last_failure_timestamp_seconds{job="rewrap"} 1700000100.0"#,
            "piivault_key_epoch_failures_total 0",
            r#"piivault_tls_handshake_failures_total{reason="no_client_cert"} 2"#,
            r#"piivault_tls_certificate_expiry_timestamp_seconds{cert="server"} 1800000000"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains(r#"piivault_key_job_last_success_timestamp_seconds{job="rewrap"}"#));
    }

    #[test]
    fn build_info_names_the_version_and_commit() {
        let text = Metrics::new().encode();
        let line = format!(
            r#"piivault_build_info{{version="{}",commit="{GIT_COMMIT}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&line), "{line} missing from:\n{text}");
        assert!(!GIT_COMMIT.is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_series_are_exposed_unprefixed() {
        let text = Metrics::new().encode();
        for name in [
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_threads ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(!text.contains("piivault_process"), "{text}");
    }
}
