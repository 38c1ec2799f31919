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
//! with its first label set (an RPC's first call, a tenant's first key version).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::domain::TenantId;

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

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 100 µs to about 26 s (factor 2): covers a cached read and a stuck
/// fsync alike.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
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
    rewrap_progress: Family<TenantLabel, Gauge>,
    store_bytes: Gauge,
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
        let mut r = Registry::with_prefix("piivault");
        let inner = Inner {
            rpc_requests: register(&mut r, "rpc_requests", "gRPC calls handled, by service, method and status code", None, Family::<RpcLabels, Counter>::default()),
            rpc_duration: register(&mut r, "rpc_duration", "Time from receiving a gRPC call to its final status, by service, method and status code", Some(Unit::Seconds), Family::new_with_constructor(latency_histogram)),
            audit_append_duration: register(&mut r, "audit_append_duration", "Time to store and flush one batch of audit events", Some(Unit::Seconds), latency_histogram()),
            audit_events: register(&mut r, "audit_events", "Audit events made durable", None, Counter::default()),
            audit_append_failures: register(&mut r, "audit_append_failures", "Audit events that could not be made durable (each failed its request closed)", None, Counter::default()),
            flush_duration: register(&mut r, "store_flush_duration", "Time of one group-commit flush of the store", Some(Unit::Seconds), latency_histogram()),
            flush_failures: register(&mut r, "store_flush_failures", "Store flushes that failed", None, Counter::default()),
            erasures: register(&mut r, "erasures", "Subjects erased", None, Counter::default()),
            retention_deletions: register(&mut r, "retention_deletions", "Fields deleted because their retention period ended", None, Counter::default()),
            dek_cache_hits: register(&mut r, "dek_cache_hits", "Subject key lookups answered from the cache", None, Counter::default()),
            dek_cache_misses: register(&mut r, "dek_cache_misses", "Subject key lookups that had to unwrap the key", None, Counter::default()),
            tenant_key_version: register(&mut r, "tenant_key_version", "Current KEK version of each tenant", None, Family::<TenantLabel, Gauge>::default()),
            rewrap_progress: register(&mut r, "rewrap_progress_percent", "Progress of the running subject key re-wrap of each tenant, 0 to 100", None, Family::<TenantLabel, Gauge>::default()),
            store_bytes: register(&mut r, "store_size", "Bytes the store occupies on disk (sampled)", Some(Unit::Bytes), Gauge::default()),
            registry: r,
        };
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
        let percent = (done.min(total).saturating_mul(100))
            .checked_div(total)
            .unwrap_or(100);
        let percent = i64::try_from(percent).unwrap_or(100);
        self.0
            .rewrap_progress
            .get_or_create(&tenant_label(tenant))
            .set(percent);
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
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn labelled_series_appear_with_their_first_label_set() {
        let m = Metrics::new();
        assert!(!m.encode().contains("piivault_rewrap_progress_percent"));
        let acme = TenantId::parse("acme").expect("tenant id");
        m.rewrap_progress(&acme, 1, 4);
        m.tenant_key_version(&acme, 3);
        let text = m.encode();
        assert!(
            text.contains(r#"piivault_rewrap_progress_percent{tenant="acme"} 25"#),
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
}
