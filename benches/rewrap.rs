//! Re-wrap benchmark: how fast `RotateTenantKey` re-wraps a tenant's DEKs, next to the raw
//! AES-256-GCM key-wrap rate measured in the same process, and what a running re-wrap costs
//! concurrent reads.
//!
//! ```sh
//! cargo bench --bench rewrap                        # 100,000 subjects (a few minutes)
//! cargo bench --bench rewrap -- --subjects 20000 --concurrency 16 --duration 5
//! cargo bench --bench rewrap -- --rewrap-pause-ms 5  # a gentler re-wrap
//! cargo test --release --bench rewrap               # smoke run: 2,000 subjects, must not fail
//! ```
//!
//! One vault in this process over mutual TLS on loopback; one tenant with `--subjects`
//! subjects of one 64-byte field each. Two rotations: the first with no other load (the
//! re-wrap rate alone), the second while `--concurrency` readers run (the rate under load,
//! and the read throughput during it, against the same readers without a re-wrap).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pb::key_service_client::KeyServiceClient;
use pb::record_service_client::RecordServiceClient;
use pii_vault::client::{connect, ClientCerts};
use pii_vault::config::RawConfig;
use pii_vault::crypto::{Aad, Dek, Kek, Key};
use pii_vault::dev::{bootstrap, StartMode};
use pii_vault::proto::v1 as pb;
use pii_vault::storage::SledStore;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;

const TENANT: &str = "bench";

struct Args {
    subjects: usize,
    concurrency: usize,
    duration: Duration,
    /// `keys.rewrap_batch_size` and `keys.rewrap_pause_ms` of the vault.
    rewrap_batch: Option<usize>,
    rewrap_pause_ms: Option<u64>,
    smoke: bool,
}

fn args() -> Args {
    let mut a = Args {
        subjects: 100_000,
        concurrency: 16,
        duration: Duration::from_secs(5),
        rewrap_batch: None,
        rewrap_pause_ms: None,
        smoke: false,
    };
    // `cargo bench` passes --bench; `cargo test` does not, and gets the smoke run.
    if !std::env::args().any(|a| a == "--bench") {
        a.smoke = true;
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--smoke" => a.smoke = true,
            "--subjects" => a.subjects = value().parse().unwrap_or(a.subjects),
            "--concurrency" => a.concurrency = value().parse().unwrap_or(a.concurrency),
            "--duration" => {
                a.duration = Duration::from_secs(value().parse().unwrap_or(5));
            }
            "--rewrap-batch" => a.rewrap_batch = value().parse().ok(),
            "--rewrap-pause-ms" => a.rewrap_pause_ms = value().parse().ok(),
            _ => {}
        }
    }
    if a.smoke {
        a.subjects = 2_000;
        a.concurrency = 4;
        a.duration = Duration::from_millis(500);
    }
    a
}

/// Raw key-wrap operations per second: `Key<Kek>::wrap` of a DEK (one AES-256-GCM
/// encryption of 32 bytes with a fresh random nonce), and unwrap + wrap (a re-wrap's crypto).
fn raw_wrap_rates(duration: Duration) -> (f64, f64) {
    let old: Key<Kek> = Key::generate(1).expect("rng");
    let new: Key<Kek> = Key::generate(2).expect("rng");
    let dek: Key<Dek> = Key::generate(1).expect("rng");
    let aad = Aad::new("subject-dek").with(b"bench").with(b"s1");
    let wrapped = old.wrap(&dek, &aad).expect("wrap");
    let run = |op: &dyn Fn()| {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < duration {
            for _ in 0..256 {
                op();
            }
            n += 256;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let wrap = run(&|| {
        std::hint::black_box(new.wrap(&dek, &aad).expect("wrap"));
    });
    let rewrap = run(&|| {
        let d: Key<Dek> = old.unwrap_key(&wrapped, 1, &aad).expect("unwrap");
        std::hint::black_box(new.wrap(&d, &aad).expect("wrap"));
    });
    (wrap, rewrap)
}

struct Vault {
    _dir: TempDir,
    addr: String,
    certs: ClientCerts,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), pii_vault::server::ServerError>>,
}

impl Vault {
    async fn start(args: &Args) -> Self {
        let dir = TempDir::new().expect("temp dir");
        let mut raw = RawConfig {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.path().to_path_buf()),
            ..RawConfig::default()
        };
        raw.keys.rewrap_batch_size = args.rewrap_batch;
        raw.keys.rewrap_pause_ms = args.rewrap_pause_ms;
        let mut config = raw.validate().expect("config");
        // A load generator is one identity far above any client's rate: no rate limit.
        config.abuse.requests_per_second = 1_000_000;
        config.abuse.request_burst = 1_000_000;
        bootstrap(&config, StartMode::Dev).expect("bootstrap");
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let store =
            SledStore::open(&config.store_dir(), config.cache_capacity_bytes).expect("store");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(pii_vault::server::serve(
            listener,
            config,
            Arc::new(store),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            certs: ClientCerts::dev(dir.path()),
            _dir: dir,
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn channel(&self) -> Channel {
        connect(&self.addr, &self.certs).await.expect("connect")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

fn value(i: usize) -> String {
    format!("{i:0>64}")
}

async fn preload(vault: &Vault, subjects: usize) {
    let channel = vault.channel().await;
    pb::tenant_service_client::TenantServiceClient::new(channel.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: TENANT.into(),
        })
        .await
        .expect("tenant");
    let streams = 32;
    let mut tasks = Vec::new();
    for w in 0..streams {
        let mut client = RecordServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..subjects).step_by(streams) {
                client
                    .put_fields(pb::PutFieldsRequest {
                        tenant_id: TENANT.into(),
                        subject_id: format!("s{i}"),
                        fields: vec![pb::FieldInput {
                            expected_version: None,
                            indexed: false,
                            ttl_seconds: 0,
                            transaction_record: false,
                            name: "f".into(),
                            category: pb::Category::Profile as i32,
                            value: Some(pb::Value {
                                kind: Some(pb::value::Kind::Text(value(i))),
                            }),
                        }],
                        idempotency_key: String::new(),
                    })
                    .await
                    .expect("preload");
            }
        }));
    }
    for t in tasks {
        t.await.expect("preload task");
    }
}

/// Readers in a closed loop until `stop`; returns (ops, errors, latency histogram).
async fn readers(
    channels: Vec<Channel>, concurrency: usize, subjects: usize, stop: Arc<AtomicBool>,
) -> (u64, u64, Histogram<u64>) {
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let mut client = RecordServiceClient::new(channels[w % channels.len()].clone());
            let (stop, ops, errors) = (stop.clone(), ops.clone(), errors.clone());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let mut n = w * 7919;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let i = n % subjects;
                    let t0 = Instant::now();
                    let r = client
                        .get_fields(pb::GetFieldsRequest {
                            tenant_id: TENANT.into(),
                            subject_id: format!("s{i}"),
                            field_names: vec!["f".into()],
                            purpose: "benchmark".into(),
                        })
                        .await;
                    let ok = r.is_ok_and(|r| {
                        r.into_inner().fields.first().and_then(|f| f.value.clone())
                            == Some(pb::Value {
                                kind: Some(pb::value::Kind::Text(value(i))),
                            })
                    });
                    if ok {
                        ops.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.record(t0.elapsed().as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                hist
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    for t in tasks {
        all.add(t.await.expect("reader")).expect("merge");
    }
    (
        ops.load(Ordering::SeqCst),
        errors.load(Ordering::SeqCst),
        all,
    )
}

/// Rotates the tenant key and waits until the re-wrap is done; returns its duration.
async fn rotate_and_wait(keys: &mut KeyServiceClient<Channel>) -> (u32, Duration) {
    let start = Instant::now();
    let r = keys
        .rotate_tenant_key(pb::RotateTenantKeyRequest {
            tenant_id: TENANT.into(),
        })
        .await
        .expect("rotate")
        .into_inner();
    loop {
        let s = keys
            .get_key_status(pb::GetKeyStatusRequest {
                tenant_id: TENANT.into(),
                count_deks: false,
            })
            .await
            .expect("status")
            .into_inner();
        if s.tenants[0].rewrap.is_none() {
            return (r.new_version, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() {
    let args = args();
    let smoke = args.smoke;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let failures = runtime.block_on(async move {
        println!(
            "# pii-vault re-wrap benchmark: {} subjects, readers at concurrency {}, re-wrap batch {}, pause {} ms",
            args.subjects,
            args.concurrency,
            args.rewrap_batch.map_or_else(|| "default".into(), |b| b.to_string()),
            args.rewrap_pause_ms.unwrap_or(0)
        );
        let vault = Vault::start(&args).await;
        let t0 = Instant::now();
        preload(&vault, args.subjects).await;
        println!(
            "preloaded {} subjects in {:.1} s",
            args.subjects,
            t0.elapsed().as_secs_f64()
        );
        let raw_time = if args.smoke {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(2)
        };
        let (raw_wrap, raw_rewrap) = raw_wrap_rates(raw_time);
        println!("raw AES-256-GCM key wrap (Key<Kek>::wrap of a DEK), 1 thread: {raw_wrap:>10.0} ops/s");
        println!("raw unwrap + wrap (the crypto of one re-wrap), 1 thread:      {raw_rewrap:>10.0} ops/s");

        let mut keys = KeyServiceClient::new(vault.channel().await);
        let n = args.subjects as f64;
        let (v, quiet) = rotate_and_wait(&mut keys).await;
        let quiet_rate = n / quiet.as_secs_f64();
        println!(
            "rotation to v{v} without other load: {} DEKs re-wrapped in {:.2} s = {quiet_rate:.0} DEKs/s; ratio to raw wrap {:.3}, to raw unwrap+wrap {:.3}",
            args.subjects,
            quiet.as_secs_f64(),
            quiet_rate / raw_wrap,
            quiet_rate / raw_rewrap
        );

        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(vault.channel().await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let base = tokio::spawn(readers(channels.clone(), args.concurrency, args.subjects, stop.clone()));
        let t0 = Instant::now();
        tokio::time::sleep(args.duration).await;
        stop.store(true, Ordering::SeqCst);
        let (base_ops, base_errors, base_hist) = base.await.expect("readers");
        let base_rate = base_ops as f64 / t0.elapsed().as_secs_f64();
        println!(
            "reads without re-wrap: {base_rate:>8.0} ops/s  p50 {:.2} ms  p99 {:.2} ms  errors {base_errors}",
            ms(&base_hist, 0.5),
            ms(&base_hist, 0.99)
        );

        let stop = Arc::new(AtomicBool::new(false));
        let during = tokio::spawn(readers(channels, args.concurrency, args.subjects, stop.clone()));
        let (v, loaded) = rotate_and_wait(&mut keys).await;
        stop.store(true, Ordering::SeqCst);
        let (ops, errors, hist) = during.await.expect("readers");
        let read_rate = ops as f64 / loaded.as_secs_f64();
        let loaded_rate = n / loaded.as_secs_f64();
        println!(
            "reads during re-wrap:  {read_rate:>8.0} ops/s  p50 {:.2} ms  p99 {:.2} ms  errors {errors}",
            ms(&hist, 0.5),
            ms(&hist, 0.99)
        );
        println!(
            "rotation to v{v} under read load: {} DEKs re-wrapped in {:.2} s = {loaded_rate:.0} DEKs/s; ratio to raw wrap {:.3}",
            args.subjects,
            loaded.as_secs_f64(),
            loaded_rate / raw_wrap
        );
        println!();
        println!("# summary (same run)");
        println!("DEKs re-wrapped per second / raw key wraps per second: {quiet_rate:.0} / {raw_wrap:.0} = {:.3}", quiet_rate / raw_wrap);
        println!("read throughput during re-wrap / without: {read_rate:.0} / {base_rate:.0} = {:.2}", read_rate / base_rate);
        vault.stop().await;
        // A smoke re-wrap can finish before any read completes; only failures count.
        base_errors + errors + u64::from(base_ops == 0)
    });
    if smoke {
        if failures > 0 {
            eprintln!("smoke run failed: {failures} failed reads or empty runs");
            std::process::exit(1);
        }
        println!("smoke: 1 passed, 0 failed");
    }
}
