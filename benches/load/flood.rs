//! The flood scenario (issue 16): one identity sends 100,000 `GetFields` from many streams,
//! far past its rate limit, while another identity reads at an ordinary pace. It prints the
//! other identity's latency idle and under the flood (and their ratio, both measured in this
//! run), and what the flooder got back.
//!
//! The vault is one of its own: auditing on (as `serve` always is), one tenant, one subject
//! with one field, and a rate limit per identity of `RATE` requests per second (burst
//! `BURST`). The flooder has its own certificate and a grant to read that field, so what
//! refuses it is the rate limiter (RESOURCE_EXHAUSTED), not the policy; what its bucket lets
//! through is served (and audited). The other identity, the dev client, sends one read every
//! `VICTIM_EVERY`, below the same limit, and each read is timed from its send.
//!
//! The vault holds each refusal for `limits.refusal_delay_ms` (its default, 50 ms) before
//! answering, so the flood's rate is bounded by its streams per delay, not by the CPU the
//! flooder can spend; the header line says the delay and the flooder's line its rate.
//!
//! Timing is reported, not checked. The scenario fails only when the flooder got an answer
//! other than OK or RESOURCE_EXHAUSTED.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pb::record_service_client::RecordServiceClient;
use pii_vault::authz::Policy;
use pii_vault::certs::DEV_CLIENT_ID;
use pii_vault::proto::v1 as pb;
use tokio::time::MissedTickBehavior;
use tonic::transport::Channel;
use tonic::Code;

use crate::drive::{outcome, Stats};
use crate::fixture::{Fixture, TENANT};
use crate::report::row;
use crate::scenario::get_request;

/// Requests per second per identity, sustained, and in a burst.
const RATE: u32 = 200;
const BURST: u32 = 200;
/// The flooder's identity, granted `read` of the field.
const FLOODER: &str = "spiffe://pii-vault.local/bench-flood";
/// The other identity's pace: 125 reads per second, below its own limit of `RATE`.
const VICTIM_EVERY: Duration = Duration::from_millis(8);

/// The size of one flood run.
#[derive(Clone, Copy, Debug)]
pub struct FloodSize {
    /// Requests the flooder sends.
    pub requests: usize,
    /// Reads the other identity times while the vault is idle.
    pub idle_calls: usize,
    /// The flood's concurrent streams (64 by default), spread over this many connections (2).
    pub streams: usize,
    pub connections: usize,
}

/// What the flooder got back.
#[derive(Default)]
struct Flooded {
    ok: u64,
    exhausted: u64,
    /// Any other answer, by gRPC code.
    other: BTreeMap<String, u64>,
    wall: Duration,
}

impl Flooded {
    fn merge(&mut self, other: Flooded) {
        self.ok += other.ok;
        self.exhausted += other.exhausted;
        for (code, n) in other.other {
            *self.other.entry(code).or_default() += n;
        }
    }

    fn others(&self) -> u64 {
        self.other.values().sum()
    }
}

/// The dev policy, plus a rule letting the flooder read the benchmark's field.
fn policy() -> String {
    format!(
        "{}\n[[rules]]\nname = \"bench-flooder-read\"\nwho = [\"uri:{FLOODER}\"]\n\
         actions = [\"read\"]\ntenants = [{TENANT:?}]\ncategories = [\"profile\"]\n\
         purposes = [\"benchmark\"]\nrender = \"reveal\"\n",
        Policy::dev_default_text(DEV_CLIENT_ID)
    )
}

/// Runs the scenario and prints its figures; returns how many of the flooder's requests got
/// an answer other than OK or RESOURCE_EXHAUSTED.
pub async fn run(size: FloodSize) -> u64 {
    let mut held = Duration::ZERO;
    let vault = Fixture::start_with(true, 1, |config| {
        held = config.abuse.refusal_delay;
        config.abuse.requests_per_second = RATE;
        config.abuse.request_burst = BURST;
        std::fs::write(&config.policy_file, policy()).expect("write the policy");
    })
    .await;
    println!();
    println!(
        "# flood: one identity sends {} GetFields over {} streams on {} connections, limited to {RATE}/s (burst {BURST}), refusals held \
         {} ms; another reads 1 field every {} ms, timed from its send",
        size.requests,
        size.streams,
        size.connections,
        held.as_millis(),
        VICTIM_EVERY.as_millis()
    );
    let victim = RecordServiceClient::new(vault.channel().await);
    let flooder = vault.issue_client("bench-flood", FLOODER);
    let mut flood_channels = Vec::new();
    for _ in 0..size.connections.max(1) {
        flood_channels.push(vault.channel_as(&flooder).await);
    }

    let idle = read_paced(victim.clone(), Until::Calls(size.idle_calls)).await;
    let done = Arc::new(AtomicBool::new(false));
    let flood = tokio::spawn(flood(flood_channels, size, done.clone()));
    let under = read_paced(victim, Until::Set(done)).await;
    let flooded = flood.await.expect("the flood");
    vault.stop().await;

    print_figures(&idle, &under, &flooded, size.requests);
    flooded.others()
}

/// When the other identity stops reading.
enum Until {
    Calls(usize),
    Set(Arc<AtomicBool>),
}

/// One read of the field every `VICTIM_EVERY`, one at a time, each timed from its send.
async fn read_paced(mut client: RecordServiceClient<Channel>, until: Until) -> Stats {
    let mut stats = Stats::new();
    let mut tick = tokio::time::interval(VICTIM_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let start = Instant::now();
    for n in 0.. {
        match &until {
            Until::Calls(calls) if n >= *calls as u64 => break,
            Until::Set(done) if done.load(Ordering::Acquire) => break,
            _ => {}
        }
        tick.tick().await;
        let t0 = Instant::now();
        let answer = client.get_fields(get_request(n, 1, 1)).await;
        stats.count(outcome(answer), t0.elapsed());
    }
    stats.elapsed = start.elapsed();
    stats
}

/// Sends `size.requests` reads from `size.streams` streams as fast as they are answered,
/// then sets `done`.
async fn flood(channels: Vec<Channel>, size: FloodSize, done: Arc<AtomicBool>) -> Flooded {
    let requests = size.requests;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let streams: Vec<_> = (0..size.streams.max(1))
        .map(|w| {
            let mut client = RecordServiceClient::new(channels[w % channels.len()].clone());
            let next = next.clone();
            tokio::spawn(async move {
                let mut got = Flooded::default();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        break got;
                    }
                    match client.get_fields(get_request(n as u64, 1, 1)).await {
                        Ok(_) => got.ok += 1,
                        Err(s) if s.code() == Code::ResourceExhausted => got.exhausted += 1,
                        Err(s) => *got.other.entry(format!("{:?}", s.code())).or_default() += 1,
                    }
                }
            })
        })
        .collect();
    let mut total = Flooded::default();
    for s in streams {
        total.merge(s.await.expect("flood stream"));
    }
    total.wall = start.elapsed();
    done.store(true, Ordering::Release);
    total
}

fn print_figures(idle: &Stats, under: &Stats, f: &Flooded, requests: usize) {
    let calls = |s: &Stats| format!("{} reads", s.ops + s.errors);
    row("flood", "other idle", Some(1), idle, &calls(idle));
    row("flood", "other flood", Some(1), under, &calls(under));
    let wall = f.wall.as_secs_f64();
    let others = if f.other.is_empty() {
        "0".to_owned()
    } else {
        format!("{:?}", f.other)
    };
    println!(
        "flooder: {requests} requests in {wall:.2} s ({:.0}/s): OK {}, RESOURCE_EXHAUSTED {}, other {others}",
        requests as f64 / wall,
        f.ok,
        f.exhausted,
    );
    let p99 = under.ms(0.99) / idle.ms(0.99);
    let p50 = under.ms(0.5) / idle.ms(0.5);
    println!(
        "ratio flood other identity under flood / idle: p50 {p50:.2}, p99 {p99:.2} \
         (idle p50 {:.2} p99 {:.2} ms; flood p50 {:.2} p99 {:.2} ms)",
        idle.ms(0.5),
        idle.ms(0.99),
        under.ms(0.5),
        under.ms(0.99)
    );
    let verdict = if p99 <= 2.0 { "reached" } else { "NOT reached" };
    println!("target flood other identity's p99 within 2x idle (report, not a test): {p99:.2}x -> {verdict}");
    if idle.errors + under.errors > 0 {
        println!(
            "the other identity's reads failed {} times idle, {} under the flood",
            idle.errors, under.errors
        );
    }
}
