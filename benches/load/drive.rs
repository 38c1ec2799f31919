//! Driving load: N concurrent streams in a closed loop (peak throughput), latencies in an
//! HDR histogram.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pb::record_service_client::RecordServiceClient;
use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;

use crate::fixture::{field_input, FIELDS_PER_SUBJECT};

/// What one request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// `GetFields` of one 256-byte field.
    Get1,
    /// `GetFields` of ten 256-byte fields.
    Get10,
    /// `PutFields` of one field.
    Put1,
    /// `PutFields` of ten fields.
    Put10,
    /// 90% `Get1`, 10% `Put1`.
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Get1 => "get1",
            Scenario::Get10 => "get10",
            Scenario::Put1 => "put1",
            Scenario::Put10 => "put10",
            Scenario::Mixed => "mixed90/10",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Scenario::Get1,
            Scenario::Get10,
            Scenario::Put1,
            Scenario::Put10,
            Scenario::Mixed,
        ]
        .into_iter()
        .find(|sc| sc.name().starts_with(s))
    }
}

/// Results of one run.
pub struct Stats {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl Stats {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    pub fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

async fn one(
    client: &mut RecordServiceClient<Channel>,
    scenario: Scenario,
    n: u64,
    subjects: usize,
) -> bool {
    let subject = format!("s{}", n as usize % subjects);
    let get = |names: Vec<String>| pb::GetFieldsRequest {
        tenant_id: "bench".into(),
        subject_id: subject.clone(),
        field_names: names,
        purpose: "benchmark".into(),
    };
    let put = |count: usize| pb::PutFieldsRequest {
        tenant_id: "bench".into(),
        subject_id: subject.clone(),
        fields: (0..count)
            .map(|f| field_input(&format!("f{f}"), n as usize))
            .collect(),
    };
    let result = match scenario {
        Scenario::Get1 => client.get_fields(get(vec!["f0".into()])).await.map(drop),
        Scenario::Get10 => client
            .get_fields(get((0..FIELDS_PER_SUBJECT)
                .map(|f| format!("f{f}"))
                .collect()))
            .await
            .map(drop),
        Scenario::Put1 => client.put_fields(put(1)).await.map(drop),
        Scenario::Put10 => client.put_fields(put(10)).await.map(drop),
        Scenario::Mixed if n.is_multiple_of(10) => client.put_fields(put(1)).await.map(drop),
        Scenario::Mixed => client.get_fields(get(vec!["f0".into()])).await.map(drop),
    };
    result.is_ok()
}

/// Runs `concurrency` streams back to back for `duration`.
pub async fn closed_loop(
    channels: &[Channel],
    scenario: Scenario,
    concurrency: usize,
    duration: Duration,
    subjects: usize,
) -> Stats {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let mut client = RecordServiceClient::new(channels[w % channels.len()].clone());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let (mut ops, mut errors, mut n) = (0u64, 0u64, w as u64 * 7919);
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    if one(&mut client, scenario, n, subjects).await {
                        ops += 1;
                        let _ = hist.record(t0.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                    n += 1;
                }
                (ops, errors, hist)
            })
        })
        .collect();
    let mut stats = Stats {
        ops: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: Histogram::new(3).expect("histogram"),
    };
    for t in tasks {
        let (ops, errors, hist) = t.await.expect("worker");
        stats.ops += ops;
        stats.errors += errors;
        stats.latency_us.add(hist).expect("merge");
    }
    stats.elapsed = start.elapsed();
    stats
}
