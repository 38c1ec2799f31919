//! Deadlines: a request still running at the server's deadline or at the caller's answers
//! DEADLINE_EXCEEDED, and what it was doing is not left half done: a write stalled in its
//! audit append (its intent) is made, with its events, after the answer.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pii_vault::proto::v1 as pb;
use pii_vault::storage::faults::Faults;
use tonic::Code;

use crate::util::{all_audit_events, create_tenant, faulty_vault, get, text, text_of};

fn put_request(value: &str) -> pb::PutFieldsRequest {
    pb::PutFieldsRequest {
        tenant_id: "acme".into(),
        subject_id: "alice".into(),
        fields: vec![text("nick", pb::Category::Profile, value)],
        idempotency_key: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_answers_deadline_exceeded_and_finishes_whole() {
    let (vault, faults) = faulty_vault(|raw| raw.limits.request_timeout_ms = Some(400)).await;
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;
    faults.stall_millis.store(1500, Ordering::SeqCst);
    Faults::set(&faults.stall_audit, true);

    // The server's own deadline.
    let started = Instant::now();
    let late = records
        .put_fields(put_request("first"))
        .await
        .expect_err("the audit append is stalled past the deadline");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(late.message().contains("idempotency key"), "{late:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );

    // The caller's deadline, shorter than the server's.
    let mut request = tonic::Request::new(put_request("second"));
    request.set_timeout(Duration::from_millis(150));
    let started = Instant::now();
    let late = records
        .put_fields(request)
        .await
        .expect_err("past the caller's deadline");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    Faults::set(&faults.stall_audit, false);

    // Both writes went on to the end: each is stored and audited.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let fields = get(&mut records, "acme", "alice", &["nick"])
        .await
        .expect("read");
    assert_eq!(fields[0].version, 2, "both writes were done");
    // Each was made only once its intent was on disk, both after the stall: in flight at
    // the same time, either may have been made last.
    assert!(
        ["first", "second"].contains(&text_of(&fields[0])),
        "{:?}",
        text_of(&fields[0])
    );
    let puts = all_audit_events(&vault)
        .await
        .into_iter()
        .filter(|e| e.operation == "put_fields" && e.outcome == pb::Outcome::Ok as i32)
        .count();
    assert_eq!(puts, 2, "each write has its audit event");
    vault.stop().await;
}
