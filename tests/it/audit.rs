//! The audit log: one event per request, no values, tamper evidence, fail closed, pruning.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pii_vault::audit::{AuditFilter, Operation, Outcome};
use pii_vault::certs::DEV_CLIENT_ID;
use pii_vault::domain::{Category, FieldName, FieldValue, NewField, Purpose, SubjectId, TenantId};
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::proto::v1 as pb;
use pii_vault::service::verify_store;
use pii_vault::storage::faults::Faults;
use pii_vault::storage::{SegmentLog, SledStore, Store, DEFAULT_SEGMENT_BYTES};
use prost::Message;
use tonic::Code;

use crate::util::{
    audit_events, by_operation, bytes_occur_below, clocked_vault, create_tenant, faulty_vault, get,
    put, text, TestVault,
};

async fn query(vault: &TestVault, req: pb::QueryAuditLogRequest) -> Vec<pb::AuditEvent> {
    audit_events(&vault.channel().await, req).await
}

#[tokio::test]
async fn every_read_produces_exactly_one_event_with_caller_fields_and_purpose() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "u1",
        vec![
            text("email", pb::Category::Account, "a@example.com"),
            text("card", pb::Category::Payment, "4111"),
        ],
    )
    .await
    .expect("put");

    let mut req = tonic::Request::new(pb::GetFieldsRequest {
        tenant_id: "acme".into(),
        subject_id: "u1".into(),
        field_names: vec!["email".into()],
        purpose: "billing".into(),
    });
    req.metadata_mut()
        .insert("x-request-id", "req-audit-1".parse().expect("ascii"));
    let resp = client.get_fields(req).await.expect("read");
    assert_eq!(
        resp.metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-audit-1")
    );
    get(&mut client, "acme", "u1", &[]).await.expect("read all");
    get(&mut client, "acme", "ghost", &[])
        .await
        .expect_err("not found");
    client
        .get_fields(pb::GetFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: "u1".into(),
            field_names: vec![],
            purpose: "NOT A PURPOSE".into(),
        })
        .await
        .expect_err("invalid");

    let events = query(&vault, by_operation("get_fields")).await;
    assert_eq!(events.len(), 4, "{events:#?}");
    for e in &events {
        assert_eq!(
            e.caller,
            format!("uri:{DEV_CLIENT_ID}"),
            "callers are typed"
        );
        assert_eq!(e.operation, "get_fields");
    }
    let (one, all, missing, invalid) = (&events[0], &events[1], &events[2], &events[3]);
    assert_eq!(one.request_id, "req-audit-1");
    assert_eq!(
        (one.tenant_id.as_str(), one.subject_id.as_str()),
        ("acme", "u1")
    );
    assert_eq!(one.field_names, ["email"]);
    assert_eq!(one.purpose, "billing");
    assert_eq!(one.outcome, pb::Outcome::Ok as i32);
    assert_eq!(all.field_names, ["card", "email"]);
    assert_eq!(all.purpose, "support");
    assert_eq!(missing.outcome, pb::Outcome::NotFound as i32);
    assert_eq!(missing.subject_id, "ghost");
    assert_eq!(invalid.outcome, pb::Outcome::Invalid as i32);
    assert!(
        invalid.tenant_id.is_empty(),
        "a malformed request records no ids"
    );
    // Sequence numbers are consecutive over all events, and every event links to the last.
    let everything = query(&vault, pb::QueryAuditLogRequest::default()).await;
    for pair in everything.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
        assert_eq!(pair[1].prev_mac, pair[0].mac);
    }
    // Reading the log is audited too.
    assert!(!query(&vault, by_operation("query_audit")).await.is_empty());
}

#[tokio::test]
async fn the_query_filters_and_resumes_from_a_cursor() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    for i in 0..30 {
        put(
            &mut client,
            "acme",
            &format!("s{}", i % 3),
            vec![text("n", pb::Category::Usage, "x")],
        )
        .await
        .expect("put");
    }
    let s1 = pb::QueryAuditLogRequest {
        subject_id: "s1".into(),
        operation: "put_fields".into(),
        ..Default::default()
    };
    let all = query(&vault, s1.clone()).await;
    // Each put is two events: its intent, then how it ended.
    assert_eq!(all.len(), 20);
    assert_eq!(
        all.iter()
            .filter(|e| e.outcome == pb::Outcome::Intent as i32)
            .count(),
        10
    );
    let first = query(
        &vault,
        pb::QueryAuditLogRequest {
            limit: 4,
            ..s1.clone()
        },
    )
    .await;
    assert_eq!(first.len(), 4);
    let rest = query(
        &vault,
        pb::QueryAuditLogRequest {
            after_seq: first[3].seq,
            ..s1
        },
    )
    .await;
    let seqs: Vec<u64> = first.iter().chain(&rest).map(|e| e.seq).collect();
    assert_eq!(seqs, all.iter().map(|e| e.seq).collect::<Vec<_>>());
    let until_past = query(
        &vault,
        pb::QueryAuditLogRequest {
            until: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;
    assert!(until_past.is_empty());
}

#[tokio::test]
async fn audit_events_and_the_sink_never_contain_a_value() {
    let sink_dir = tempfile::TempDir::new().expect("dir");
    let sink = sink_dir.path().join("audit.jsonl");
    let sink_path = sink.clone();
    let vault = TestVault::start_with(move |raw| raw.audit.jsonl_path = Some(sink_path)).await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    let secret = "Xq7-planted-value-5e1@example.invalid";
    put(
        &mut client,
        "acme",
        "u",
        vec![text("marker_field_3c9", pb::Category::Account, secret)],
    )
    .await
    .expect("put");
    let got = get(&mut client, "acme", "u", &[]).await.expect("read");
    assert_eq!(crate::util::text_of(&got[0]), secret);
    let events = query(&vault, pb::QueryAuditLogRequest::default()).await;
    let wire: Vec<u8> = events.iter().flat_map(|e| e.encode_to_vec()).collect();
    assert!(!wire.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let dir = vault.stop().await;

    let sink_text = std::fs::read_to_string(&sink).expect("sink written");
    assert!(
        sink_text.contains("marker_field_3c9"),
        "the sink mirrors events"
    );
    assert!(!sink_text.contains(secret), "the sink holds a value");
    assert_eq!(
        sink_text.lines().count(),
        events.len() + 1,
        "one line per event (+ the query's own)"
    );
    let store = SledStore::open(&dir.path().join("store"), 1 << 20).expect("open");
    let raw: Vec<u8> = store
        .audit_scan(0, usize::MAX)
        .expect("scan")
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    assert!(
        raw.windows(16).any(|w| w == &b"marker_field_3c9"[..16]),
        "raw audit bytes scanned"
    );
    assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
    drop(store);
    assert!(!bytes_occur_below(dir.path(), secret.as_bytes()));
}

/// Opens a stopped vault's store and checks its chain, as `pii-vault audit verify` does.
fn verify_dir(dir: &std::path::Path) -> pii_vault::audit::VerifyReport {
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&dir.join("store"), 1 << 20).expect("open"));
    let root = RootKeys::load(&dir.join("root.key")).expect("root key");
    let keys = Keyring::open(root, store.clone()).expect("keyring");
    verify_store(store.as_ref(), &keys.audit_key().expect("audit key")).expect("verify")
}

/// The audit log's segment files of a stopped vault.
fn audit_dir(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("store").join("audit")
}

/// Every event of a stopped vault's audit log, by sequence number, and its head record.
fn raw_events(dir: &std::path::Path) -> (BTreeMap<u64, Vec<u8>>, Vec<u8>) {
    let log = SegmentLog::open(&audit_dir(dir), DEFAULT_SEGMENT_BYTES).expect("audit log");
    let events = log.scan(0, usize::MAX).expect("scan").into_iter().collect();
    (events, log.marks().head.expect("head"))
}

/// Applies `edit` to the events of a stopped vault's audit log and writes the log again,
/// as someone with write access to the files would (frames with valid checksums: only the
/// chain can tell).
fn tamper(dir: &std::path::Path, edit: impl FnOnce(&mut BTreeMap<u64, Vec<u8>>)) {
    let (mut events, head) = raw_events(dir);
    edit(&mut events);
    std::fs::remove_dir_all(audit_dir(dir)).expect("remove");
    let log = SegmentLog::open(&audit_dir(dir), DEFAULT_SEGMENT_BYTES).expect("audit log");
    // One batch per event, as the vault's requests wrote them.
    for event in events {
        log.append(&[event], &head).expect("append");
    }
}

#[tokio::test]
async fn flipped_deleted_or_swapped_events_fail_verification_at_their_sequence_number() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    for i in 0..10 {
        put(
            &mut client,
            "acme",
            &format!("u{i}"),
            vec![text("n", pb::Category::Usage, "x")],
        )
        .await
        .expect("put");
    }
    let mut audit = pb::audit_service_client::AuditServiceClient::new(vault.channel().await);
    let online = audit
        .verify_audit_log(pb::VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(online.ok, "{online:?}");
    drop((client, audit));
    let dir = vault.stop().await;
    let report = verify_dir(dir.path());
    assert!(report.is_ok(), "{report:?}");
    assert!(report.checked >= 11);

    let original = raw_events(dir.path()).0;
    let e = |seq: u64| original[&seq].clone();
    let (e3, e4, e5, e6) = (e(3), e(4), e(5), e(6));

    tamper(dir.path(), |t| {
        let mut bad = e3.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x20;
        t.insert(3, bad);
    });
    assert_eq!(verify_dir(dir.path()).first_bad, Some(3));
    tamper(dir.path(), |t| {
        t.insert(3, e3.clone());
        t.remove(&4);
    });
    assert_eq!(verify_dir(dir.path()).first_bad, Some(4));
    tamper(dir.path(), |t| {
        t.insert(4, e4.clone());
        t.insert(5, e6.clone());
        t.insert(6, e5.clone());
    });
    assert_eq!(verify_dir(dir.path()).first_bad, Some(5));
    tamper(dir.path(), |t| {
        t.insert(5, e5);
        t.insert(6, e6);
    });
    assert!(verify_dir(dir.path()).is_ok());

    // A byte flipped in the files themselves (its frame's checksum fails) is reported at
    // its sequence number too, not cut off as a torn tail.
    let segment = std::fs::read_dir(audit_dir(dir.path()))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment");
    let bytes = std::fs::read(&segment).expect("read");
    let at = bytes
        .windows(e(8).len())
        .position(|w| w == e(8).as_slice())
        .expect("event 8 in the segment")
        + 10;
    let mut flipped = bytes.clone();
    flipped[at] ^= 0x01;
    std::fs::write(&segment, &flipped).expect("write");
    let report = verify_dir(dir.path());
    assert_eq!(report.first_bad, Some(8), "{report:?}");
    assert!(
        report.problem.as_deref().unwrap_or("").contains("damaged"),
        "{report:?}"
    );
    std::fs::write(&segment, &bytes).expect("write back");
    assert!(verify_dir(dir.path()).is_ok());

    // The offline command says the same, with a failing exit status on a broken chain.
    let cli = |dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"))
            .args(["audit", "verify", "--data-dir"])
            .arg(dir)
            .output()
            .expect("run cli")
    };
    let out = cli(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tamper(dir.path(), |t| {
        t.remove(&7);
    });
    let out = cli(dir.path());
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("seq 7"), "{text}");
}

#[tokio::test]
async fn reads_fail_closed_when_the_audit_log_cannot_be_written() {
    let (vault, faults) = faulty_vault(|raw| raw.audit.timeout_ms = Some(300)).await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "u",
        vec![text("email", pb::Category::Account, "a@example.com")],
    )
    .await
    .expect("put");

    Faults::set(&faults.fail_audit, true);
    let err = get(&mut client, "acme", "u", &[])
        .await
        .expect_err("audit down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().contains("a@example.com"));
    Faults::set(&faults.fail_audit, false);
    assert_eq!(
        get(&mut client, "acme", "u", &[])
            .await
            .expect("recovered")
            .len(),
        1
    );

    // A stuck writer: the read gives up after the audit timeout instead of hanging.
    faults.stall_millis.store(2_000, Ordering::SeqCst);
    Faults::set(&faults.stall_audit, true);
    let started = Instant::now();
    let err = get(&mut client, "acme", "u", &[])
        .await
        .expect_err("audit stuck");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    Faults::set(&faults.stall_audit, false);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        get(&mut client, "acme", "u", &[])
            .await
            .expect("recovered")
            .len(),
        1
    );

    // The audit log is not the data store: with the store's flushes failing, reads are
    // still recorded (and served); a change answers UNAVAILABLE.
    Faults::set(&faults.fail_flush, true);
    assert_eq!(
        get(&mut client, "acme", "u", &[])
            .await
            .expect("the store's flush is not the audit log's")
            .len(),
        1
    );
    let write = put(
        &mut client,
        "acme",
        "u2",
        vec![text("email", pb::Category::Account, "b@example.com")],
    )
    .await
    .expect_err("no flush");
    assert_eq!(write.code(), Code::Unavailable, "{write:?}");
    Faults::set(&faults.fail_flush, false);
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn concurrent_requests_share_flushes() {
    let (vault, faults) = faulty_vault(|raw| raw.audit.timeout_ms = Some(2_000)).await;
    create_tenant(&vault, "acme").await;
    let channel = vault.channel().await;
    let before = faults.flushes.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let mut client = pb::record_service_client::RecordServiceClient::new(channel.clone());
            tokio::spawn(async move {
                put(
                    &mut client,
                    "acme",
                    &format!("u{i}"),
                    vec![text("n", pb::Category::Usage, "x")],
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("put");
    }
    let flushes = faults.flushes.load(Ordering::SeqCst) - before;
    assert!(flushes < 64, "64 durable writes took {flushes} flushes");
    vault.stop().await;
}

#[tokio::test]
async fn pruning_keeps_the_chain_verifiable() {
    let dir = tempfile::TempDir::new().expect("dir");
    let (vault, clock, _store, call) = clocked_vault(&dir);
    let day = 86_400_000_000u64;
    let tenant = TenantId::parse("acme").expect("id");
    vault.create_tenant(&call, &tenant).await.expect("tenant");
    let field = |v: &str| NewField {
        expected_version: None,
        name: FieldName::parse("n").expect("name"),
        category: Category::Usage,
        value: FieldValue::Text(v.into()),
        indexed: false,
        ttl: None,
        transaction_record: false,
    };
    let purpose = Purpose::parse("support").expect("purpose");
    for i in 0..20 {
        let s = SubjectId::parse(&format!("old{i}")).expect("id");
        vault
            .put_fields(&call, &tenant, &s, &[field("x")])
            .await
            .expect("put");
        vault
            .get_fields(&call, &tenant, &s, &[], &purpose)
            .await
            .expect("get");
    }
    clock.advance_micros(400 * day);
    for i in 0..5 {
        let s = SubjectId::parse(&format!("new{i}")).expect("id");
        vault
            .put_fields(&call, &tenant, &s, &[field("y")])
            .await
            .expect("put");
    }
    let report = vault.prune_audit(&call, 0).await.expect("prune");
    assert_eq!(
        report.deleted, 62,
        "1 tenant creation + 20 puts (each an intent and its ending) + 20 reads are older than a year"
    );
    assert_eq!(report.through, Some(62));
    let verified = vault.verify_audit(&call).await.expect("verify");
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(verified.first_seq, 63);
    let remaining = vault
        .audit_log()
        .query(&AuditFilter::default(), 0, 1000)
        .expect("query")
        .events;
    assert_eq!(remaining.first().map(|e| e.seq), Some(63));
    assert!(remaining
        .iter()
        .any(|e| e.draft.operation == Operation::PruneAudit && e.draft.outcome == Outcome::Ok));
}

/// One spelling of outcomes in every text output: what `pii-vault audit query` prints is
/// what the JSON-lines mirror wrote for the same event (`ok`, `not_found`), never the proto
/// enum's `OUTCOME_OK`.
#[tokio::test]
async fn the_cli_query_and_the_jsonl_mirror_spell_outcomes_alike() {
    let sink_dir = tempfile::TempDir::new().expect("dir");
    let sink = sink_dir.path().join("audit.jsonl");
    let sink_path = sink.clone();
    let vault = TestVault::start_with(move |raw| raw.audit.jsonl_path = Some(sink_path)).await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "u",
        vec![text("email", pb::Category::Account, "a@example.invalid")],
    )
    .await
    .expect("put");
    get(&mut client, "acme", "nobody", &[])
        .await
        .expect_err("not found");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"))
        .args([
            "audit",
            "query",
            "--format",
            "json",
            "--addr",
            &vault.addr.to_string(),
            "--data-dir",
        ])
        .arg(vault.data_dir())
        .output()
        .await
        .expect("run cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcomes = |text: &str| -> Vec<(u64, String)> {
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                let seq = v["seq"].as_u64().expect("seq");
                (seq, v["outcome"].as_str().expect("outcome").to_owned())
            })
            .collect()
    };
    let printed = outcomes(&String::from_utf8_lossy(&out.stdout));
    let spelled: Vec<&str> = printed.iter().map(|(_, o)| o.as_str()).collect();
    assert!(spelled.contains(&"ok"), "{spelled:?}");
    assert!(spelled.contains(&"not_found"), "{spelled:?}");
    vault.stop().await;
    let mirrored = outcomes(&std::fs::read_to_string(&sink).expect("sink written"));
    for (seq, outcome) in &printed {
        let (_, in_sink) = mirrored
            .iter()
            .find(|(s, _)| s == seq)
            .unwrap_or_else(|| panic!("event {seq} not mirrored"));
        assert_eq!(outcome, in_sink, "event {seq}");
    }
}
