//! BatchPutFields and BatchGetFields: each item handled as its own PutFields or GetFields
//! would be (authorized, audited, atomic for its subject), failures per item.

use pb::batch_get_fields_response::Result as Read;
use pb::batch_put_fields_response::Result as Written;
use pii_vault::proto::v1 as pb;
use tonic::Code;

use crate::util::{all_audit_events, create_tenant, text, TestVault};

fn put_item(subject: &str, field: pb::FieldInput) -> pb::BatchPutFieldsRequest {
    pb::BatchPutFieldsRequest {
        put: Some(pb::PutFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: subject.into(),
            fields: vec![field],
            idempotency_key: String::new(),
        }),
    }
}

fn get_item(subject: &str, purpose: &str) -> pb::BatchGetFieldsRequest {
    pb::BatchGetFieldsRequest {
        get: Some(pb::GetFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: subject.into(),
            field_names: vec![],
            purpose: purpose.into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_writes_and_reads_answer_each_item_as_its_own_call_would() {
    const N: usize = 200;
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;

    let mut items: Vec<pb::BatchPutFieldsRequest> = (0..N)
        .map(|i| {
            put_item(
                &format!("s{i:03}"),
                text("name", pb::Category::Account, "x"),
            )
        })
        .collect();
    // Item N: a value that is not an email; item N+1: a version the field does not have.
    let mut bad = text("email", pb::Category::Account, "");
    bad.value = Some(pb::Value {
        kind: Some(pb::value::Kind::Email("not-an-email".into())),
    });
    items.push(put_item("s000", bad));
    let mut stale = text("name", pb::Category::Account, "y");
    stale.expected_version = Some(5);
    items.push(put_item("s001", stale));
    let mut written = vec![None; N + 2];
    let mut stream = records
        .batch_put_fields(tokio_stream::iter(items))
        .await
        .expect("stream")
        .into_inner();
    while let Some(r) = stream.message().await.expect("item") {
        let i = usize::try_from(r.index).expect("index");
        assert!(written[i].is_none(), "item {i} answered twice");
        written[i] = r.result;
    }
    for (i, w) in written.iter().enumerate().take(N) {
        match w {
            Some(Written::Written(w)) => assert_eq!(w.fields[0].version, 1, "item {i}"),
            other => panic!("item {i}: {other:?}"),
        }
    }
    let failed = |w: &Option<Written>| match w {
        Some(Written::Error(e)) => (Code::from_i32(e.code), e.reason.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        failed(&written[N]),
        (Code::InvalidArgument, "INVALID_INPUT".into())
    );
    assert_eq!(
        failed(&written[N + 1]),
        (Code::Aborted, "VERSION_MISMATCH".into())
    );

    let mut reads: Vec<pb::BatchGetFieldsRequest> = (0..N)
        .map(|i| get_item(&format!("s{i:03}"), "support"))
        .collect();
    reads.push(get_item("nobody", "support"));
    reads.push(get_item("s000", "marketing"));
    let mut read = vec![None; N + 2];
    let mut stream = records
        .batch_get_fields(tokio_stream::iter(reads))
        .await
        .expect("stream")
        .into_inner();
    while let Some(r) = stream.message().await.expect("item") {
        read[usize::try_from(r.index).expect("index")] = r.result;
    }
    for (i, r) in read.iter().enumerate().take(N) {
        match r {
            Some(Read::Read(r)) => {
                assert_eq!(
                    r.fields.len(),
                    1,
                    "item {i}: the failed items wrote nothing"
                );
                assert_eq!(r.fields[0].version, 1, "item {i}");
            }
            other => panic!("item {i}: {other:?}"),
        }
    }
    let refused = |r: &Option<Read>| match r {
        Some(Read::Error(e)) => (Code::from_i32(e.code), e.reason.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused(&read[N]),
        (Code::NotFound, "SUBJECT_NOT_FOUND".into())
    );
    assert_eq!(
        refused(&read[N + 1]),
        (Code::FailedPrecondition, "CONSENT_WITHDRAWN".into())
    );

    let events = all_audit_events(&vault).await;
    let count = |op: &str, outcome: pb::Outcome| {
        events
            .iter()
            .filter(|e| e.operation == op && e.outcome == outcome as i32)
            .count()
    };
    assert_eq!(
        count("put_fields", pb::Outcome::Ok),
        N,
        "one event per write"
    );
    assert_eq!(
        count("get_fields", pb::Outcome::Ok),
        N,
        "one event per read"
    );
    assert_eq!(count("put_fields", pb::Outcome::Invalid), 1);
    vault.stop().await;
}
