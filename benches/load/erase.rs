//! EraseSubject latency for a subject with 1 field against one with 10,000 fields, in the
//! same run: erasure deletes one key and writes one tombstone, so it should not grow with the
//! number of fields (the ciphertexts are purged in the background).

use std::time::{Duration, Instant};

use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;

use crate::fixture::{field_input, TENANT};

async fn seed(channel: &Channel, subject: &str, fields: usize) {
    let mut client = pb::record_service_client::RecordServiceClient::new(channel.clone());
    for chunk in (0..fields).collect::<Vec<_>>().chunks(1000) {
        client
            .put_fields(pb::PutFieldsRequest {
                tenant_id: TENANT.into(),
                subject_id: subject.into(),
                fields: chunk
                    .iter()
                    .map(|i| field_input(&format!("f{i}"), *i))
                    .collect(),
                idempotency_key: String::new(),
            })
            .await
            .expect("seed");
    }
}

async fn erase(channel: &Channel, subject: &str) -> Duration {
    let mut client =
        pb::subject_rights_service_client::SubjectRightsServiceClient::new(channel.clone());
    let t0 = Instant::now();
    client
        .erase_subject(pb::EraseSubjectRequest {
            tenant_id: TENANT.into(),
            subject_id: subject.into(),
        })
        .await
        .expect("erase");
    t0.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Erases `rounds` subjects of each size, interleaved, and prints the median latencies.
pub async fn compare(channel: &Channel, rounds: usize, big: usize) -> (Duration, Duration) {
    let (mut small_t, mut big_t) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let (small, large) = (format!("erase-small-{r}"), format!("erase-big-{r}"));
        seed(channel, &small, 1).await;
        seed(channel, &large, big).await;
        small_t.push(erase(channel, &small).await);
        big_t.push(erase(channel, &large).await);
    }
    let (s, b) = (median(small_t), median(big_t));
    println!(
        "erase        1 field: {:>7.2} ms   {big} fields: {:>7.2} ms   ratio {:.2} (median of {rounds})",
        s.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        b.as_secs_f64() / s.as_secs_f64()
    );
    (s, b)
}

/// Subjects of one field each, `prefix0` .. `prefix{n-1}`, written over 8 streams.
async fn seed_many(channel: &Channel, prefix: &str, n: usize) {
    let mut writers = Vec::new();
    for w in 0..8 {
        let (channel, prefix) = (channel.clone(), prefix.to_owned());
        writers.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                seed(&channel, &format!("{prefix}{i}"), 1).await;
            }
        }));
    }
    for w in writers {
        w.await.expect("seed");
    }
}

/// Erases `ids` with one EraseSubject call each, one after the other (what `pii-vault
/// erase` did before EraseSubjects).
async fn one_call_each(channel: &Channel, ids: &[String]) -> Duration {
    let t0 = Instant::now();
    for id in ids {
        erase(channel, id).await;
    }
    t0.elapsed()
}

/// Erases `ids` over one EraseSubjects stream; every item must come back with a receipt.
async fn one_stream(channel: &Channel, ids: &[String]) -> Duration {
    let mut client =
        pb::subject_rights_service_client::SubjectRightsServiceClient::new(channel.clone());
    let requests: Vec<pb::EraseSubjectsRequest> = ids
        .iter()
        .map(|s| pb::EraseSubjectsRequest {
            tenant_id: TENANT.into(),
            subject_id: s.clone(),
        })
        .collect();
    let t0 = Instant::now();
    let mut results = client
        .erase_subjects(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let mut receipts = 0;
    while let Some(r) = results.message().await.expect("result") {
        match r.result {
            Some(pb::erase_subjects_response::Result::Receipt(_)) => receipts += 1,
            other => panic!("erasure failed: {other:?}"),
        }
    }
    assert_eq!(receipts, ids.len());
    t0.elapsed()
}

/// `n` erasures by EraseSubjects against `n` by one call each, in blocks of at most 1,000
/// that alternate which goes first (so drift on a shared machine falls on both); returns
/// (one call each, batch) in total.
pub async fn batch_vs_single(channel: &Channel, n: usize) -> (Duration, Duration) {
    seed_many(channel, "single-", n).await;
    seed_many(channel, "batch-", n).await;
    let ids = |prefix: &str| (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>();
    let (single_ids, batch_ids) = (ids("single-"), ids("batch-"));
    let (mut single, mut batch) = (Duration::ZERO, Duration::ZERO);
    for (block, (s, b)) in single_ids
        .chunks(1000)
        .zip(batch_ids.chunks(1000))
        .enumerate()
    {
        if block % 2 == 0 {
            single += one_call_each(channel, s).await;
            batch += one_stream(channel, b).await;
        } else {
            batch += one_stream(channel, b).await;
            single += one_call_each(channel, s).await;
        }
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "erase {n} subjects: one call each {:>7.2} s ({:>6.0}/s)   EraseSubjects {:>7.2} s ({:>6.0}/s)   batch {:.1}x faster",
        single.as_secs_f64(),
        rate(single),
        batch.as_secs_f64(),
        rate(batch),
        single.as_secs_f64() / batch.as_secs_f64()
    );
    (single, batch)
}
