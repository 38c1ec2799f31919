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
