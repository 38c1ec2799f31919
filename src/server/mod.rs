//! The server: opens the store and keys, serves the gRPC API over mutual TLS, drains
//! connections on shutdown (for at most `limits.shutdown_grace_ms`, then the remaining
//! connections are cut) and flushes the store last. Every call passes through
//! `observe` (request id, tracing span, metrics); with `[metrics] listen` set, the
//! metrics are served on their own plain-HTTP port.
//!
//! `run` takes an already bound listener and a shutdown future, so tests can bind
//! `127.0.0.1:0` and stop the server with a oneshot.

mod metrics_http;
mod observe;
mod tls;

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tower::util::MapResponseLayer;

use crate::api;
use crate::authz::{Authz, PeerIdentity, PolicyError};
use crate::config::{Backend, Config};
use crate::domain::SystemClock;
use crate::keyring::{Keyring, KeyringError, RootKeys};
use crate::metrics::Metrics;
use crate::proto::v1::admin_service_server::AdminServiceServer;
use crate::proto::v1::audit_service_server::AuditServiceServer;
use crate::proto::v1::backup_service_server::BackupServiceServer;
use crate::proto::v1::key_service_server::KeyServiceServer;
use crate::proto::v1::record_service_server::RecordServiceServer;
use crate::proto::v1::subject_rights_service_server::SubjectRightsServiceServer;
use crate::proto::v1::tenant_service_server::TenantServiceServer;
use crate::proto::v1::token_service_server::TokenServiceServer;
use crate::service::{Call, OpenError, Vault};
use crate::storage::{PgStore, SledStore, Store, StoreError};

pub use tls::server_config;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Keys(#[from] KeyringError),
    #[error("store at {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("vault: {0}")]
    Vault(#[from] OpenError),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("metrics endpoint on {addr}: {source}")]
    MetricsListen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// How often the store's size on disk is sampled for the metrics.
const STORE_SAMPLE_INTERVAL: Duration = Duration::from_secs(15);

/// Opens the store of `config` (sled, or PostgreSQL) and serves until `shutdown` completes, then drains
/// in-flight calls and flushes the store.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store: Arc<dyn Store> = match &config.backend {
        Backend::Sled => {
            let store_dir = config.store_dir();
            let store =
                SledStore::open(&store_dir, config.cache_capacity_bytes).map_err(|source| {
                    ServerError::Store {
                        path: store_dir.display().to_string(),
                        source,
                    }
                })?;
            Arc::new(store)
        }
        Backend::Postgres {
            url,
            connections,
            tls,
        } => {
            let (url, connections, tls) = (url.0.clone(), *connections, tls.clone());
            let store =
                tokio::task::spawn_blocking(move || PgStore::connect(&url, connections, &tls))
                    .await
                    .map_err(|_| ServerError::Store {
                        path: "PostgreSQL".into(),
                        source: StoreError::Backend("connect task panicked".into()),
                    })?
                    .map_err(|source| ServerError::Store {
                        path: "PostgreSQL".into(),
                        source,
                    })?;
            Arc::new(store)
        }
    };
    serve(listener, config, store, shutdown).await
}

/// Serves over an already opened store (tests wrap it to inject faults).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let root = RootKeys::load(&config.root_key_file)?;
    let store_dir = config.store_dir();
    let store_err = |source| ServerError::Store {
        path: store_dir.display().to_string(),
        source,
    };
    let keys = Keyring::open(root, store.clone())?;
    let tls = server_config(&config.tls)?;
    let authz = Arc::new(Authz::load(
        config.policy_file.clone(),
        config.purposes.clone(),
    )?);
    let reloader = tokio::spawn(reload_policy_on_sighup(authz.clone()));
    let metrics = Metrics::new();
    let mut settings = config.vault.clone();
    settings.metrics = metrics.clone();
    // A store shared by several nodes (PostgreSQL) keeps its own integrity; the mark is for
    // the embedded one, which can lose its tail silently.
    if !store.shared() {
        settings.high_water_file = Some(config.data_dir.join(crate::service::HIGH_WATER_FILE));
    }
    let vault = Arc::new(Vault::open(
        store.clone(),
        keys,
        authz,
        Arc::new(SystemClock),
        settings,
    )?);
    let exporter = match config.metrics_listen {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::MetricsListen {
                        addr: addr.to_string(),
                        source,
                    })?;
            let bound = listener.local_addr().ok();
            if !addr.ip().is_loopback() {
                tracing::warn!(listen = ?bound, "metrics endpoint is reachable beyond loopback (plain HTTP, no authentication)");
            }
            tracing::info!(listen = ?bound, "serving metrics at /metrics");
            Some(tokio::spawn(metrics_http::serve(listener, metrics.clone())))
        }
        None => None,
    };
    let pruner = tokio::spawn(prune_audit_daily(vault.clone()));
    let sweeper = tokio::spawn(sweep_retention_hourly(vault.clone()));
    let sampler = tokio::spawn(sample_store(Arc::downgrade(&store), metrics.clone()));
    let key_jobs = tokio::spawn(crate::service::run_key_jobs(vault.clone()));

    let apis = api::services(vault.clone());
    let max = config.max_message_bytes;
    let tenants = TenantServiceServer::new(apis.tenants).max_decoding_message_size(max);
    let records = RecordServiceServer::new(apis.records).max_decoding_message_size(max);
    let audit = AuditServiceServer::new(apis.audit).max_decoding_message_size(max);
    let rights = SubjectRightsServiceServer::new(apis.rights).max_decoding_message_size(max);
    let admin = AdminServiceServer::new(apis.admin).max_decoding_message_size(max);
    let tokens = TokenServiceServer::new(apis.tokens).max_decoding_message_size(max);
    let backup = BackupServiceServer::new(api::BackupApi::new(vault.clone()));
    let keys = KeyServiceServer::new(apis.keys).max_decoding_message_size(max);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<TenantServiceServer<api::TenantApi>>()
        .await;
    health_reporter
        .set_serving::<RecordServiceServer<api::RecordApi>>()
        .await;
    health_reporter
        .set_serving::<AuditServiceServer<api::AuditApi>>()
        .await;
    health_reporter
        .set_serving::<SubjectRightsServiceServer<api::RightsApi>>()
        .await;
    health_reporter
        .set_serving::<AdminServiceServer<api::AdminApi>>()
        .await;
    health_reporter
        .set_serving::<TokenServiceServer<api::TokenApi>>()
        .await;
    health_reporter
        .set_serving::<BackupServiceServer<api::BackupApi>>()
        .await;
    health_reporter
        .set_serving::<KeyServiceServer<api::KeyApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let local = listener.local_addr().ok();
    let cut = CancellationToken::new();
    let incoming = ReceiverStream::new(tls::incoming(
        listener,
        tls,
        config.handshake_timeout,
        cut.clone(),
    ));
    let stopping = CancellationToken::new();
    let shutdown = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    };
    let deadline = tokio::spawn(cut_after_grace(stopping, cut, config.shutdown_grace));
    tracing::info!(listen = ?local, "serving (mTLS required, TLS 1.3)");
    let served = tonic::transport::Server::builder()
        .timeout(config.request_timeout)
        .layer(observe::ObserveLayer::new(metrics))
        .layer(MapResponseLayer::new(malformed_is_invalid_argument))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(tenants)
        .add_service(records)
        .add_service(audit)
        .add_service(rights)
        .add_service(admin)
        .add_service(tokens)
        .add_service(backup)
        .add_service(keys)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;

    for task in [
        Some(deadline),
        Some(pruner),
        Some(sampler),
        Some(sweeper),
        Some(reloader),
        Some(key_jobs),
        exporter,
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
        let _ = task.await;
    }
    // Everything answered is durable: the high-water mark covers all of it.
    vault.audit_log().persist_high_water().await;
    // Drained: wait for the last handle so the store is closed (and its lock released)
    // when `run` returns, then flush whatever was written.
    drop(vault);
    wait_for_last_handle(&store).await;
    let flushed = store.flush();
    drop(store);
    served?;
    flushed.map_err(store_err)?;
    tracing::info!("stopped");
    Ok(())
}

/// Gives malformed requests the vault's documented code. tonic answers a request over the
/// message size limit with OUT_OF_RANGE, and one that does not decode (a `string` field
/// that is not UTF-8, a truncated field) with INTERNAL and prost's description; both are
/// bad client input, which the vault (and gRPC's own guidance) answers INVALID_ARGUMENT,
/// with a fixed message.
fn malformed_is_invalid_argument<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    let status = headers.get("grpc-status").map(|s| s.as_bytes().to_vec());
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        // grpc-message is percent-encoded on the wire.
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    let replacement = match status.as_deref() {
        Some(b"11") if message.contains("message length too large") => {
            "request message exceeds the server's size limit"
        }
        Some(b"13") if message.starts_with("failed to decode Protobuf message") => {
            "request message does not decode as its type (for example, a string that is not UTF-8)"
        }
        _ => return resp,
    };
    headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    headers.insert("grpc-message", http::HeaderValue::from_static(replacement));
    resp
}

/// Re-reads the policy file on SIGHUP; a bad file leaves the old policy in force.
async fn reload_policy_on_sighup(authz: Arc<Authz>) {
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
        }
    }
    #[cfg(not(unix))]
    let _ = authz;
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
async fn cut_after_grace(stopping: CancellationToken, cut: CancellationToken, grace: Duration) {
    stopping.cancelled().await;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutdown: draining in-flight calls"
    );
    tokio::time::sleep(grace).await;
    tracing::warn!("shutdown grace period over; dropping the remaining connections");
    cut.cancel();
}

/// Prunes audit events past their retention once a day (and once shortly after start).
async fn prune_audit_daily(vault: Arc<Vault>) {
    let call = Call {
        caller: PeerIdentity::new("pii-vault/retention"),
        request_id: "audit-retention".into(),
    };
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(60),
        Duration::from_secs(86_400),
    );
    loop {
        tick.tick().await;
        if !vault.holds_job("audit-prune") {
            continue;
        }
        match vault.prune_audit(&call, 0).await {
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
async fn sample_store(store: Weak<dyn Store>, metrics: Metrics) {
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
        let _ = tokio::task::spawn_blocking(move || {
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

/// Waits until the background tasks (flusher, audit writer, purger, key jobs) have let go of
/// the store, so that it is closed, and its lock released, when `serve` returns. Normally
/// immediate; on a loaded machine their last blocking step can take seconds.
async fn wait_for_last_handle(store: &Arc<dyn Store>) {
    for _ in 0..6000 {
        if Arc::strong_count(store) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!("store still referenced after shutdown");
}
