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
//! The flood runs in phases of `PHASE`, on and off in turns, until all its requests are
//! sent; the other identity reads all along. A read counts as idle only if the flood was off
//! with none of its requests in flight from the read's send to its answer; every other read
//! counts as under the flood. The idle figure is therefore taken over the same minutes as
//! the flooded one, not before it.
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
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tonic::transport::Channel;
use tonic::Code;

use crate::drive::{outcome, Stats};
use crate::fixture::{Fixture, TENANT};
use crate::report::row;
use crate::scenario::get_request;

/// Requests per second per identity, sustained, and in a burst.
const RATE: u32 = 200;
const BURST: u32 = 50;
/// The flooder's identity, granted `read` of the field.
const FLOODER: &str = "spiffe://pii-vault.local/bench-flood";
/// The other identity's pace: 125 reads per second, below its own limit of `RATE`.
const VICTIM_EVERY: Duration = Duration::from_millis(8);
/// The flood is on for one phase, then off for one, and so on: idle and flooded reads are
/// taken in turns, so the machine's own drift (it is shared) hits both alike.
const PHASE: Duration = Duration::from_secs(1);

/// The size of one flood run.
#[derive(Clone, Copy, Debug)]
pub struct FloodSize {
    /// Requests the flooder sends.
    pub requests: usize,
    /// Reads the other identity times while the flood is off, at least (it reads on after
    /// the flood until it has them).
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
         {} ms, in phases of {} ms on and off; another reads 1 field every {} ms, timed from its send",
        size.requests,
        size.streams,
        size.connections,
        held.as_millis(),
        PHASE.as_millis(),
        VICTIM_EVERY.as_millis()
    );
    let victim = RecordServiceClient::new(vault.channel().await);
    let flooder = vault.issue_client("bench-flood", FLOODER);
    let mut flood_channels = Vec::new();
    for _ in 0..size.connections.max(1) {
        flood_channels.push(vault.channel_as(&flooder).await);
    }

    let (phase, gate) = watch::channel(false);
    let phases = Phases {
        gate,
        in_flight: Arc::new(AtomicUsize::new(0)),
        done: Arc::new(AtomicBool::new(false)),
    };
    let flood = tokio::spawn(flood(
        flood_channels,
        size.requests,
        size.streams,
        phases.clone(),
    ));
    let conduct = tokio::spawn(conduct(phase, phases.done.clone()));
    let (idle, under) = read_paced(victim, &phases, size.idle_calls).await;
    let mut flooded = flood.await.expect("the flood");
    flooded.wall = conduct.await.expect("the phases");
    vault.stop().await;

    print_figures(&idle, &under, &flooded, size.requests);
    flooded.others()
}

/// How the flood is switched on and off, and what the other identity's reads look at.
#[derive(Clone)]
struct Phases {
    /// True while the flood phase is on.
    gate: watch::Receiver<bool>,
    /// The flooder's requests sent and not yet answered.
    in_flight: Arc<AtomicUsize>,
    /// Set when the flooder has sent every request.
    done: Arc<AtomicBool>,
}

impl Phases {
    /// Idle: the flood is off and none of its requests is still in flight.
    fn quiet(&self) -> bool {
        !*self.gate.borrow() && self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// Switches the flood on for `PHASE`, then off for `PHASE`, until it is done; returns how
/// long it was on.
async fn conduct(phase: watch::Sender<bool>, done: Arc<AtomicBool>) -> Duration {
    let mut flooding = Duration::ZERO;
    while !done.load(Ordering::Acquire) {
        tokio::time::sleep(PHASE).await;
        let on = Instant::now();
        phase.send_replace(true);
        while on.elapsed() < PHASE && !done.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        phase.send_replace(false);
        flooding += on.elapsed();
    }
    flooding
}

/// One read of the field every `VICTIM_EVERY`, one at a time, each timed from its send and
/// counted as idle when the flood was quiet from its send to its answer, else as under the
/// flood. Reads until the flood is done and at least `idle_calls` idle reads are counted.
async fn read_paced(
    mut client: RecordServiceClient<Channel>, phases: &Phases, idle_calls: usize,
) -> (Stats, Stats) {
    let (mut idle, mut under) = (Stats::new(), Stats::new());
    let mut tick = tokio::time::interval(VICTIM_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let start = Instant::now();
    for n in 0.. {
        let idle_reads = (idle.ops + idle.errors) as usize;
        if phases.done.load(Ordering::Acquire) && idle_reads >= idle_calls {
            break;
        }
        tick.tick().await;
        let quiet = phases.quiet();
        let t0 = Instant::now();
        let answer = client.get_fields(get_request(n, 1, 1)).await;
        let took = t0.elapsed();
        if quiet && phases.quiet() {
            idle.count(outcome(answer), took);
        } else {
            under.count(outcome(answer), took);
        }
    }
    idle.elapsed = start.elapsed();
    under.elapsed = idle.elapsed;
    (idle, under)
}

/// Sends `requests` reads from `streams` streams as fast as they are answered while the
/// flood phase is on, then sets `phases.done`.
async fn flood(channels: Vec<Channel>, requests: usize, streams: usize, phases: Phases) -> Flooded {
    let next = Arc::new(AtomicUsize::new(0));
    let streams: Vec<_> = (0..streams.max(1))
        .map(|w| {
            let mut client = RecordServiceClient::new(channels[w % channels.len()].clone());
            let next = next.clone();
            let mut phases = phases.clone();
            tokio::spawn(async move {
                let mut got = Flooded::default();
                loop {
                    if phases.gate.wait_for(|on| *on).await.is_err() {
                        break got;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        break got;
                    }
                    phases.in_flight.fetch_add(1, Ordering::AcqRel);
                    let answer = client.get_fields(get_request(n as u64, 1, 1)).await;
                    phases.in_flight.fetch_sub(1, Ordering::AcqRel);
                    match answer {
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
    phases.done.store(true, Ordering::Release);
    total
}

fn print_figures(idle: &Stats, under: &Stats, f: &Flooded, requests: usize) {
    let calls = |s: &Stats| format!("{} reads", s.ops + s.errors);
    row("flood", "other idle", Some(1), idle, &calls(idle));
    row("flood", "other flood", Some(1), under, &calls(under));
    // The flood's own time: its phases on.
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
