//! The server: opens the store and keys, serves the gRPC API over mutual TLS, drains
//! connections on shutdown and flushes the store last.
//!
//! `run` takes an already bound listener and a shutdown future, so tests can bind
//! `127.0.0.1:0` and stop the server with a oneshot.

mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tower::util::MapResponseLayer;

use crate::api;
use crate::authz::PeerIdentity;
use crate::config::Config;
use crate::domain::SystemClock;
use crate::keyring::{Keyring, KeyringError, RootKeys};
use crate::proto::v1::audit_service_server::AuditServiceServer;
use crate::proto::v1::key_service_server::KeyServiceServer;
use crate::proto::v1::record_service_server::RecordServiceServer;
use crate::proto::v1::subject_rights_service_server::SubjectRightsServiceServer;
use crate::proto::v1::tenant_service_server::TenantServiceServer;
use crate::service::{Call, ServiceError, Vault};
use crate::storage::{SledStore, Store, StoreError};

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
    #[error("vault: {0}")]
    Vault(#[from] ServiceError),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens the sled store of `config` and serves until `shutdown` completes, then drains
/// in-flight calls and flushes the store.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store_dir = config.store_dir();
    let store = SledStore::open(&store_dir, config.cache_capacity_bytes).map_err(|source| {
        ServerError::Store {
            path: store_dir.display().to_string(),
            source,
        }
    })?;
    serve(listener, config, Arc::new(store), shutdown).await
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
    let vault = Arc::new(Vault::open(
        store.clone(),
        keys,
        Arc::new(SystemClock),
        config.vault.clone(),
    )?);
    let pruner = tokio::spawn(prune_audit_daily(vault.clone()));
    let key_jobs = tokio::spawn(crate::service::run_key_jobs(vault.clone()));

    let apis = api::services(vault.clone());
    let max = config.max_message_bytes;
    let tenants = TenantServiceServer::new(apis.tenants).max_decoding_message_size(max);
    let records = RecordServiceServer::new(apis.records).max_decoding_message_size(max);
    let audit = AuditServiceServer::new(apis.audit).max_decoding_message_size(max);
    let rights = SubjectRightsServiceServer::new(apis.rights).max_decoding_message_size(max);
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
    let incoming = ReceiverStream::new(tls::incoming(listener, tls, config.handshake_timeout));
    tracing::info!(listen = ?local, "serving (mTLS required, TLS 1.3)");
    let served = tonic::transport::Server::builder()
        .timeout(config.request_timeout)
        .layer(MapResponseLayer::new(oversized_is_invalid_argument))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(tenants)
        .add_service(records)
        .add_service(audit)
        .add_service(rights)
        .add_service(keys)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;

    pruner.abort();
    let _ = pruner.await;
    key_jobs.abort();
    let _ = key_jobs.await;
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

/// tonic answers a request over the message size limit with OUT_OF_RANGE; the vault's
/// contract (and gRPC's own guidance for bad client input) is INVALID_ARGUMENT.
fn oversized_is_invalid_argument<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    let oversized = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            // grpc-message is percent-encoded on the wire.
            .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if oversized {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("request message exceeds the server's size limit"),
        );
    }
    resp
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
        match vault.prune_audit(&call, 0).await {
            Ok(r) if r.deleted > 0 => {
                tracing::info!(deleted = r.deleted, "pruned expired audit events")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit retention prune failed"),
        }
    }
}

async fn wait_for_last_handle(store: &Arc<dyn Store>) {
    for _ in 0..500 {
        if Arc::strong_count(store) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!("store still referenced after shutdown");
}
