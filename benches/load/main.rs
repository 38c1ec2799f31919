//! The load generator: drives a real vault (in this process, over mutual TLS on loopback)
//! and prints throughput and latency percentiles next to baselines measured in the same run:
//!
//! - B1: a bare tonic echo service over the vault's TLS configuration, replies of the same
//!   size as `GetFields` (`echo.rs`);
//! - B2: sled insert + AES-256-GCM seal + shared flush, no gRPC (`floor.rs`);
//! - B3: the disk's own write + fsync latency (`floor.rs`);
//! - P, the peer, with `--peer`: the same reads and writes done without a vault, in
//!   PostgreSQL with `pgcrypto` column encryption over verified TLS, one transaction per
//!   request, each read inserting an audit row in its transaction (`pgcrypto.rs`).
//!
//! Every scenario runs closed loop at each concurrency (peak) against the audited vault, an
//! unaudited one, its baseline and P (when asked for), interleaved in one-second slices;
//! then open loop at 50% and 80% of the audited peak (latency from each request's scheduled
//! time).
//!
//! The `flood` scenario runs last, on a vault of its own with a per-identity rate limit: one
//! identity sends 100,000 `GetFields` while another's read latency is measured idle and
//! under the flood (`flood.rs`).
//!
//! ```sh
//! cargo bench --bench load                       # full run (about five minutes)
//! cargo bench --bench load -- --smoke            # a few seconds: checks it works
//! cargo test --release --bench load              # the same smoke run (what CI does)
//! cargo bench --bench load -- --duration 10 --concurrency 1,8,64 --scenarios get1,put1
//! cargo bench --bench load -- --peer --scenarios get1,put1   # with P: vault / P per row
//! cargo bench --bench load -- --rss --fields 1000000 --cache-mib 256
//! cargo bench --bench load -- --backends --duration 10 --concurrency 8,64
//! cargo bench --bench load -- --nodes --duration 10 --concurrency 64
//!                                                # one CPU-confined node on PostgreSQL
//!                                                #   against two (--node-cpus 0.5)
//! cargo bench --bench load -- --scenarios erase --concurrency 1 --duration 2
//!                                                # erasure, with 10,000 by EraseSubjects
//!                                                #   against 10,000 by one call each
//! cargo bench --bench load -- --only vault --scenarios get1 --concurrency 64 --duration 8
//!                                                # one vault alone, nothing interleaved: for a
//!                                                #   profile (perf record -p) or a CPU count
//! cargo bench --bench load -- --scenarios flood  # the flood alone (--flood-requests, --idle-reads,
//!                                                #   --flood-streams, --flood-connections)
//! ```
//!
//! `--backends` compares one node on sled, one on PostgreSQL and two on one PostgreSQL
//! database instead (`backends.rs`); it fails when no PostgreSQL server can be started. The
//! smoke run includes a short form of it, skipped with the reason printed when there is no
//! PostgreSQL (and failed then if `PIIVAULT_REQUIRE_PG` is set). `--peer` exits with status 2
//! when P cannot run (no PostgreSQL server, or no pgcrypto in it); the smoke run always tries
//! P and skips it then with the reason printed (failing only for a missing server with
//! `PIIVAULT_REQUIRE_PG` set). With `RUST_LOG` set (say `RUST_LOG=warn`), the vaults' own
//! log goes to stderr: why a request failed, for one.
//!
//! Absolute numbers drift on shared machines; compare the ratios, which come from runs in
//! the same process, back to back.

/// The vault binary's allocator (`src/main.rs`), so the vaults measured here allocate as
/// the binary does; the baselines in this process use it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backends;
mod confine;
mod cpu;
mod drive;
mod echo;
mod erase;
mod fixture;
mod flood;
mod floor;
mod pgcrypto;
#[path = "../../tests/support/postgres.rs"]
mod postgres;
mod report;
mod rss;
mod scenario;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use cpu::CpuSample;
use drive::{closed_loop, fixed_rate, Stats};
use echo::{EchoBaseline, EchoTarget};
use fixture::Fixture;
use flood::FloodSize;
use floor::{FloorTarget, Probe, StoreFloor};
use pgcrypto::{Peer, PeerTarget, Unavailable};
use pii_vault::proto::v1 as pb;
use prost::Message;
use report::{row, Summary};
use scenario::{EraseTarget, Scenario, VaultTarget};
use tonic::transport::Channel;

struct Args {
    duration: Duration,
    concurrency: Vec<usize>,
    scenarios: Vec<Scenario>,
    /// Whether `--scenarios` was given (`--backends` has its own default).
    scenarios_given: bool,
    subjects: usize,
    /// Shares of the closed-loop peak to run each scenario at, open loop.
    rates: Vec<u32>,
    /// A few-second check that everything works: any failed request is an error.
    smoke: bool,
    /// Measure the server's memory with `fields` stored fields instead.
    rss: bool,
    fields: usize,
    cache_mib: u64,
    /// Compare the storage backends instead (`backends.rs`).
    backends: bool,
    /// Compare one CPU-confined node on PostgreSQL with two instead (`backends.rs`).
    nodes: bool,
    /// Each confined node's share of a core, where a cgroup quota can be set.
    node_cpus: f64,
    /// The flood scenario's requests and idle reads (`flood.rs`).
    flood: FloodSize,
    /// Run baseline P, the pgcrypto peer (`pgcrypto.rs`), beside the vault.
    peer: bool,
    /// Run only the audited (`vault`) or the unaudited (`unaudited`) vault's closed loop,
    /// nothing interleaved with it: for a profile or a CPU count of one of them alone.
    only: Option<Only>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Audited,
    Unaudited,
}

fn list<T>(s: &str, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
    s.split(',').filter_map(|p| parse(p.trim())).collect()
}

fn smoke(a: &mut Args) {
    a.duration = Duration::from_millis(400);
    a.concurrency = vec![8];
    a.subjects = 50;
    a.fields = 2_000;
    a.flood = FloodSize {
        requests: 5_000,
        idle_calls: 50,
        ..a.flood
    };
    a.smoke = true;
    a.peer = true;
}

fn args() -> Args {
    let mut a = Args {
        duration: Duration::from_secs(5),
        concurrency: vec![1, 8, 64],
        scenarios: Scenario::ALL.to_vec(),
        scenarios_given: false,
        subjects: 1000,
        rates: vec![50, 80],
        smoke: false,
        rss: false,
        fields: 1_000_000,
        cache_mib: 256,
        backends: false,
        nodes: false,
        node_cpus: 0.5,
        flood: FloodSize {
            requests: 100_000,
            idle_calls: 1_000,
            streams: 64,
            connections: 2,
        },
        peer: false,
        only: None,
    };
    // `cargo bench` passes --bench; `cargo test` does not, and gets the smoke run.
    if !std::env::args().any(|a| a == "--bench") {
        smoke(&mut a);
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--smoke" => smoke(&mut a),
            "--duration" => a.duration = Duration::from_secs_f64(value().parse().unwrap_or(5.0)),
            "--concurrency" => a.concurrency = list(&value(), |s| s.parse().ok()),
            "--scenarios" => {
                a.scenarios = list(&value(), Scenario::parse);
                a.scenarios_given = true;
            }
            "--subjects" => a.subjects = value().parse().unwrap_or(1000),
            "--rates" => a.rates = list(&value(), |s| s.parse().ok()),
            "--rss" => a.rss = true,
            "--backends" => a.backends = true,
            "--nodes" => a.nodes = true,
            "--node-cpus" => a.node_cpus = value().parse().unwrap_or(0.5),
            "--peer" => a.peer = true,
            "--only" => {
                a.only = match value().as_str() {
                    "vault" => Some(Only::Audited),
                    "unaudited" => Some(Only::Unaudited),
                    other => {
                        eprintln!("--only: `vault` or `unaudited`, not `{other}`");
                        std::process::exit(2);
                    }
                }
            }
            "--fields" => a.fields = value().parse().unwrap_or(1_000_000),
            "--cache-mib" => a.cache_mib = value().parse().unwrap_or(256),
            "--flood-requests" => a.flood.requests = value().parse().unwrap_or(100_000),
            "--idle-reads" => a.flood.idle_calls = value().parse().unwrap_or(1_000),
            "--flood-streams" => a.flood.streams = value().parse().unwrap_or(64),
            "--flood-connections" => a.flood.connections = value().parse().unwrap_or(2),
            // `cargo bench` passes --bench; other flags are cargo's business.
            _ => {}
        }
    }
    a
}

/// The failures of a comparison on PostgreSQL; without a server, none (it is skipped, and
/// says so) unless `PIIVAULT_REQUIRE_PG` is set.
fn on_postgres(what: &str, ran: Result<u64, String>) -> u64 {
    match ran {
        Ok(failures) => failures,
        Err(why) => {
            let required = std::env::var_os("PIIVAULT_REQUIRE_PG").is_some();
            let verdict = if required {
                "failed (PIIVAULT_REQUIRE_PG is set)"
            } else {
                "skipped"
            };
            println!("{what} {verdict}: no PostgreSQL server: {why}");
            u64::from(required)
        }
    }
}

fn main() {
    let args = args();
    // The vaults' own log (why a request failed, say), when asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (failures, flood_failures) = runtime.block_on(async {
        if args.backends {
            let failures = backends::run(&args).await.unwrap_or_else(|why| {
                eprintln!("--backends: no PostgreSQL server: {why}");
                std::process::exit(2)
            });
            return (failures, 0);
        }
        if args.nodes {
            let failures = backends::run_nodes(&args).await.unwrap_or_else(|why| {
                eprintln!("--nodes: no PostgreSQL server: {why}");
                std::process::exit(2)
            });
            return (failures, 0);
        }
        let mut failures = 0;
        let mut flood_failures = 0;
        if args.rss || args.smoke {
            let within = rss::measure(args.fields, args.cache_mib).await;
            failures += u64::from(args.smoke && !within);
        }
        if !args.rss {
            failures += run(&args).await;
        }
        if !args.rss && args.scenarios.contains(&Scenario::Flood) {
            flood_failures = flood::run(args.flood).await;
        }
        if args.smoke && !args.rss {
            failures += on_postgres("backends comparison", backends::run(&args).await);
            failures += on_postgres("nodes comparison", backends::run_nodes(&args).await);
        }
        (failures, flood_failures)
    });
    if let Some(code) = drive::first_failure() {
        println!("first failed request: {code}");
    }
    if flood_failures > 0 {
        eprintln!(
            "flood: {flood_failures} answers to the flooder were neither OK nor RESOURCE_EXHAUSTED"
        );
        std::process::exit(1);
    }
    if args.smoke && failures > 0 {
        eprintln!("smoke run failed: {failures} failed requests or empty runs");
        std::process::exit(1);
    }
    if args.smoke {
        println!("smoke: 1 passed, 0 failed");
    }
}

/// The throughput and latency runs; returns the number of failed requests and empty runs.
async fn run(args: &Args) -> u64 {
    if !args
        .scenarios
        .iter()
        .any(|s| s.is_throughput() || *s == Scenario::Erase)
    {
        return 0;
    }
    println!(
        "# pii-vault load generator: {} s per run, {} subjects x 10 fields of 256 B, {} cores",
        args.duration.as_secs_f64(),
        args.subjects,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut summary = Summary::default();
    let (rounds, limit) = if args.smoke {
        (100, Duration::from_secs(1))
    } else {
        (2000, Duration::from_secs(5))
    };
    for probe in [Probe::Overwrite, Probe::Append] {
        let fsync = tokio::task::spawn_blocking(move || floor::fsync_latency(probe, rounds, limit))
            .await
            .expect("fsync probe");
        let ms = |q| fsync.value_at_quantile(q) as f64 / 1000.0;
        let what = match probe {
            Probe::Overwrite => "256 B overwrite + fdatasync",
            Probe::Append => "256 B append + fsync",
        };
        println!(
            "B3 {what:<27} ({} rounds, data directories' filesystem): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            fsync.len(),
            ms(0.5),
            ms(0.99),
            ms(0.999)
        );
        summary.fsync_ms.push((what, ms(0.5), ms(0.99)));
    }
    let (peer, mut peer_failures) = if args.peer {
        start_peer(args).await
    } else {
        (None, 0)
    };
    println!();
    report::header();

    let audited = Fixture::start(true, args.subjects).await;
    let unaudited = Fixture::start(false, args.subjects).await;
    let echo = EchoBaseline::start(&audited.tls, &audited.certs).await;
    let store_floor = StoreFloor::open();
    let mut failures = 0;
    let mut count = |s: &Stats| failures += s.errors + u64::from(s.ops == 0);
    let peer_count = |s: &Stats| s.errors + u64::from(s.ops == 0);

    for &scenario in args.scenarios.iter().filter(|s| s.is_throughput()) {
        let name = scenario.name();
        // The echo baseline answers with as many bytes as this scenario's reads get back.
        let sizes = if scenario.is_get() {
            Some(get_sizes(&audited.channel().await, scenario.fields(), args.subjects).await)
        } else {
            None
        };
        let mut peak = (0.0, 1);
        for &c in &args.concurrency {
            if let Some(only) = args.only {
                let (fixture, against) = match only {
                    Only::Audited => (&audited, "vault"),
                    Only::Unaudited => (&unaudited, "no audit"),
                };
                let targets =
                    vault_targets(&channels(fixture, c).await, scenario, c, args.subjects);
                let before = CpuSample::now();
                let s = closed_loop(targets, args.duration).await;
                let after = CpuSample::now();
                row(name, against, Some(c), &s, "alone (--only)");
                if let (Some(before), Some(after)) = (before, after) {
                    println!("cpu    {}", before.report(&after, s.ops));
                }
                count(&s);
                continue;
            }
            let on_channels = channels(&audited, c).await;
            let off_channels = channels(&unaudited, c).await;
            let mut loads = vec![
                Load::Vault(vault_targets(&on_channels, scenario, c, args.subjects)),
                Load::Vault(vault_targets(&off_channels, scenario, c, args.subjects)),
            ];
            let base = if let Some((request, reply)) = sizes {
                let echo_channels = echo_channels(&echo, c).await;
                let targets = (0..c)
                    .map(|w| {
                        let channel = echo_channels[w % echo_channels.len()].clone();
                        EchoTarget::new(channel, request, reply)
                    })
                    .collect();
                loads.push(Load::Echo(targets));
                Some(("B1 echo", format!("reply {reply} B; ")))
            } else if scenario.is_put() {
                let targets = (0..c)
                    .map(|_| store_floor.target(scenario.fields()))
                    .collect();
                loads.push(Load::Floor(targets));
                Some(("B2 store", String::new()))
            } else {
                None
            };
            if let Some(peer) = &peer {
                loads.push(Load::Peer(peer.targets(scenario, c, args.subjects)));
            }
            let mut runs = interleaved(&loads, args.duration).await;
            let peer_run = if peer.is_some() { runs.pop() } else { None };
            let baseline = if base.is_some() { runs.pop() } else { None };
            let off = runs.pop().expect("the unaudited run");
            let on = runs.pop().expect("the audited run");
            row(name, "vault", Some(c), &on, "audited");
            count(&on);
            if on.ops_per_sec() > peak.0 {
                peak = (on.ops_per_sec(), c);
            }
            let ratio = on.ops_per_sec() / off.ops_per_sec();
            let note = format!("audited / this {ratio:.2}");
            row(name, "no audit", Some(c), &off, &note);
            count(&off);
            summary.audit_ratios.push((name, c, ratio));
            if let (Some((base, prefix)), Some(b)) = (base, baseline) {
                let ratio = on.ops_per_sec() / b.ops_per_sec();
                row(
                    name,
                    base,
                    Some(c),
                    &b,
                    &format!("{prefix}vault / this {ratio:.2}"),
                );
                count(&b);
                summary.baseline_ratios.push((name, c, ratio, base));
            }
            if let Some(p) = peer_run {
                let ratio = on.ops_per_sec() / p.ops_per_sec();
                let note = format!("vault / this {ratio:.2}");
                row(name, "P pgcrypto", Some(c), &p, &note);
                peer_failures += peer_count(&p);
                summary.peer_ratios.push((name, c, ratio));
            }
        }
        if args.only.is_some() {
            continue;
        }
        let (peak_ops, peak_c) = peak;
        let on_channels = channels(&audited, peak_c).await;
        for &share in &args.rates {
            let rate = peak_ops * f64::from(share) / 100.0;
            let targets = vault_targets(&on_channels, scenario, on_channels.len(), args.subjects);
            let paced = fixed_rate(targets, rate, args.duration).await;
            let late = |q| paced.late_us.value_at_quantile(q) as f64 / 1000.0;
            let note = format!(
                "{share}% of peak: {rate:.0}/s offered; sent late p50 {:.2} p99 {:.2} ms",
                late(0.5),
                late(0.99)
            );
            let s = paced.stats;
            row(&format!("{name} @{share}%"), "vault", None, &s, &note);
            count(&s);
            summary
                .fixed_rate
                .push((name, share, s.ms(0.5), s.ms(0.99), s.ms(0.999)));
        }
    }

    if args.scenarios.contains(&Scenario::Erase) {
        let pool = if args.smoke { 50 } else { 2000 };
        let channel = audited.channel().await;
        for &c in &args.concurrency {
            let prefix = format!("erase-c{c}-");
            scenario::seed_erase_pool(&channel, &prefix, pool).await;
            let on_channels = channels(&audited, c).await;
            let next = Arc::new(AtomicU64::new(0));
            let targets = (0..c)
                .map(|w| EraseTarget {
                    client: pb::subject_rights_service_client::SubjectRightsServiceClient::new(
                        on_channels[w % on_channels.len()].clone(),
                    ),
                    prefix: prefix.clone(),
                    next: next.clone(),
                    pool,
                })
                .collect();
            let s = closed_loop(targets, args.duration).await;
            row(
                "erase",
                "vault",
                Some(c),
                &s,
                "audited; subjects with 1 field, each erased once",
            );
            count(&s);
        }
        println!();
        let (rounds, big) = if args.smoke { (1, 2_000) } else { (5, 10_000) };
        let (small_t, big_t) = erase::compare(&channel, rounds, big).await;
        summary.erase_ratio = Some((big, big_t.as_secs_f64() / small_t.as_secs_f64()));
        let n = if args.smoke { 200 } else { 10_000 };
        let (single, batch) = erase::batch_vs_single(&channel, n).await;
        summary.erase_batch = Some((n, single.as_secs_f64() / batch.as_secs_f64()));
    }

    summary.print();
    echo.stop().await;
    audited.stop().await;
    unaudited.stop().await;
    failures + peer_failures
}

/// Starts baseline P for the largest concurrency. Without a PostgreSQL server or pgcrypto, a
/// smoke run prints why and goes on without it (failing, with one failure counted, only
/// when `PIIVAULT_REQUIRE_PG` is set and there is no server); a run asked for with `--peer`
/// exits with status 2.
async fn start_peer(args: &Args) -> (Option<Peer>, u64) {
    if !args.scenarios.iter().any(|s| s.is_throughput()) {
        return (None, 0);
    }
    let connections = args.concurrency.iter().copied().max().unwrap_or(1);
    let why = match Peer::start(connections, args.subjects).await {
        Ok(peer) => {
            println!(
                "# P = PostgreSQL + pgcrypto over TLS, {connections} connections: one \
                 transaction per request, an audit row in each read's (pgcrypto.rs)"
            );
            return (Some(peer), 0);
        }
        Err(why) => why,
    };
    let required = std::env::var_os("PIIVAULT_REQUIRE_PG").is_some();
    let (why, fails) = match why {
        Unavailable::NoServer(why) => (format!("no PostgreSQL server: {why}"), required),
        Unavailable::NotSetUp(why) => (why, false),
    };
    if !args.smoke {
        eprintln!("--peer: P (the pgcrypto peer) cannot run: {why}");
        std::process::exit(2);
    }
    let what = if fails {
        "failed (PIIVAULT_REQUIRE_PG is set)"
    } else {
        "skipped"
    };
    println!("P (the pgcrypto peer) {what}: {why}");
    (None, u64::from(fails))
}

/// The load behind one row of the table: streams against a vault or a baseline.
enum Load {
    Vault(Vec<VaultTarget>),
    Echo(Vec<EchoTarget>),
    Floor(Vec<FloorTarget>),
    Peer(Vec<PeerTarget>),
}

impl Load {
    async fn run(&self, duration: Duration) -> Stats {
        match self {
            Load::Vault(t) => closed_loop(t.clone(), duration).await,
            Load::Echo(t) => closed_loop(t.clone(), duration).await,
            Load::Floor(t) => closed_loop(t.clone(), duration).await,
            Load::Peer(t) => closed_loop(t.clone(), duration).await,
        }
    }
}

/// Runs every load for `total`, interleaved in slices of about a second (A B C A B C ...), so
/// that drift in the machine's load from other processes falls on all of them alike and the
/// ratios between them hold even when the absolute figures move.
async fn interleaved(loads: &[Load], total: Duration) -> Vec<Stats> {
    let slices = total.as_secs_f64().round().max(1.0) as u32;
    let mut out: Vec<Stats> = loads.iter().map(|_| Stats::new()).collect();
    for _ in 0..slices {
        for (load, stats) in loads.iter().zip(&mut out) {
            stats.merge(load.run(total / slices).await);
        }
    }
    out
}

/// Encoded sizes of a `GetFields` request for `fields` fields and of its response.
async fn get_sizes(channel: &Channel, fields: usize, subjects: usize) -> (usize, usize) {
    let request = scenario::get_request(0, subjects, fields);
    let response = pb::record_service_client::RecordServiceClient::new(channel.clone())
        .get_fields(request.clone())
        .await
        .expect("GetFields for the reply size");
    (request.encoded_len(), response.get_ref().encoded_len())
}

fn vault_targets(
    channels: &[Channel], scenario: Scenario, streams: usize, subjects: usize,
) -> Vec<VaultTarget> {
    (0..streams)
        .map(|w| VaultTarget {
            client: pb::record_service_client::RecordServiceClient::new(
                channels[w % channels.len()].clone(),
            ),
            scenario,
            subjects,
        })
        .collect()
}

/// A few connections per run, so streams spread over HTTP/2 connections as real clients do.
async fn channels(f: &Fixture, concurrency: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..concurrency.clamp(1, 4) {
        out.push(f.channel().await);
    }
    out
}

/// The same number of connections to the echo baseline.
async fn echo_channels(e: &EchoBaseline, concurrency: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..concurrency.clamp(1, 4) {
        out.push(e.channel().await);
    }
    out
}
