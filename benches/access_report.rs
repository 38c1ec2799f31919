//! The cost of one subject's access report (`AccessSubject`, whose recipients come from the
//! audit log) against the size of the log: issue 17 asks that with 1,000,000 events in the
//! log it take within 2x of what it takes with 1,000.
//!
//! For each log size, on a fresh data directory: a vault (`server::run`, as `pii-vault serve`)
//! writes the subject and reads it 10 times, and stops; the audit log is then filled with
//! events about other subjects of the tenant (sealed and chained with the vault's audit key,
//! appended to the store in batches: what many requests would have left); the vault starts
//! again (its start, which indexes the log, is timed) and answers the access report
//! `--reports` times. Printed: the median and p90 of one report, the start time, and the
//! ratio of the medians.
//!
//! ```sh
//! cargo bench --bench access_report                      # 1,000 and 1,000,000 events
//! cargo bench --bench access_report -- --sizes 1000,100000 --reports 50
//! cargo test --release --bench access_report             # smoke: 1,000 and 20,000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use pii_vault::audit::{AuditEvent, ChainMark, EventDraft, Head, Operation, Outcome, HEAD};
use pii_vault::client::{connect, ClientCerts};
use pii_vault::config::{Config, RawConfig};
use pii_vault::dev::{bootstrap, StartMode};
use pii_vault::domain::Timestamp;
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::proto::v1 as pb;
use pii_vault::storage::{SledStore, Store};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;

const TENANT: &str = "bench";
const SUBJECT: &str = "target";
/// Reads of the subject before the log is filled: the report's recipients.
const READS: usize = 10;
/// Events per append while filling.
const FILL_BATCH: u64 = 4096;

struct Args {
    sizes: Vec<u64>,
    reports: usize,
}

fn args() -> Args {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mut a = Args {
        sizes: if smoke {
            vec![1_000, 20_000]
        } else {
            vec![1_000, 1_000_000]
        },
        reports: if smoke { 5 } else { 30 },
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--sizes" => {
                a.sizes = it
                    .next()
                    .expect("--sizes N,N")
                    .split(',')
                    .map(|n| n.parse().expect("a number of events"))
                    .collect();
            }
            "--reports" => a.reports = it.next().expect("--reports N").parse().expect("N"),
            _ => {}
        }
    }
    a
}

/// A vault serving `config` on a runtime of its own.
struct Node {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), pii_vault::server::ServerError>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Node {
    async fn start(config: &Config, certs: &ClientCerts) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind(config.listen).expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = config.clone();
        let task = runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            pii_vault::server::run(listener, config, async move {
                let _ = stopped.await;
            })
            .await
        });
        for _ in 0..600 {
            if connect(&addr.to_string(), certs).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
            runtime: Some(runtime),
        }
    }

    async fn channel(&self, certs: &ClientCerts) -> Channel {
        connect(&self.addr.to_string(), certs)
            .await
            .expect("connect")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("task").expect("stopped cleanly");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Appends `n` events about other subjects of the tenant to the stopped vault's log.
fn fill(config: &Config, n: u64) {
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&config.store_dir(), 64 << 20).expect("open the store"));
    let keys = Keyring::open(
        RootKeys::load(&config.root_key_file).expect("root key"),
        store.clone(),
    )
    .expect("keyring");
    let key = keys.audit_key().expect("audit key");
    let (mut seq, bytes) = store.audit_last().expect("last").expect("an event");
    let mut prev = AuditEvent::decode(&bytes).expect("decode").mac;
    let mut left = n;
    while left > 0 {
        let count = left.min(FILL_BATCH);
        let mut rows = Vec::with_capacity(count as usize);
        for _ in 0..count {
            seq += 1;
            let draft = EventDraft {
                time: Timestamp(seq),
                request_id: format!("fill-{seq}"),
                caller: "uri:spiffe://bench/filler".into(),
                operation: Operation::GetFields,
                tenant: TENANT.into(),
                subject: format!("other-{}", seq % 10_000),
                fields: vec!["email".into()],
                purpose: "benchmark".into(),
                outcome: Outcome::Ok,
                reason: String::new(),
                rule: String::new(),
            };
            let event = AuditEvent::seal(&key, seq, draft, prev);
            prev = event.mac;
            rows.push((seq, event.encode()));
        }
        let head = Head {
            mark: ChainMark::new(&key, HEAD, seq, prev),
            open_intents: Vec::new(),
        };
        store.audit_append(&rows, &head.encode()).expect("append");
        left -= count;
    }
}

struct Measured {
    events: u64,
    start: Duration,
    median: Duration,
    p90: Duration,
    recipients: usize,
}

async fn measure(events: u64, reports: usize) -> Measured {
    let dir = TempDir::new().expect("temp dir");
    let raw = RawConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().to_path_buf()),
        ..RawConfig::default()
    };
    let mut config = raw.validate().expect("config");
    config.abuse.requests_per_second = 1_000_000;
    config.abuse.request_burst = 1_000_000;
    bootstrap(&config, StartMode::Dev).expect("bootstrap");
    let certs = ClientCerts::dev(dir.path());

    let node = Node::start(&config, &certs).await;
    let channel = node.channel(&certs).await;
    pb::tenant_service_client::TenantServiceClient::new(channel.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: TENANT.into(),
        })
        .await
        .expect("tenant");
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());
    records
        .put_fields(pb::PutFieldsRequest {
            tenant_id: TENANT.into(),
            subject_id: SUBJECT.into(),
            fields: vec![pb::FieldInput {
                name: "email".into(),
                category: pb::Category::Account as i32,
                value: Some(pb::Value {
                    kind: Some(pb::value::Kind::Text("target@example.com".into())),
                }),
                ..Default::default()
            }],
            idempotency_key: String::new(),
        })
        .await
        .expect("put");
    for _ in 0..READS {
        records
            .get_fields(pb::GetFieldsRequest {
                tenant_id: TENANT.into(),
                subject_id: SUBJECT.into(),
                field_names: vec![],
                purpose: "benchmark".into(),
            })
            .await
            .expect("get");
    }
    drop((records, channel));
    node.stop().await;

    fill(&config, events);

    let started = Instant::now();
    let node = Node::start(&config, &certs).await;
    let start = started.elapsed();
    let mut rights = pb::subject_rights_service_client::SubjectRightsServiceClient::new(
        node.channel(&certs).await,
    );
    let mut times = Vec::with_capacity(reports);
    let mut recipients = 0;
    for _ in 0..reports {
        let began = Instant::now();
        let report = rights
            .access_subject(pb::AccessSubjectRequest {
                tenant_id: TENANT.into(),
                subject_id: SUBJECT.into(),
            })
            .await
            .expect("access report")
            .into_inner();
        times.push(began.elapsed());
        recipients = report.recipients.len();
    }
    drop(rights);
    node.stop().await;
    times.sort();
    Measured {
        events,
        start,
        median: times[times.len() / 2],
        p90: times[times.len() * 9 / 10],
        recipients,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut results = Vec::new();
    println!("events in log   start s   report median ms   p90 ms   recipients");
    for &size in &args.sizes {
        let m = runtime.block_on(measure(size, args.reports));
        println!(
            "{:>13}   {:>7.2}   {:>16.2}   {:>6.2}   {:>10}",
            m.events,
            m.start.as_secs_f64(),
            ms(m.median),
            ms(m.p90),
            m.recipients
        );
        assert!(
            m.recipients >= READS,
            "the report lists the subject's reads: {}",
            m.recipients
        );
        results.push(m);
    }
    if let (Some(small), Some(large)) = (results.first(), results.last()) {
        println!(
            "ratio: report at {} events / at {} events = {:.2} (medians)",
            large.events,
            small.events,
            large.median.as_secs_f64() / small.median.as_secs_f64()
        );
    }
}
