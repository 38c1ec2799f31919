//! The harness: start a vault on a free loopback port, connect clients, stop, restart.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pb::record_service_client::RecordServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use pii_vault::client::{connect, ClientCerts};
use pii_vault::config::{bootstrap, Config, RawConfig};
use pii_vault::proto::v1 as pb;
use pii_vault::server::ServerError;
use pii_vault::storage::{SledStore, Store};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A running vault on its own data directory.
pub struct TestVault {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

/// A config for `dir`: listens on a free loopback port, dev TLS in `dir/tls`.
pub fn test_config(dir: &Path, edit: impl FnOnce(&mut RawConfig)) -> Config {
    let mut raw = RawConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.to_path_buf()),
        ..RawConfig::default()
    };
    edit(&mut raw);
    let config = raw.validate().expect("test config validates");
    bootstrap(&config).expect("bootstrap");
    config
}

impl TestVault {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with a config edited by `edit` (limits, say).
    pub async fn start_with(edit: impl FnOnce(&mut RawConfig)) -> Self {
        let dir = TempDir::new().expect("temp dir");
        let config = test_config(dir.path(), edit);
        Self::start_on(dir, config, None).await
    }

    /// Starts on `dir` with `config`, over `store` if given (else sled in the data dir).
    pub async fn start_on(dir: TempDir, config: Config, store: Option<Arc<dyn Store>>) -> Self {
        let listener = TcpListener::bind(config.listen).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let store = match store {
            Some(s) => s,
            None => Arc::new(
                SledStore::open(&config.store_dir(), config.cache_capacity_bytes)
                    .expect("open store"),
            ),
        };
        let task = tokio::spawn(pii_vault::server::serve(
            listener,
            config.clone(),
            store,
            shutdown,
        ));
        Self {
            dir,
            addr,
            config,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server (drain + flush) and hands back the data directory.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown().await.expect("server stopped cleanly");
        let dir = TempDir::new().expect("placeholder");
        std::mem::replace(&mut self.dir, dir)
    }

    async fn shutdown(&mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// Stops, then starts again on the same data directory and config.
    pub async fn restart(self) -> Self {
        let config = self.config.clone();
        let dir = self.stop().await;
        Self::start_on(dir, config, None).await
    }

    pub fn certs(&self) -> ClientCerts {
        ClientCerts::dev(self.dir.path())
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.addr.to_string(), &self.certs())
            .await
            .expect("connect with the dev client certificate")
    }

    pub async fn tenants(&self) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(self.channel().await)
    }

    pub async fn records(&self) -> RecordServiceClient<Channel> {
        RecordServiceClient::new(self.channel().await)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for TestVault {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Creates a tenant, panicking on failure.
pub async fn create_tenant(vault: &TestVault, id: &str) {
    vault
        .tenants()
        .await
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: id.into(),
        })
        .await
        .expect("create tenant");
}

/// A text field input.
pub fn text(name: &str, category: pb::Category, value: &str) -> pb::FieldInput {
    pb::FieldInput {
        name: name.into(),
        category: category as i32,
        value: Some(pb::Value {
            kind: Some(pb::value::Kind::Text(value.into())),
        }),
    }
}

pub async fn put(
    client: &mut RecordServiceClient<Channel>,
    tenant: &str,
    subject: &str,
    fields: Vec<pb::FieldInput>,
) -> Result<pb::PutFieldsResponse, tonic::Status> {
    client
        .put_fields(pb::PutFieldsRequest {
            tenant_id: tenant.into(),
            subject_id: subject.into(),
            fields,
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn get(
    client: &mut RecordServiceClient<Channel>,
    tenant: &str,
    subject: &str,
    names: &[&str],
) -> Result<Vec<pb::Field>, tonic::Status> {
    client
        .get_fields(pb::GetFieldsRequest {
            tenant_id: tenant.into(),
            subject_id: subject.into(),
            field_names: names.iter().map(|s| (*s).to_owned()).collect(),
            purpose: "support".into(),
        })
        .await
        .map(|r| r.into_inner().fields)
}

/// The text of a field's value.
pub fn text_of(field: &pb::Field) -> &str {
    match field.value.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(pb::value::Kind::Text(s)) => s,
        other => panic!("field {} is not text: {other:?}", field.name),
    }
}

/// A loopback port that was free a moment ago (for listeners the test cannot pre-bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// True if `needle` occurs in any file below `dir`.
pub fn bytes_occur_below(dir: &Path, needle: &[u8]) -> bool {
    files_below(dir).iter().any(|f| {
        std::fs::read(f)
            .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}
