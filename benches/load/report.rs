//! Printing: one table row per run, and the summary of the targets at the end.

use crate::drive::Stats;

pub fn header() {
    println!(
        "{:<14} {:<12} {:>5} {:>10} {:>8} {:>8} {:>8} {:>7}  note",
        "scenario", "against", "conc", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
}

/// One run; `conc` is `None` for an open-loop (fixed-rate) run.
pub fn row(scenario: &str, against: &str, conc: Option<usize>, s: &Stats, note: &str) {
    let conc = conc.map_or_else(|| "open".to_owned(), |c| c.to_string());
    println!(
        "{scenario:<14} {against:<12} {conc:>5} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>7}  {note}",
        s.ops_per_sec(),
        s.ms(0.5),
        s.ms(0.99),
        s.ms(0.999),
        s.errors
    );
}

/// Results the summary compares with the targets.
#[derive(Default)]
pub struct Summary {
    /// (scenario, concurrency, vault ops/s ÷ baseline ops/s, baseline name).
    pub baseline_ratios: Vec<(&'static str, usize, f64, &'static str)>,
    /// (scenario, concurrency, vault ops/s ÷ P's, the pgcrypto peer).
    pub peer_ratios: Vec<(&'static str, usize, f64)>,
    /// (scenario, concurrency, audited ÷ unaudited).
    pub audit_ratios: Vec<(&'static str, usize, f64)>,
    /// (scenario, share of peak, p50 ms, p99 ms, p99.9 ms).
    pub fixed_rate: Vec<(&'static str, u32, f64, f64, f64)>,
    /// (fields of the big subject, its erase latency ÷ that of a 1-field subject).
    pub erase_ratio: Option<(usize, f64)>,
    /// Erasures compared, and how many times faster EraseSubjects was than one call each.
    pub erase_batch: Option<(usize, f64)>,
    /// B3: (probe, p50 ms, p99 ms).
    pub fsync_ms: Vec<(&'static str, f64, f64)>,
}

/// The row of `scenario` run at the most streams (what a target is checked at); `key` gives
/// a row's scenario and concurrency.
fn most_streams<'a, T>(
    rows: &'a [T], scenario: &str, key: impl Fn(&T) -> (&str, usize),
) -> Option<&'a T> {
    rows.iter()
        .filter(|row| key(row).0 == scenario)
        .max_by_key(|row| key(row).1)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "reached"
    } else {
        "NOT reached"
    }
}

impl Summary {
    pub fn print(&self) {
        println!();
        println!("# throughput ratios, same run, same concurrency");
        for (scenario, c, r, base) in &self.baseline_ratios {
            println!("ratio {scenario:<12} conc {c:>3}: vault / {base:<8} {r:.2}");
        }
        for (scenario, c, r) in &self.peer_ratios {
            println!(
                "ratio {scenario:<12} conc {c:>3}: vault / {:<8} {r:.2}",
                "P"
            );
        }
        for (scenario, c, r) in &self.audit_ratios {
            println!("ratio {scenario:<12} conc {c:>3}: audited / unaudited {r:.2}");
        }
        println!();
        println!("# targets of issues 7 and 17 (a report, not a test)");
        // Issue 7 asked 50% of the baseline for all four; issue 17 raised the writes'.
        for (scenario, base, target) in [
            ("get1", "B1", 0.5),
            ("get10", "B1", 0.5),
            ("put1", "B2", 0.8),
            ("put10", "B2", 0.6),
        ] {
            if let Some((_, c, r, _)) =
                most_streams(&self.baseline_ratios, scenario, |(s, c, ..)| (s, *c))
            {
                println!(
                    "target {scenario:<6} >= {:.0}% of {base} at conc {c}: {:.0}% -> {}",
                    target * 100.0,
                    r * 100.0,
                    verdict(*r >= target)
                );
            }
        }
        for scenario in ["get1", "get10"] {
            if let Some((_, c, r)) = most_streams(&self.audit_ratios, scenario, |(s, c, _)| (s, *c))
            {
                println!(
                    "target {scenario:<6} audited >= 85% of unaudited at conc {c}: {:.0}% -> {}",
                    r * 100.0,
                    verdict(*r >= 0.85)
                );
            }
        }
        for (scenario, share, _, p99, _) in &self.fixed_rate {
            if *share == 50 && ["get1", "get10", "put1", "put10"].contains(scenario) {
                println!(
                    "target {scenario:<6} p99 at 50% of peak <= 5 ms: {p99:.2} ms -> {}",
                    verdict(*p99 <= 5.0)
                );
            }
        }
        if let Some((big, r)) = self.erase_ratio {
            println!(
                "target erase of {big} fields within 2x of 1 field: {r:.2}x -> {}",
                verdict(r <= 2.0)
            );
        }
        if let Some((n, r)) = self.erase_batch {
            println!("erase  {n} subjects by EraseSubjects: {r:.1}x the rate of one call each");
        }
        for (what, p50, p99) in &self.fsync_ms {
            println!("floor  B3 {what}: p50 {p50:.2} ms, p99 {p99:.2} ms");
        }
    }
}
