//! The server: opens the store and keys, serves the gRPC API over mutual TLS, drains
//! connections on shutdown (for at most `limits.shutdown_grace_ms`, then the remaining
//! connections are cut) and flushes the store last. Every call passes through
//! `observe` (request id, tracing span, metrics); with `[metrics] listen` set, the
//! metrics are served on their own plain-HTTP port.
//!
//! `run` takes an already bound listener and a shutdown future, so tests can bind
//! `127.0.0.1:0` and stop the server with a oneshot.

mod deadline;
mod health;
mod limits;
mod metrics_http;
mod observe;
mod offline;
mod tasks;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tower::util::MapResponseLayer;

use crate::api;
use crate::authz::{Authz, PolicyError};
use crate::config::{Backend, Config};
use crate::domain::SystemClock;
use crate::keyring::{Keyring, KeyringError, RootSource};
use crate::metrics::Metrics;
use crate::proto::v1::admin_service_server::AdminServiceServer;
use crate::proto::v1::audit_service_server::AuditServiceServer;
use crate::proto::v1::backup_service_server::BackupServiceServer;
use crate::proto::v1::key_service_server::KeyServiceServer;
use crate::proto::v1::record_service_server::RecordServiceServer;
use crate::proto::v1::subject_rights_service_server::SubjectRightsServiceServer;
use crate::proto::v1::tenant_service_server::TenantServiceServer;
use crate::proto::v1::token_service_server::TokenServiceServer;
use crate::service::{OpenError, Vault, VaultSettings};
use crate::storage::{PgStore, SledOpenError, SledStore, Store, StoreError};

pub use offline::{apply_erasure_ledger, check_restorable};
use tasks::Tasks;
pub use tls::server_config;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Keys(#[from] KeyringError),
    // The store's error is part of this line, not a source: printed with its causes, the
    // line would otherwise say it twice.
    #[error("store at {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error(
        "the store at {path} is in use by another pii-vault process; stop that one first, or \
         give this one another --data-dir"
    )]
    StoreInUse { path: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("vault: {0}")]
    Vault(#[from] OpenError),
    /// A backup file that cannot be read, or is damaged.
    #[error(transparent)]
    Backup(#[from] crate::storage::backup::BackupError),
    /// A backup that may not be restored (too old, or its root key version is gone).
    #[error("backup {path} cannot be restored: {why}")]
    NotRestorable { path: String, why: String },
    /// Erasures recorded in the erasure ledger could not be applied before serving.
    #[error("applying the erasure ledger: {0}")]
    Ledger(#[source] crate::service::ServiceError),
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

/// How long shutdown waits for the vault's last task after the drain before it goes on
/// regardless (a bug, not a condition: every task ends once the vault's handles are gone).
const LAST_HANDLE_BOUND: Duration = Duration::from_secs(60);

/// Opens the store of `config` (sled, or PostgreSQL) and serves until `shutdown` completes, then drains
/// in-flight calls and flushes the store.
pub async fn run(
    listener: TcpListener, config: Config, shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = open_store(&config).await?;
    serve(listener, config, store, shutdown).await
}

/// Opens the store of `config`: sled in the data directory (`StoreInUse` at once when
/// another process has it), or PostgreSQL.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    let store: Arc<dyn Store> = match &config.backend {
        Backend::Sled => {
            let store_dir = config.store_dir();
            let path = store_dir.display().to_string();
            crate::storage::private_dir(&store_dir).map_err(|e| ServerError::Store {
                path: path.clone(),
                source: StoreError::Backend(e.to_string()),
            })?;
            match SledStore::open_unshared(&store_dir, config.cache_capacity_bytes) {
                Ok(store) => Arc::new(store),
                Err(SledOpenError::InUse) => return Err(ServerError::StoreInUse { path }),
                Err(SledOpenError::Store(source)) => {
                    return Err(ServerError::Store { path, source })
                }
            }
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
    Ok(store)
}

/// Serves over an already opened store (tests wrap it to inject faults).
pub async fn serve(
    listener: TcpListener, config: Config, store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let metrics = Metrics::new();
    let (vault, authz, tls) = open_vault(&config, store.clone(), metrics.clone())?;
    // Before anything is served: a restored store forgets no erasure made after its backup.
    let applied = vault
        .apply_erasure_ledger()
        .await
        .map_err(ServerError::Ledger)?;
    if applied.subjects_erased + applied.tenants_shredded > 0 {
        tracing::warn!(
            subjects = applied.subjects_erased,
            tenants = applied.tenants_shredded,
            "erasure ledger applied: erasures made after this store's backup were done again"
        );
    }
    let ready = Arc::new(health::ReadyState::default());
    let exporter = match config.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, metrics.clone(), ready.clone()).await?),
        None => None,
    };
    let (routes, health) = routes(&vault, config.max_message_bytes, ready).await?;
    let watcher = tokio::spawn(health::watch(
        health.clone(),
        store.clone(),
        metrics.clone(),
    ));

    // A plain `host:port` in the logs (never `Some(…)`).
    let local = bound_addr(&listener);
    let cut = CancellationToken::new();
    let abuse = config.abuse;
    let incoming = ReceiverStream::new(tls::incoming(
        listener,
        tls.clone(),
        config.handshake_timeout,
        abuse.max_connections as usize,
        cut.clone(),
    ));
    let stopping = CancellationToken::new();
    let shutdown = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            health.publish(health::Readiness::Draining).await;
            stopping.cancel();
        }
    };
    let grace = tokio::spawn(tasks::cut_after_grace(stopping, cut, config.shutdown_grace));
    let tasks = Tasks::start(
        &vault,
        &store,
        authz,
        tls,
        &metrics,
        exporter.into_iter().chain([grace, watcher]),
    );
    tracing::info!(listen = %local, "serving (mTLS required, TLS 1.3)");
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(abuse.max_streams_per_connection)
        .concurrency_limit_per_connection(abuse.max_streams_per_connection as usize)
        .layer(observe::ObserveLayer::new(
            metrics,
            config.trace_propagation,
        ))
        .layer(deadline::DeadlineLayer::new(config.request_timeout))
        .layer(MapResponseLayer::new(oversized_is_invalid_argument))
        .layer(limits::RateLimitLayer(limits::RateLimiter::new(abuse)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    tasks.stop().await;
    let store_path = config.store_dir().display().to_string();
    close(vault, store, store_path, served).await
}

/// What `open_vault` opens: the vault, its policy and the server's TLS configuration.
type Opened = (Arc<Vault>, Arc<Authz>, Arc<tls::ReloadableTls>);

/// Loads the root key, the keyring, the TLS configuration and the policy, and opens the
/// vault over `store`, in that order (a start fails on the first that is wrong).
fn open_vault(
    config: &Config, store: Arc<dyn Store>, metrics: Metrics,
) -> Result<Opened, ServerError> {
    let keys = open_keys(config, &store)?;
    let tls = tls::ReloadableTls::load(&config.tls, metrics.clone())?;
    let authz = Arc::new(Authz::load(
        config.policy_file.clone(),
        config.purposes.clone(),
    )?);
    let settings = vault_settings(config, &store, metrics);
    let vault = Vault::open(store, keys, authz.clone(), Arc::new(SystemClock), settings)?;
    Ok((Arc::new(vault), authz, tls))
}

/// Loads the root key for `store` and opens the keyring over it.
fn open_keys(config: &Config, store: &Arc<dyn Store>) -> Result<Keyring, ServerError> {
    let root = config.root_source.load_for(store.as_ref())?;
    if let RootSource::File(path) = &config.root_source {
        // Rotation and every key epoch rewrite the file: refuse now, naming the path,
        // rather than at the first epoch (whose failure would leave erasures unfinished).
        let data = (!store.shared()).then_some(config.data_dir.as_path());
        crate::keyring::check_key_location(path, data)?;
    }
    let keys = Keyring::open(root, store.clone())?;
    // Once, on a store an earlier version wrote: seal its consent, restriction and
    // tombstone records before any request can read them.
    keys.seal_legacy_records()?;
    Ok(keys)
}

/// The use cases' settings of `config` for `store`, reporting to `metrics`.
fn vault_settings(config: &Config, store: &Arc<dyn Store>, metrics: Metrics) -> VaultSettings {
    let mut settings = config.vault.clone();
    settings.metrics = metrics;
    // A store shared by several nodes (PostgreSQL) keeps its own integrity; the mark is for
    // the embedded one, which can lose its tail silently.
    if !store.shared() {
        settings.high_water_file = Some(config.data_dir.join(crate::service::HIGH_WATER_FILE));
    }
    settings
}

/// Binds the plain-HTTP metrics endpoint and serves it in a task of its own.
async fn serve_metrics(
    addr: SocketAddr, metrics: Metrics, ready: Arc<health::ReadyState>,
) -> Result<JoinHandle<()>, ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::MetricsListen {
            addr: addr.to_string(),
            source,
        })?;
    let bound = bound_addr(&listener);
    if !addr.ip().is_loopback() {
        tracing::warn!(listen = %bound, "metrics endpoint is reachable beyond loopback (plain HTTP, no authentication)");
    }
    tracing::info!(listen = %bound, "serving metrics at /metrics, health at /livez and /readyz");
    Ok(tokio::spawn(metrics_http::serve(listener, metrics, ready)))
}

/// The address `listener` is bound to, as logs show it (`unknown` if the OS will not say).
fn bound_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "unknown".to_owned(), |a| a.to_string())
}

/// Every gRPC service of the vault, with health (`health.rs`: each service SERVING while
/// `ready` says so) and reflection.
async fn routes(
    vault: &Arc<Vault>, max: usize, ready: Arc<health::ReadyState>,
) -> Result<(Routes, Arc<health::Health>), ServerError> {
    let apis = api::services(vault.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let mut routes = Routes::builder();
    routes.add_service(health_service);
    let mut names = Vec::new();
    macro_rules! serving {
        ($($server:ident($api:expr)),* $(,)?) => {$(
            let service = $server::new($api).max_decoding_message_size(max);
            names.push(service_name(&service));
            routes.add_service(service);
        )*};
    }
    serving!(
        TenantServiceServer(apis.tenants),
        RecordServiceServer(apis.records),
        AuditServiceServer(apis.audit),
        SubjectRightsServiceServer(apis.rights),
        AdminServiceServer(apis.admin),
        TokenServiceServer(apis.tokens),
        BackupServiceServer(api::BackupApi::new(vault.clone())),
        KeyServiceServer(apis.keys),
    );
    let descriptors = crate::proto::FILE_DESCRIPTOR_SET;
    routes.add_service(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .build_v1()
            .map_err(|e| ServerError::Reflection(e.to_string()))?,
    );
    routes.add_service(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .build_v1alpha()
            .map_err(|e| ServerError::Reflection(e.to_string()))?,
    );
    let health = health::Health::new(health_reporter, names, ready).await;
    Ok((routes.routes(), health))
}

/// The gRPC name of a service (what health checks ask about).
fn service_name<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// After the drain: makes the high-water mark cover everything answered, waits until the
/// store is closed (its lock released) and flushes it last.
async fn close(
    vault: Arc<Vault>, store: Arc<dyn Store>, store_path: String,
    served: Result<(), tonic::transport::Error>,
) -> Result<(), ServerError> {
    // Every denial counted but not yet summarised is recorded before the log closes.
    vault.summarise_denials(true).await;
    vault.audit_log().persist_high_water().await;
    // Drained: every connection has ended. The vault's own tasks end once its last handle
    // goes (their queues close); `closed` resolves exactly then, so the store is closed, and
    // its lock released, when `serve` returns.
    let tasks = vault.tasks();
    drop(vault);
    if tokio::time::timeout(LAST_HANDLE_BOUND, crate::service::closed(tasks))
        .await
        .is_err()
    {
        tracing::warn!(
            "the vault's tasks were still running {LAST_HANDLE_BOUND:?} after the drain"
        );
    }
    if Arc::strong_count(&store) != 1 {
        tracing::warn!("store still referenced after shutdown");
    }
    let flushed = store.flush();
    drop(store);
    served?;
    flushed.map_err(|source| ServerError::Store {
        path: store_path,
        source,
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// Answers a request over the message size limit with the vault's documented code. tonic's
/// decoder refuses such a message with OUT_OF_RANGE before any handler runs; the vault
/// itself never answers OUT_OF_RANGE (`api`'s one status mapping has no such arm, and no
/// response is large enough to meet the encoder's limit), so the code alone says what
/// happened: the status is replaced by INVALID_ARGUMENT with a fixed message, as gRPC's own
/// guidance has it for bad client input. (A request that does not decode answers
/// INVALID_ARGUMENT from the codec itself, `proto::codec`.)
fn oversized_is_invalid_argument<B>(mut resp: http::Response<B>) -> http::Response<B> {
    const OUT_OF_RANGE: &[u8] = b"11";
    let headers = resp.headers_mut();
    if headers.get("grpc-status").map(|s| s.as_bytes()) == Some(OUT_OF_RANGE) {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("request message exceeds the server's size limit"),
        );
    }
    resp
}
