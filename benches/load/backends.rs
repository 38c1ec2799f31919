//! `--backends`: the figures issue 10 asks for. In one run, with the same workload, slices
//! and concurrency, it drives
//!
//! - A: one vault node on sled;
//! - B: one vault node on PostgreSQL;
//! - C: two vault nodes on the same PostgreSQL database (B's node and a second one with the
//!   same root key and PKI), the streams split evenly between them,
//!
//! and prints each one's throughput with the ratios B ÷ A, C ÷ A and C ÷ B.
//!
//! Every node is started through `server::run`, as `pii-vault serve` starts it, on its own
//! multi-threaded tokio runtime (as a separate process would have; the PostgreSQL store
//! blocks the thread that calls it for its round trips, so sharing the load generator's
//! runtime would charge that to the load generator). The PostgreSQL server is the test
//! suite's throw-away one (`tests/support/postgres.rs`), with its durability settings left at
//! their defaults (printed at the start). Load generator, nodes and PostgreSQL all share this
//! machine's cores.
//!
//! Against drift in the machine's load, the configurations take turns in one-second slices,
//! in alternating order (A B C, C B A, ...); the ratios are given over the whole run and as
//! the median (and range) of the ratios within each round.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pii_vault::client::{connect, ClientCerts};
use pii_vault::config::{RawConfig, SecretString};
use pii_vault::dev::{bootstrap, StartMode};
use pii_vault::proto::v1 as pb;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::confine::Confine;
use crate::drive::{closed_loop, Stats};
use crate::fixture::preload;
use crate::postgres::{self, Postgres};
use crate::report::{self, row};
use crate::scenario::{Scenario, VaultTarget};
use crate::Args;

/// The configurations, in the order of the table.
const NAMES: [&str; 3] = ["sled", "pg 1 node", "pg 2 nodes"];

/// One vault node on a runtime of its own.
struct Node {
    addr: SocketAddr,
    certs: ClientCerts,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), pii_vault::server::ServerError>>>,
    /// The node's threads, as a process of its own would have them.
    runtime: Option<tokio::runtime::Runtime>,
    /// The node's data directory (root key, PKI; the store too on sled), removed when the
    /// node is dropped; a second node of a deployment starts from a copy.
    dir: TempDir,
}

impl Node {
    /// Starts a node on `dir` (bootstrapped there unless already), on PostgreSQL at `url`
    /// if given, else on sled in `dir`.
    async fn start(dir: TempDir, url: Option<&str>) -> Self {
        Self::start_confined(dir, url, None).await
    }

    /// `start`, with every thread of the node held to `confine`'s budget.
    async fn start_confined(dir: TempDir, url: Option<&str>, confine: Option<Confine>) -> Self {
        let mut raw = RawConfig {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.path().to_path_buf()),
            ..RawConfig::default()
        };
        if let Some(url) = url {
            raw.storage.backend = Some("postgres".into());
            raw.storage.postgres_url = Some(SecretString(url.to_owned()));
            // The throw-away server is on loopback and serves no TLS.
            raw.storage.postgres_tls = Some("disable".into());
        }
        let mut config = raw.validate().expect("config");
        // A load generator is one identity far above any client's rate: no rate limit.
        config.abuse.requests_per_second = 1_000_000;
        config.abuse.request_burst = 1_000_000;
        bootstrap(&config, StartMode::Dev).expect("bootstrap");
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(confine) = confine {
            builder.on_thread_start(move || confine.enter());
        }
        let runtime = builder
            .thread_name("vault-node")
            .enable_all()
            .build()
            .expect("node runtime");
        let listener = std::net::TcpListener::bind(config.listen).expect("bind");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            pii_vault::server::run(listener, config, async move {
                let _ = stopped.await;
            })
            .await
        });
        let mut node = Self {
            certs: ClientCerts::dev(dir.path()),
            addr,
            stop: Some(stop),
            task: Some(task),
            runtime: Some(runtime),
            dir,
        };
        node.wait_ready().await;
        node
    }

    /// Waits until the node answers (on PostgreSQL it connects its pool first).
    async fn wait_ready(&mut self) {
        for _ in 0..120 {
            let connected = tokio::time::timeout(Duration::from_secs(1), self.channel_once());
            if let Ok(Some(_)) = connected.await {
                return;
            }
            if let Some(task) = self.task.take_if(|t| t.is_finished()) {
                panic!("the vault node stopped: {:?}", task.await);
            }
        }
        panic!("the vault node did not answer within two minutes");
    }

    async fn channel_once(&self) -> Option<Channel> {
        connect(&self.addr.to_string(), &self.certs).await.ok()
    }

    async fn channel(&self) -> Channel {
        connect(&self.addr.to_string(), &self.certs)
            .await
            .expect("connect")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("node task")
                .expect("node stopped cleanly");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Copies the files of a bootstrapped data directory (root key, PKI, policy): a second node
/// of the same deployment.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The PostgreSQL server's settings that decide durability and memory, as it reports them.
fn settings(server: &Postgres, url: &str) -> String {
    let sql = "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) \
               FROM pg_settings WHERE name IN ('server_version', 'fsync', 'synchronous_commit', \
               'full_page_writes', 'wal_sync_method', 'shared_buffers', 'max_connections')";
    let out = Command::new(server.psql())
        .args(["-X", "-At", "-d", url, "-c", sql])
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => format!("unknown ({})", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("unknown (psql: {e})"),
    }
}

/// The scenarios to compare: those asked for (not erasure or the flood), else Get and Put of one field.
fn scenarios(args: &Args) -> Vec<Scenario> {
    if !args.scenarios_given {
        return vec![Scenario::Get1, Scenario::Put1];
    }
    args.scenarios
        .iter()
        .copied()
        .filter(|s| s.is_throughput())
        .collect()
}

/// Runs the comparison and returns the number of failed requests and empty runs, or why
/// no PostgreSQL server could be had.
pub async fn run(args: &Args) -> Result<u64, String> {
    let server = postgres::server()?;
    let url = server.fresh_database();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# pii-vault load generator, storage backends (issue 10): {} s per configuration in \
         slices of about 1 s, {} subjects x 10 fields of 256 B, audited",
        args.duration.as_secs_f64(),
        args.subjects,
    );
    println!(
        "# {cores} cores shared by the load generator, every vault node (each on its own \
         runtime) and PostgreSQL"
    );
    println!(
        "# PostgreSQL: {}; the nodes connect over loopback without TLS",
        settings(server, &url)
    );
    println!(
        "# A = {}: 1 node on sled; B = {}: 1 node on PostgreSQL; C = {}: B's node and a \
         second one on the same database, streams split evenly",
        NAMES[0], NAMES[1], NAMES[2]
    );

    let sled = Node::start(TempDir::new().expect("temp dir"), None).await;
    let pg_dir = TempDir::new().expect("temp dir");
    let twin_dir = TempDir::new().expect("temp dir");
    let pg = Node::start(pg_dir, Some(&url)).await;
    copy_dir(pg.dir.path(), twin_dir.path());
    let twin = Node::start(twin_dir, Some(&url)).await;
    // One database: the subjects the second node serves are the first node's.
    for (name, node) in [(NAMES[0], &sled), (NAMES[1], &pg)] {
        let again = preload(&node.channel().await, args.subjects).await;
        if again > 0 {
            println!("# preload on {name}: {again} PutFields answered Unavailable, sent again");
        }
    }
    println!();
    report::header();

    let mut failures = 0;
    let mut ratios = Vec::new();
    for scenario in scenarios(args) {
        for &c in &args.concurrency {
            let loads = [
                targets(&[&sled], scenario, c, args.subjects).await,
                targets(&[&pg], scenario, c, args.subjects).await,
                targets(&[&pg, &twin], scenario, c, args.subjects).await,
            ];
            let (runs, rounds) = alternating(&loads, args.duration).await;
            for (i, s) in runs.iter().enumerate() {
                failures += s.errors + u64::from(s.ops == 0);
                let note = match i {
                    0 => "A".to_owned(),
                    1 => format!("B; B / A {}", ratio(&runs, &rounds, 1, 0)),
                    _ => format!(
                        "C; C / A {}; C / B {}",
                        ratio(&runs, &rounds, 2, 0),
                        ratio(&runs, &rounds, 2, 1)
                    ),
                };
                row(scenario.name(), NAMES[i], Some(c), s, &note);
            }
            ratios.push((scenario.name(), c, runs, rounds));
        }
    }

    println!();
    println!("# throughput ratios, same run: whole run (median of the rounds' ratios, range)");
    for (name, c, runs, rounds) in &ratios {
        println!(
            "ratio {name:<6} conc {c:>3}: B / A {}   C / A {}   C / B {}",
            ratio(runs, rounds, 1, 0),
            ratio(runs, rounds, 2, 0),
            ratio(runs, rounds, 2, 1)
        );
    }
    sled.stop().await;
    twin.stop().await;
    pg.stop().await;
    Ok(failures)
}

/// `--nodes`: the figure issue 17 asks for. On one fresh database, one vault node held to a
/// CPU budget (`confine.rs`) against that node and a second one held the same way, the
/// streams split evenly, taking turns in one-second slices. Returns the failed requests and
/// empty runs, or why no PostgreSQL server could be had.
pub async fn run_nodes(args: &Args) -> Result<u64, String> {
    let server = postgres::server()?;
    let url = server.fresh_database();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let budgets = [
        Confine::node(0, args.node_cpus),
        Confine::node(1, args.node_cpus),
    ];
    println!(
        "# pii-vault load generator, nodes on one PostgreSQL (issue 17): {} s per \
         configuration in slices of about 1 s, {} subjects x 10 fields of 256 B, audited",
        args.duration.as_secs_f64(),
        args.subjects,
    );
    println!(
        "# node 1: {}; node 2: {}; {cores} cores in all, shared with the load generator and \
         PostgreSQL (unconfined)",
        budgets[0].describe(args.node_cpus),
        budgets[1].describe(args.node_cpus)
    );
    println!(
        "# PostgreSQL: {}; the nodes connect over loopback without TLS",
        settings(server, &url)
    );
    let one_dir = TempDir::new().expect("temp dir");
    let two_dir = TempDir::new().expect("temp dir");
    let one = Node::start_confined(one_dir, Some(&url), Some(budgets[0].clone())).await;
    copy_dir(one.dir.path(), two_dir.path());
    let two = Node::start_confined(two_dir, Some(&url), Some(budgets[1].clone())).await;
    let again = preload(&one.channel().await, args.subjects).await;
    if again > 0 {
        println!("# preload: {again} PutFields answered Unavailable, sent again");
    }
    println!();
    report::header();
    let names = ["pg 1 node", "pg 2 nodes"];
    let mut failures = 0;
    let mut ratios = Vec::new();
    for scenario in scenarios(args) {
        for &c in &args.concurrency {
            let loads = [
                targets(&[&one], scenario, c, args.subjects).await,
                targets(&[&one, &two], scenario, c, args.subjects).await,
            ];
            let (runs, rounds) = alternating(&loads, args.duration).await;
            for (i, s) in runs.iter().enumerate() {
                failures += s.errors + u64::from(s.ops == 0);
                let note = match i {
                    0 => "1 confined node".to_owned(),
                    _ => format!("2 confined nodes; 2 / 1 {}", ratio(&runs, &rounds, 1, 0)),
                };
                row(scenario.name(), names[i], Some(c), s, &note);
            }
            ratios.push((scenario.name(), c, ratio(&runs, &rounds, 1, 0)));
        }
    }
    println!();
    println!("# throughput ratios, same run: whole run (median of the rounds' ratios, range)");
    for (name, c, r) in &ratios {
        println!("ratio {name:<6} conc {c:>3}: 2 nodes / 1 node {r}");
    }
    two.stop().await;
    one.stop().await;
    for budget in &budgets {
        budget.remove();
    }
    Ok(failures)
}

/// `c` streams over `nodes`, stream `w` on node `w % nodes.len()`, over about 4 HTTP/2
/// connections in all (at least one per node).
async fn targets(
    nodes: &[&Node], scenario: Scenario, c: usize, subjects: usize,
) -> Vec<VaultTarget> {
    let per_node = (c.clamp(1, 4) / nodes.len()).max(1);
    let mut channels = Vec::new();
    for node in nodes {
        let mut mine = Vec::new();
        for _ in 0..per_node {
            mine.push(node.channel().await);
        }
        channels.push(mine);
    }
    (0..c)
        .map(|w| {
            let node = &channels[w % nodes.len()];
            VaultTarget {
                client: pb::record_service_client::RecordServiceClient::new(
                    node[(w / nodes.len()) % node.len()].clone(),
                ),
                scenario,
                subjects,
            }
        })
        .collect()
}

/// Runs each load for `total` in slices of about a second, the order reversed every round
/// (0 1 2, 2 1 0, ...). Returns each load's whole run and its ops/s in every round.
async fn alternating(loads: &[Vec<VaultTarget>], total: Duration) -> (Vec<Stats>, Vec<Vec<f64>>) {
    let slices = total.as_secs_f64().round().max(1.0) as u32;
    let mut whole: Vec<Stats> = loads.iter().map(|_| Stats::new()).collect();
    let mut rounds = Vec::new();
    for round in 0..slices {
        let mut order: Vec<usize> = (0..loads.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut per_load = vec![0.0; loads.len()];
        for i in order {
            let s = closed_loop(loads[i].clone(), total / slices).await;
            per_load[i] = s.ops_per_sec();
            whole[i].merge(s);
        }
        rounds.push(per_load);
    }
    (whole, rounds)
}

/// `a ÷ b` over the whole run, then the median and range of the rounds' ratios.
fn ratio(runs: &[Stats], rounds: &[Vec<f64>], a: usize, b: usize) -> String {
    let whole = runs[a].ops_per_sec() / runs[b].ops_per_sec();
    let mut each: Vec<f64> = rounds.iter().map(|r| r[a] / r[b]).collect();
    each.sort_by(f64::total_cmp);
    if each.len() < 2 {
        return format!("{whole:.2}");
    }
    let median = if each.len() % 2 == 1 {
        each[each.len() / 2]
    } else {
        (each[each.len() / 2 - 1] + each[each.len() / 2]) / 2.0
    };
    format!(
        "{whole:.2} ({median:.2}, {:.2}-{:.2})",
        each[0],
        each[each.len() - 1]
    )
}
