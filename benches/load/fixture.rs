//! A vault started in this process on a free loopback port, with preloaded subjects.

use std::net::SocketAddr;
use std::sync::Arc;

use pii_vault::certs::{Authority, LeafSpec, Usage};
use pii_vault::client::{connect, ClientCerts};
use pii_vault::config::{Config, RawConfig, TlsPaths};
use pii_vault::dev::{bootstrap, StartMode};
use pii_vault::proto::v1 as pb;
use pii_vault::storage::SledStore;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The tenant every scenario works in.
pub const TENANT: &str = "bench";
/// Fields each preloaded subject has.
pub const FIELDS_PER_SUBJECT: usize = 10;
/// Size of every preloaded value: the issue's 256-byte field.
pub const VALUE_BYTES: usize = 256;

pub struct Fixture {
    dir: TempDir,
    pub addr: SocketAddr,
    /// The vault's TLS files, which the echo baseline serves with too.
    pub tls: TlsPaths,
    pub certs: ClientCerts,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), pii_vault::server::ServerError>>>,
    pub subjects: usize,
}

pub fn value(i: usize) -> String {
    let mut v = format!("value-{i}-");
    v.extend(std::iter::repeat_n('x', VALUE_BYTES - v.len()));
    v
}

pub fn field_input(name: &str, i: usize) -> pb::FieldInput {
    pb::FieldInput {
        expected_version: None,
        indexed: false,
        ttl_seconds: 0,
        transaction_record: false,
        name: name.into(),
        category: pb::Category::Profile as i32,
        value: Some(pb::Value {
            kind: Some(pb::value::Kind::Text(value(i))),
        }),
    }
}

impl Fixture {
    /// Starts a vault (auditing on or off) and preloads `subjects` subjects.
    pub async fn start(audit: bool, subjects: usize) -> Self {
        Self::start_with(audit, subjects, |_| {}).await
    }

    /// As `start`, with `tweak` applied to the configuration first (before the dev PKI and
    /// policy are made, so a policy file it writes is kept).
    pub async fn start_with(audit: bool, subjects: usize, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = TempDir::new().expect("temp dir");
        let raw = RawConfig {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.path().to_path_buf()),
            ..RawConfig::default()
        };
        let mut config = raw.validate().expect("config");
        // A load generator is one identity far above any client's rate: no rate limit.
        config.abuse.requests_per_second = 1_000_000;
        config.abuse.request_burst = 1_000_000;
        config.vault.audit_enabled = audit;
        tweak(&mut config);
        bootstrap(&config, StartMode::Dev).expect("bootstrap");
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let store =
            SledStore::open(&config.store_dir(), config.cache_capacity_bytes).expect("store");
        let (stop, stopped) = oneshot::channel::<()>();
        let tls = config.tls.clone();
        let task = tokio::spawn(pii_vault::server::serve(
            listener,
            config,
            Arc::new(store),
            async move {
                let _ = stopped.await;
            },
        ));
        let fixture = Self {
            certs: ClientCerts::dev(dir.path()),
            dir,
            addr,
            tls,
            stop: Some(stop),
            task: Some(task),
            subjects,
        };
        fixture.preload().await;
        fixture
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.addr.to_string(), &self.certs)
            .await
            .expect("connect")
    }

    /// A client certificate for the SPIFFE identity `spiffe_id`, issued by the vault's dev CA
    /// (which the vault trusts for clients), written as `{name}.pem` and `{name}.key`.
    pub fn issue_client(&self, name: &str, spiffe_id: &str) -> ClientCerts {
        let tls = self.dir.path().join("tls");
        let read = |f: &str| std::fs::read_to_string(tls.join(f)).expect("dev CA file");
        let ca = Authority::from_pem(&read("ca.pem"), &read("ca.key")).expect("dev CA");
        let leaf = ca
            .issue(&LeafSpec {
                common_name: name.into(),
                names: vec![],
                uris: vec![spiffe_id.into()],
                usage: Usage::Client,
                lifetime: std::time::Duration::from_secs(3600),
                not_before_offset_secs: 0,
            })
            .expect("issue a client certificate");
        let certs = ClientCerts {
            ca: tls.join("ca.pem"),
            cert: tls.join(format!("{name}.pem")),
            key: tls.join(format!("{name}.key")),
        };
        std::fs::write(&certs.cert, leaf.cert_pem).expect("write cert");
        std::fs::write(&certs.key, leaf.key_pem).expect("write key");
        certs
    }

    /// A connection presenting `certs` instead of the dev client's.
    pub async fn channel_as(&self, certs: &ClientCerts) -> Channel {
        connect(&self.addr.to_string(), certs)
            .await
            .expect("connect")
    }

    async fn preload(&self) {
        let again = preload(&self.channel().await, self.subjects).await;
        if again > 0 {
            println!("# preload: {again} PutFields answered Unavailable and were sent again");
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }
}

/// Creates the tenant and gives `subjects` subjects their fields, over 8 streams. A
/// `PutFields` answered `Unavailable` (a PostgreSQL transaction that kept conflicting, say) is
/// sent again, up to 5 times; returns how many were, for the caller to print.
pub async fn preload(channel: &Channel, subjects: usize) -> u64 {
    pb::tenant_service_client::TenantServiceClient::new(channel.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: TENANT.into(),
        })
        .await
        .expect("tenant");
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let mut client = pb::record_service_client::RecordServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut again = 0;
            for i in (chunk..subjects).step_by(8) {
                let request = pb::PutFieldsRequest {
                    tenant_id: TENANT.into(),
                    subject_id: format!("s{i}"),
                    fields: (0..FIELDS_PER_SUBJECT)
                        .map(|f| field_input(&format!("f{f}"), i))
                        .collect(),
                    idempotency_key: String::new(),
                };
                let mut tries = 0;
                loop {
                    match client.put_fields(request.clone()).await {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::Unavailable && tries < 5 => {
                            tries += 1;
                            again += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(s) => panic!("preload: {s:?}"),
                    }
                }
            }
            again
        }));
    }
    let mut again = 0;
    for t in tasks {
        again += t.await.expect("preload task");
    }
    again
}
