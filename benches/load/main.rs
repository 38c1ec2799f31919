//! The load generator: drives a real vault (in this process, over mutual TLS on loopback)
//! and prints throughput and latency percentiles next to same-run baselines.
//!
//! ```sh
//! cargo bench --bench load                       # full run (about a minute)
//! cargo bench --bench load -- --smoke            # a few seconds: checks it works
//! cargo test --release --bench load              # the same smoke run (what CI does)
//! cargo bench --bench load -- --duration 10 --concurrency 1,8,64 --scenarios get1,put1
//! ```
//!
//! Absolute numbers drift on shared machines; compare the ratios, which come from runs in
//! the same process, back to back.

mod drive;
mod erase;
mod fixture;

use std::time::Duration;

use drive::{closed_loop, Scenario, Stats};
use fixture::Fixture;

struct Args {
    duration: Duration,
    concurrency: Vec<usize>,
    scenarios: Vec<Scenario>,
    subjects: usize,
    /// A few-second check that everything works: any failed request is an error.
    smoke: bool,
}

fn list<T>(s: &str, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
    s.split(',').filter_map(|p| parse(p.trim())).collect()
}

fn smoke(a: &mut Args) {
    a.duration = Duration::from_millis(500);
    a.concurrency = vec![8];
    a.subjects = 50;
}

fn args() -> Args {
    let mut a = Args {
        duration: Duration::from_secs(5),
        concurrency: vec![1, 8, 64],
        scenarios: vec![
            Scenario::Get1,
            Scenario::Get10,
            Scenario::Put1,
            Scenario::Put10,
            Scenario::Mixed,
        ],
        subjects: 1000,
        smoke: false,
    };
    // `cargo bench` passes --bench; `cargo test` does not, and gets the smoke run.
    if !std::env::args().any(|a| a == "--bench") {
        smoke(&mut a);
        a.smoke = true;
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--smoke" => {
                smoke(&mut a);
                a.smoke = true;
            }
            "--duration" => a.duration = Duration::from_secs(value().parse().unwrap_or(5)),
            "--concurrency" => a.concurrency = list(&value(), |s| s.parse().ok()),
            "--scenarios" => a.scenarios = list(&value(), Scenario::parse),
            "--subjects" => a.subjects = value().parse().unwrap_or(1000),
            // `cargo bench` passes --bench; other flags are cargo's business.
            _ => {}
        }
    }
    a
}

fn row(label: &str, audit: &str, concurrency: usize, s: &Stats) {
    println!(
        "{label:<12} {audit:<6} {concurrency:>5} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>7}",
        s.ops_per_sec(),
        s.ms(0.5),
        s.ms(0.99),
        s.ms(0.999),
        s.errors
    );
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        println!(
            "# pii-vault load generator: {} s per run, {} subjects x 10 fields of 256 B",
            args.duration.as_secs_f64(),
            args.subjects
        );
        println!(
            "{:<12} {:<6} {:>5} {:>10} {:>8} {:>8} {:>8} {:>7}",
            "scenario", "audit", "conc", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
        );
        let audited = Fixture::start(true, args.subjects).await;
        let unaudited = Fixture::start(false, args.subjects).await;
        let mut ratios = Vec::new();
        let mut failures = 0;
        for &scenario in &args.scenarios {
            for &c in &args.concurrency {
                let on_channels = channels(&audited, c).await;
                let off_channels = channels(&unaudited, c).await;
                let on = closed_loop(&on_channels, scenario, c, args.duration, args.subjects).await;
                row(scenario.name(), "on", c, &on);
                let off =
                    closed_loop(&off_channels, scenario, c, args.duration, args.subjects).await;
                row(scenario.name(), "off", c, &off);
                ratios.push((scenario, c, on.ops_per_sec() / off.ops_per_sec()));
                failures += on.errors + off.errors + u64::from(on.ops == 0 || off.ops == 0);
            }
        }
        println!();
        let (rounds, big) = if args.smoke { (1, 2_000) } else { (5, 10_000) };
        erase::compare(&audited.channel().await, rounds, big).await;
        println!();
        println!("# throughput with auditing on / auditing off (same run, same concurrency)");
        for (scenario, c, ratio) in ratios {
            println!("ratio {:<12} conc {c:>3}: {ratio:.2}", scenario.name());
        }
        audited.stop().await;
        unaudited.stop().await;
        if args.smoke && failures > 0 {
            eprintln!("smoke run failed: {failures} failed requests or empty runs");
            std::process::exit(1);
        }
        if args.smoke {
            println!("smoke: 1 passed, 0 failed");
        }
    });
}

/// A few connections per run, so streams spread over HTTP/2 connections as real clients do.
async fn channels(f: &Fixture, concurrency: usize) -> Vec<tonic::transport::Channel> {
    let mut out = Vec::new();
    for _ in 0..concurrency.clamp(1, 4) {
        out.push(f.channel().await);
    }
    out
}
