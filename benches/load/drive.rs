//! Driving load against any target (a vault scenario, the echo baseline, the storage floor):
//! N streams in a closed loop for peak throughput, or requests sent on a fixed schedule for
//! latency at a given rate. Latencies go into HDR histograms, in microseconds.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    /// The target has no work left (a finite pool, such as subjects to erase).
    Exhausted,
}

/// What the first failed request of the process answered (its gRPC code only: messages are
/// not printed; for the PostgreSQL peer, its SQLSTATE), so a failed smoke run says why.
static FIRST_FAILURE: OnceLock<String> = OnceLock::new();

pub fn first_failure() -> Option<&'static String> {
    FIRST_FAILURE.get()
}

/// The outcome of a gRPC call.
pub fn outcome<T>(result: Result<T, tonic::Status>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(status) => {
            let _ = FIRST_FAILURE.set(format!("{:?}", status.code()));
            Outcome::Failed
        }
    }
}

/// A failed request that was not a gRPC call (the PostgreSQL peer's): `why` is kept as the
/// first failure if none was yet. It must name no value and no key.
pub fn failed(why: String) -> Outcome {
    let _ = FIRST_FAILURE.set(why);
    Outcome::Failed
}

/// Something requests are sent to. Request `n` decides which subject it touches, so runs
/// spread over the preloaded data the same way whatever the target.
pub trait Target: Clone + Send + 'static {
    fn call(&mut self, n: u64) -> impl Future<Output = Outcome> + Send;
}

/// Results of one run.
pub struct Stats {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            ops: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency_us: histogram(),
        }
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    pub fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Counts one request: its latency if it succeeded.
    pub fn count(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Ok => {
                self.ops += 1;
                // An auto-resizing histogram takes any value.
                let _ = self.latency_us.record(latency.as_micros() as u64);
            }
            Outcome::Failed => self.errors += 1,
            Outcome::Exhausted => {}
        }
    }

    /// Adds another run (or one stream's share of this run) to this one.
    pub fn merge(&mut self, other: Stats) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        let _ = self.latency_us.add(other.latency_us);
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("histogram with 3 significant digits")
}

/// Runs one stream per target, each sending its next request as soon as the previous one
/// answered, for `duration` (or until the targets are exhausted).
pub async fn closed_loop<T: Target>(targets: Vec<T>, duration: Duration) -> Stats {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = targets
        .into_iter()
        .enumerate()
        .map(|(w, mut target)| {
            tokio::spawn(async move {
                let mut stats = Stats::new();
                // Streams start far apart in the request numbers, so on different subjects.
                let mut n = w as u64 * 7919;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let outcome = target.call(n).await;
                    if outcome == Outcome::Exhausted {
                        break;
                    }
                    stats.count(outcome, t0.elapsed());
                    n += 1;
                }
                stats
            })
        })
        .collect();
    let mut stats = Stats::new();
    for t in tasks {
        stats.merge(t.await.expect("load stream"));
    }
    stats.elapsed = start.elapsed();
    stats
}

/// Sends `rate` requests per second for `duration`, round-robin over `targets`, each on its
/// own task however many are still in flight (open loop).
///
/// A request's latency runs from the time it was scheduled, not from the time it was sent,
/// so a server that stalls is charged for every request it held back (no coordinated
/// omission). The schedule is kept by a blocking thread with the OS's sleep, whose slack is
/// tens of microseconds; tokio's timer rounds up to whole milliseconds, which would add up
/// to a millisecond to every latency.
pub async fn fixed_rate<T: Target>(targets: Vec<T>, rate: f64, duration: Duration) -> Paced {
    let total = (rate * duration.as_secs_f64()) as u64;
    let pacer = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Handle::current();
        let start = Instant::now();
        let mut in_flight = Vec::with_capacity(total as usize);
        let mut late_us = histogram();
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let _ = late_us.record(due.elapsed().as_micros() as u64);
            let mut target = targets[i as usize % targets.len()].clone();
            in_flight.push(runtime.spawn(async move {
                let outcome = target.call(i).await;
                (outcome, due.elapsed())
            }));
        }
        (start, in_flight, late_us)
    });
    let (start, in_flight, late_us) = pacer.await.expect("pacer thread");
    let mut stats = Stats::new();
    for request in in_flight {
        let (outcome, latency) = request.await.expect("request task");
        stats.count(outcome, latency);
    }
    stats.elapsed = start.elapsed();
    Paced { stats, late_us }
}

/// A fixed-rate run.
pub struct Paced {
    pub stats: Stats,
    /// How late each request left against its schedule (the pacer thread starved of CPU,
    /// or still catching up): part of every latency above, charged to the machine.
    pub late_us: Histogram<u64>,
}
