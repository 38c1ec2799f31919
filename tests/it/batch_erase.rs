//! EraseSubjects: many erasures over one stream, each as EraseSubject would do it (its own
//! audit event, its receipt), failures reported per item without stopping the others.

use std::collections::BTreeSet;

use pb::erase_subjects_response::Result as Outcome;
use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use crate::util::{all_audit_events, create_tenant, get, put, text, TestVault};

fn requests(tenant: &str, subjects: &[String]) -> Vec<pb::EraseSubjectsRequest> {
    subjects
        .iter()
        .map(|s| pb::EraseSubjectsRequest {
            tenant_id: tenant.into(),
            subject_id: s.clone(),
        })
        .collect()
}

/// Every response of one EraseSubjects stream, by request index.
async fn erase_all(c: &Channel, reqs: Vec<pb::EraseSubjectsRequest>) -> Vec<Outcome> {
    let n = reqs.len();
    let mut stream = pb::subject_rights_service_client::SubjectRightsServiceClient::new(c.clone())
        .erase_subjects(tokio_stream::iter(reqs))
        .await
        .expect("stream")
        .into_inner();
    let mut by_index: Vec<Option<Outcome>> = vec![None; n];
    while let Some(r) = stream.message().await.expect("response") {
        let i = usize::try_from(r.index).expect("index");
        assert!(by_index[i].is_none(), "index {i} answered twice");
        by_index[i] = r.result;
    }
    by_index
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| panic!("request {i} got no answer")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subjects_erased_in_one_stream_each_with_its_receipt() {
    const N: usize = 10_000;
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let subjects: Vec<String> = (0..N).map(|i| format!("user-{i:05}")).collect();
    let mut writers = Vec::new();
    for part in subjects.chunks(N / 8) {
        let (channel, part) = (vault.channel().await, part.to_vec());
        writers.push(tokio::spawn(async move {
            let mut records = pb::record_service_client::RecordServiceClient::new(channel);
            for s in part {
                put(
                    &mut records,
                    "acme",
                    &s,
                    vec![text("email", pb::Category::Account, "x@example.com")],
                )
                .await
                .expect("put");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }

    let results = erase_all(&vault.channel().await, requests("acme", &subjects)).await;
    let mut receipts = BTreeSet::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Outcome::Receipt(receipt) => {
                assert_eq!(receipt.subject_id, subjects[i]);
                assert!(!receipt.already_erased);
                receipts.insert(receipt.receipt_id.clone());
            }
            Outcome::Error(e) => panic!("{}: {e:?}", subjects[i]),
        }
    }
    assert_eq!(receipts.len(), N, "one receipt each, all distinct");

    let mut readers = Vec::new();
    for part in subjects.chunks(N / 8) {
        let (channel, part) = (vault.channel().await, part.to_vec());
        readers.push(tokio::spawn(async move {
            let mut records = pb::record_service_client::RecordServiceClient::new(channel);
            for s in part {
                let err = get(&mut records, "acme", &s, &[])
                    .await
                    .expect_err("erased");
                assert_eq!(err.code(), Code::NotFound, "{s}: {err:?}");
                assert!(err.message().contains("erased"), "{s}: {err:?}");
            }
        }));
    }
    for r in readers {
        r.await.expect("reader");
    }
    let erasures = all_audit_events(&vault)
        .await
        .into_iter()
        .filter(|e| e.operation == "erase_subject" && e.outcome == pb::Outcome::Ok as i32)
        .count();
    assert_eq!(erasures, N, "one audit event per subject");
    vault.stop().await;
}

#[tokio::test]
async fn a_failed_item_is_reported_and_the_others_are_erased() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;
    for s in ["a", "c"] {
        put(
            &mut records,
            "acme",
            s,
            vec![text("n", pb::Category::Account, "x")],
        )
        .await
        .expect("put");
    }
    let subjects: Vec<String> = ["a", "never-held", "c", "bad\nid", "a"]
        .map(str::to_owned)
        .to_vec();
    let mut reqs = requests("acme", &subjects);
    reqs.push(pb::EraseSubjectsRequest {
        tenant_id: "nope".into(),
        subject_id: "a".into(),
    });
    let results = erase_all(&vault.channel().await, reqs).await;
    let reason = |r: &Outcome| match r {
        Outcome::Error(e) => (Code::from_i32(e.code), e.reason.clone()),
        Outcome::Receipt(_) => (Code::Ok, String::new()),
    };
    assert!(matches!(&results[0], Outcome::Receipt(r) if !r.already_erased));
    assert_eq!(
        reason(&results[1]),
        (Code::NotFound, "SUBJECT_NOT_FOUND".into())
    );
    assert!(matches!(&results[2], Outcome::Receipt(_)));
    assert_eq!(
        reason(&results[3]),
        (Code::InvalidArgument, "INVALID_INPUT".into())
    );
    if let Outcome::Error(e) = &results[3] {
        assert!(
            !e.message.contains("bad\nid"),
            "the id is not echoed: {e:?}"
        );
    }
    // Erasing twice in one stream is as idempotent as two calls: the first receipt again
    // (whichever of the two ran first).
    let ids: BTreeSet<_> = [&results[0], &results[4]]
        .iter()
        .map(|r| match r {
            Outcome::Receipt(r) => r.receipt_id.clone(),
            Outcome::Error(e) => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert_eq!(
        reason(&results[5]),
        (Code::NotFound, "TENANT_NOT_FOUND".into())
    );
    for s in ["a", "c"] {
        get(&mut records, "acme", s, &[]).await.expect_err("erased");
    }
    vault.stop().await;
}
