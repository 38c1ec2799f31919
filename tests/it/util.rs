//! The harness: start a vault on a free loopback port, connect clients, stop, restart.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pb::record_service_client::RecordServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use pii_vault::client::{connect, ClientCerts};
use pii_vault::config::{Config, RawConfig, RawRootSource};
use pii_vault::dev::{bootstrap, StartMode};
use pii_vault::keyring::{PinSource, Pkcs11Settings, RootSource, TokenSelector};
use pii_vault::proto::v1 as pb;
use pii_vault::server::ServerError;
use pii_vault::storage::faults::{Faults, FaultyStore};
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

/// Where a test binary's vaults keep their root key (`crate::ROOT_CUSTODY`): the `it`
/// binary in a file, `it_pkcs11` (the key-management and erasure suite again) in a SoftHSM2
/// token of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Custody {
    File,
    Token,
}

/// The `[keys] root` table naming a PKCS#11 token.
pub fn pkcs11_root(s: &Pkcs11Settings) -> RawRootSource {
    let (token_label, slot) = match &s.token {
        TokenSelector::Label(l) => (Some(l.clone()), None),
        TokenSelector::Slot(n) => (None, Some(*n)),
    };
    let (pin_file, pin_env) = match &s.pin {
        PinSource::File(f) => (Some(f.clone()), None),
        PinSource::Env(v) => (None, Some(v.clone())),
    };
    RawRootSource {
        kind: "pkcs11".into(),
        module: Some(s.module.clone()),
        token_label,
        slot,
        pin_file,
        pin_env,
        key_label_prefix: Some(s.key_label_prefix.clone()),
        path: None,
    }
}

/// An edit giving a new config the root key of `config` when that is a token (a root key
/// file in the data directory travels with a copy of the directory by itself).
pub fn keep_root(config: &Config) -> impl FnOnce(&mut RawConfig) + '_ {
    move |raw| {
        if let RootSource::Pkcs11(s) = &config.root_source {
            raw.keys.root = Some(pkcs11_root(s));
        }
    }
}

/// A config for `dir`: listens on a free loopback port, dev TLS in `dir/tls`. In the
/// PKCS#11 suite a config that names no root key of its own gets a fresh SoftHSM2 token.
pub fn test_config(dir: &Path, edit: impl FnOnce(&mut RawConfig)) -> Config {
    let mut raw = RawConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.to_path_buf()),
        ..RawConfig::default()
    };
    // The tests make calls far faster than any client should: the rate limits are set out
    // of their way here, and tests of the limits set their own.
    raw.limits.requests_per_second = Some(1_000_000);
    raw.limits.request_burst = Some(1_000_000);
    raw.limits.denied_per_second = Some(1_000_000);
    raw.limits.denied_burst = Some(1_000_000);
    edit(&mut raw);
    let own_root = raw.keys.root_key_file.is_some() || raw.keys.root.is_some();
    if crate::ROOT_CUSTODY == Custody::Token && !own_root {
        if let Some(token) = crate::softhsm::token("a test vault") {
            raw.keys.root = Some(pkcs11_root(&token.settings));
        }
    }
    let config = raw.validate().expect("test config validates");
    bootstrap(&config, StartMode::Dev).expect("bootstrap");
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
        let serve = pii_vault::server::serve(listener, config.clone(), store, shutdown);
        let task = tokio::spawn(async move {
            let served = serve.await;
            if let Err(e) = &served {
                // Printed at once: a test that fails to connect shows why the server stopped.
                eprintln!("test vault stopped with an error: {e}");
            }
            served
        });
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
        ClientCerts::dev(&self.config.data_dir)
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

/// A vault over sled, with a handle on the store for the test to look into it while the
/// vault serves.
pub async fn vault_with_store() -> (TestVault, Arc<dyn Store>) {
    let dir = TempDir::new().expect("temp dir");
    let config = test_config(dir.path(), |_| {});
    let sled = SledStore::open(&config.store_dir(), config.cache_capacity_bytes).expect("open");
    let store: Arc<dyn Store> = Arc::new(sled);
    (
        TestVault::start_on(dir, config, Some(store.clone())).await,
        store,
    )
}

/// A vault over a `FaultyStore` wrapping sled, with the switches that make it fail.
pub async fn faulty_vault(edit: impl FnOnce(&mut RawConfig)) -> (TestVault, Arc<Faults>) {
    let dir = TempDir::new().expect("temp dir");
    let config = test_config(dir.path(), edit);
    let sled = SledStore::open(&config.store_dir(), config.cache_capacity_bytes).expect("open");
    let store = FaultyStore::new(Arc::new(sled));
    let faults = store.faults.clone();
    (
        TestVault::start_on(dir, config, Some(Arc::new(store))).await,
        faults,
    )
}

/// The events that say how a request ended: without the intents a change records before
/// it is made.
pub fn endings(events: Vec<pb::AuditEvent>) -> Vec<pb::AuditEvent> {
    events
        .into_iter()
        .filter(|e| e.outcome != pb::Outcome::Intent as i32)
        .collect()
}

/// Every audit event, in sequence order, read with the dev client.
pub async fn all_audit_events(vault: &TestVault) -> Vec<pb::AuditEvent> {
    let everything = pb::QueryAuditLogRequest {
        limit: 100_000,
        ..Default::default()
    };
    audit_events(&vault.channel().await, everything).await
}

/// How many audit events record something other than reading the audit log itself: the
/// count a request that reached a handler would raise.
pub async fn request_events(vault: &TestVault) -> usize {
    all_audit_events(vault)
        .await
        .iter()
        .filter(|e| e.operation != "query_audit")
        .count()
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
        expected_version: None,
        indexed: false,
        ttl_seconds: 0,
        transaction_record: false,
        name: name.into(),
        category: category as i32,
        value: Some(pb::Value {
            kind: Some(pb::value::Kind::Text(value.into())),
        }),
    }
}

pub async fn put(
    client: &mut RecordServiceClient<Channel>, tenant: &str, subject: &str,
    fields: Vec<pb::FieldInput>,
) -> Result<pb::PutFieldsResponse, tonic::Status> {
    client
        .put_fields(pb::PutFieldsRequest {
            tenant_id: tenant.into(),
            subject_id: subject.into(),
            fields,
            idempotency_key: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn get(
    client: &mut RecordServiceClient<Channel>, tenant: &str, subject: &str, names: &[&str],
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

/// Client certificates for chosen identities, issued by a test vault's own dev CA.
pub fn client_for(vault: &TestVault, name: &str, spiffe_id: &str) -> ClientCerts {
    client_with(vault, name, name, vec![spiffe_id.into()])
}

/// A client certificate with common name `common_name` and URI SANs `uris` (none for a
/// CN-only certificate), saved as `<name>.pem` / `<name>.key`.
pub fn client_with(
    vault: &TestVault, name: &str, common_name: &str, uris: Vec<String>,
) -> ClientCerts {
    use pii_vault::certs::{Authority, LeafSpec, Usage};
    let tls = vault.dir.path().join("tls");
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).expect("dev CA file");
    let ca = Authority::from_pem(&read("ca.pem"), &read("ca.key")).expect("dev CA");
    let leaf = ca
        .issue(&LeafSpec {
            common_name: common_name.into(),
            names: vec![],
            uris,
            usage: Usage::Client,
            lifetime: std::time::Duration::from_secs(3600),
            not_before_offset_secs: 0,
        })
        .expect("issue client certificate");
    let cert = tls.join(format!("{name}.pem"));
    let key = tls.join(format!("{name}.key"));
    std::fs::write(&cert, leaf.cert_pem).expect("write cert");
    std::fs::write(&key, leaf.key_pem).expect("write key");
    ClientCerts {
        ca: tls.join("ca.pem"),
        cert,
        key,
    }
}

/// Starts a vault whose policy file holds `policy` (instead of the dev policy).
pub async fn start_with_policy(policy: &str) -> TestVault {
    start_with_policy_and(policy, |_| {}).await
}

/// `start_with_policy`, with `edit` applied to the configuration.
pub async fn start_with_policy_and(policy: &str, edit: impl FnOnce(&mut RawConfig)) -> TestVault {
    let dir = TempDir::new().expect("temp dir");
    let config = test_config(dir.path(), edit);
    std::fs::write(&config.policy_file, policy).expect("write policy");
    TestVault::start_on(dir, config, None).await
}

/// A channel presenting `certs`.
pub async fn channel_as(vault: &TestVault, certs: &ClientCerts) -> Channel {
    connect(&vault.addr.to_string(), certs)
        .await
        .expect("connect")
}

/// Every audit event a query streams back, collected (as a caller allowed `audit_read`).
pub async fn audit_events(channel: &Channel, req: pb::QueryAuditLogRequest) -> Vec<pb::AuditEvent> {
    let mut client = pb::audit_service_client::AuditServiceClient::new(channel.clone());
    let mut stream = client
        .query_audit_log(req)
        .await
        .expect("query")
        .into_inner();
    let mut events = Vec::new();
    while let Some(msg) = stream.message().await.expect("stream") {
        events.extend(msg.events);
    }
    events
}

/// A query for one operation's events.
pub fn by_operation(op: &str) -> pb::QueryAuditLogRequest {
    pb::QueryAuditLogRequest {
        operation: op.into(),
        ..Default::default()
    }
}

/// The policy of in-process vaults: `spiffe://test/admin` may do everything.
pub fn admin_authz() -> Arc<pii_vault::authz::Authz> {
    use pii_vault::authz::{Authz, Policy, PurposeRules};
    let policy = Policy::parse(&Policy::dev_default_text("spiffe://test/admin")).expect("policy");
    Arc::new(Authz::fixed(policy, PurposeRules::default()))
}

/// A call of `spiffe://test/admin` (see `admin_authz`).
pub fn admin_call() -> pii_vault::service::Call {
    pii_vault::service::Call {
        caller: pii_vault::authz::PeerIdentity::parse("uri:spiffe://test/admin")
            .expect("typed identity"),
        request_id: "r".into(),
    }
}

/// A vault used in-process (no gRPC) over a temporary sled store, with a hand-moved clock
/// and a policy that lets `spiffe://test/admin` do everything.
pub fn clocked_vault(
    dir: &TempDir,
) -> (
    pii_vault::service::Vault,
    Arc<pii_vault::domain::ManualClock>,
    Arc<dyn Store>,
    pii_vault::service::Call,
) {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 1 << 22).expect("open"));
    let root = pii_vault::keyring::RootKeys::generate().expect("root");
    let keys = pii_vault::keyring::Keyring::open(root, store.clone()).expect("keys");
    let start = pii_vault::domain::Timestamp(1_700_000_000_000_000);
    let clock = Arc::new(pii_vault::domain::ManualClock::new(start));
    let settings = pii_vault::service::VaultSettings::default();
    let vault = pii_vault::service::Vault::open(
        store.clone(),
        keys,
        admin_authz(),
        clock.clone(),
        settings,
    )
    .expect("vault");
    (vault, clock, store, admin_call())
}

/// Copies a directory tree (the data directory of a stopped vault, say); `fs::copy` keeps
/// each file's mode, so a root key file stays 0600.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Asserts that `status` has `code` and an ErrorInfo of the vault's domain whose reason is
/// `reason` (an `ErrorReason` name); returns its details for further checks.
pub fn assert_reason(
    status: &tonic::Status, code: tonic::Code, reason: &str,
) -> tonic_types::ErrorDetails {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        pb::ErrorReason::from_str_name(reason).is_some(),
        "{reason} is not an ErrorReason"
    );
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, pii_vault::proto::ERROR_DOMAIN, "{status:?}");
    assert_eq!(info.reason, reason, "{status:?}");
    details
}
