//! The input matrix: oversized messages, empty and over-long ids, control characters,
//! invalid UTF-8 (sent as hand-encoded protobuf, which no generated client can produce),
//! unknown enum values, duplicate field names, and a request cancelled by its deadline in
//! the middle of a write. Each case answers its documented status without echoing the
//! input, and after each one the fields of a seed subject are checked: exactly as before,
//! or (for the cancelled write only) exactly as the write would leave them, never partial,
//! and never changed without an audit event.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pii_vault::proto::v1 as pb;
use pii_vault::proto::v1::record_service_client::RecordServiceClient;
use pii_vault::storage::faults::Faults;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::util::{
    all_audit_events, assert_reason, create_tenant, faulty_vault, get, put, text, TestVault,
};

/// Put into bad inputs, to check that no message echoes them.
const MARK: &str = "Zq9Marker";
const TENANT: &str = "acme";
const SEED: &str = "seed";

/// `PutFieldsRequest` with its strings as bytes: the same field numbers and wire types, so
/// it can carry what a `string` field must not (invalid UTF-8).
#[derive(Clone, PartialEq, prost::Message)]
struct RawPutFields {
    #[prost(bytes = "vec", tag = "1")]
    tenant_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    subject_id: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    fields: Vec<RawFieldInput>,
}

/// `FieldInput`, strings as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawFieldInput {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(int32, tag = "2")]
    category: i32,
    #[prost(message, optional, tag = "3")]
    value: Option<RawValue>,
}

/// `Value` with its `text` member (field 1 of the oneof) as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawValue {
    #[prost(bytes = "vec", tag = "1")]
    text: Vec<u8>,
}

fn raw_put(tenant: &[u8], subject: &[u8], name: &[u8], value: &[u8]) -> Request {
    Request::Raw(RawPutFields {
        tenant_id: tenant.to_vec(),
        subject_id: subject.to_vec(),
        fields: vec![RawFieldInput {
            name: name.to_vec(),
            category: pb::Category::Account as i32,
            value: Some(RawValue {
                text: value.to_vec(),
            }),
        }],
    })
}

/// `bytes` with `MARK` in front, then a byte that is never valid UTF-8.
fn not_utf8(bytes: &str) -> Vec<u8> {
    let mut v = format!("{MARK}{bytes}").into_bytes();
    v.push(0xff);
    v
}

/// One request of the matrix.
enum Request {
    Put(pb::PutFieldsRequest),
    Get(pb::GetFieldsRequest),
    Delete(pb::DeleteFieldsRequest),
    /// A hand-encoded `PutFieldsRequest`, sent to the same method.
    Raw(RawPutFields),
}

async fn send(channel: &Channel, req: Request) -> Result<(), Status> {
    let mut client = RecordServiceClient::new(channel.clone());
    match req {
        Request::Put(r) => client.put_fields(r).await.map(drop),
        Request::Get(r) => client.get_fields(r).await.map(drop),
        Request::Delete(r) => client.delete_fields(r).await.map(drop),
        Request::Raw(r) => {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let path = http::uri::PathAndQuery::from_static("/piivault.v1.RecordService/PutFields");
            let codec = tonic_prost::ProstCodec::<RawPutFields, pb::PutFieldsResponse>::default();
            grpc.unary(tonic::Request::new(r), path, codec)
                .await
                .map(drop)
        }
    }
}

fn field(name: &str, category: i32, value: &str) -> pb::FieldInput {
    pb::FieldInput {
        expected_version: None,
        indexed: false,
        ttl_seconds: 0,
        transaction_record: false,
        name: name.into(),
        category,
        value: Some(pb::Value {
            kind: Some(pb::value::Kind::Text(value.into())),
        }),
    }
}

fn put_req(tenant: &str, subject: &str, fields: Vec<pb::FieldInput>) -> Request {
    Request::Put(pb::PutFieldsRequest {
        tenant_id: tenant.into(),
        subject_id: subject.into(),
        fields,
        idempotency_key: String::new(),
    })
}

fn get_req(tenant: &str, subject: &str, names: &[&str], purpose: &str) -> Request {
    Request::Get(pb::GetFieldsRequest {
        tenant_id: tenant.into(),
        subject_id: subject.into(),
        field_names: names.iter().map(|n| (*n).to_owned()).collect(),
        purpose: purpose.into(),
    })
}

fn delete_req(names: &[&str]) -> Request {
    Request::Delete(pb::DeleteFieldsRequest {
        tenant_id: TENANT.into(),
        subject_id: SEED.into(),
        field_names: names.iter().map(|n| (*n).to_owned()).collect(),
    })
}

/// A write to the seed subject that would change it, if it were accepted.
fn change(value: &str) -> pb::FieldInput {
    field("email", pb::Category::Account as i32, value)
}

/// Every field of the seed subject: name, category, value, version.
type Snapshot = Vec<(String, i32, String, u64)>;

async fn snapshot(client: &mut RecordServiceClient<Channel>) -> Snapshot {
    get(client, TENANT, SEED, &[])
        .await
        .expect("read the seed subject")
        .into_iter()
        .map(|f| {
            (
                f.name.clone(),
                f.category,
                format!("{:?}", f.value),
                f.version,
            )
        })
        .collect()
}

/// `before` with the named fields set to new text values and their versions bumped: what a
/// complete write of `values` leaves.
fn written(before: &Snapshot, values: &[(&str, &str)]) -> Snapshot {
    before
        .iter()
        .map(
            |(name, category, value, version)| match values.iter().find(|(n, _)| n == name) {
                Some((_, v)) => {
                    let value = pb::Value {
                        kind: Some(pb::value::Kind::Text((*v).into())),
                    };
                    (
                        name.clone(),
                        *category,
                        format!("{:?}", Some(value)),
                        version + 1,
                    )
                }
                None => (name.clone(), *category, value.clone(), *version),
            },
        )
        .collect()
}

/// One row of the printed table.
struct Row {
    case: String,
    expected: String,
    got: String,
    data: String,
    /// What went wrong, if anything: the test fails after printing the table.
    problem: Option<String>,
}

/// A put of new values to the seed subject whose client deadline (300 ms) expires while
/// the write is in progress: its audit event is stalled 1.5 s, either as part of the
/// writer's current batch or queued behind another request's stalled batch. The stored
/// fields must be fully old or fully new, as the write's ending event says, and the vault
/// must keep serving.
async fn deadline_mid_write(
    vault: &TestVault, faults: &Arc<Faults>, client: &mut RecordServiceClient<Channel>,
    behind_another_batch: bool,
) -> Row {
    let tag = if behind_another_batch { "b" } else { "a" };
    let request_id = format!("deadline-mid-write-{tag}");
    let (email, name) = (format!("new-{tag}@example.com"), format!("New {tag}"));
    let values = [("email", email.as_str()), ("name", name.as_str())];
    let before = snapshot(client).await;
    let after_write = written(&before, &values);

    faults.stall_millis.store(1_500, Ordering::SeqCst);
    Faults::set(&faults.stall_audit, true);
    let blocker = if behind_another_batch {
        let mut other = vault.records().await;
        let read = tokio::spawn(async move { get(&mut other, TENANT, SEED, &[]).await });
        // Let the blocker's event reach the writer, which then sits in the stalled append.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some(read)
    } else {
        None
    };
    let mut req = tonic::Request::new(pb::PutFieldsRequest {
        tenant_id: TENANT.into(),
        subject_id: SEED.into(),
        fields: values
            .iter()
            .map(|(n, v)| {
                // Each field keeps its category: only the values change.
                let category = before
                    .iter()
                    .find(|(name, ..)| name == n)
                    .map_or(0, |(_, c, ..)| *c);
                field(n, category, v)
            })
            .collect(),
        idempotency_key: String::new(),
    });
    req.set_timeout(Duration::from_millis(300));
    req.metadata_mut()
        .insert("x-request-id", request_id.parse().expect("ascii"));
    let started = Instant::now();
    let result = client.put_fields(req).await;
    let took = started.elapsed();
    Faults::set(&faults.stall_audit, false);
    if let Some(read) = blocker {
        read.await
            .expect("task")
            .expect("the stalled read completes");
    }

    // The vault keeps serving. The put goes on after its answer: it is made once its intent
    // is on disk, and its ending then says how it went; the data must agree with it.
    let mut ending = None;
    for _ in 0..100 {
        ending = all_audit_events(vault).await.into_iter().find(|e| {
            e.request_id == request_id
                && e.operation == "put_fields"
                && e.outcome != pb::Outcome::Intent as i32
        });
        if ending.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = snapshot(client).await;
    let audited = ending.is_some_and(|e| e.outcome == pb::Outcome::Ok as i32);
    let state = if after == before {
        "fully old"
    } else if after == after_write {
        "fully new"
    } else {
        "PARTIAL"
    };
    let mut problems = Vec::new();
    let got = match &result {
        Ok(_) => {
            problems.push("the put succeeded although its deadline had passed".to_owned());
            "Ok".to_owned()
        }
        Err(s) => {
            if !matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) {
                problems.push(format!("answered {s:?}"));
            }
            format!("{:?} after {} ms", s.code(), took.as_millis())
        }
    };
    if took >= Duration::from_millis(1_200) {
        problems.push(format!("returned after {took:?}, not at its deadline"));
    }
    if state == "PARTIAL" {
        problems.push(format!("partial write: before {before:?}, after {after:?}"));
    }
    if audited != (state == "fully new") {
        problems.push(format!(
            "the data is {state} but the write's audit events say it {} made",
            if audited {
                "was"
            } else {
                "was not (or not yet)"
            }
        ));
    }
    Row {
        case: if behind_another_batch {
            "deadline mid-write, event queued behind a stalled batch".into()
        } else {
            "deadline mid-write, event in the stalled batch".into()
        },
        expected: "DeadlineExceeded or Cancelled".into(),
        got,
        data: format!(
            "{state}, {}",
            if audited { "audited" } else { "not audited" }
        ),
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}

#[tokio::test]
async fn each_hostile_input_answers_its_status_and_leaves_the_data_intact() {
    let (vault, faults) = faulty_vault(|raw| {
        raw.limits.max_value_bytes = Some(1024);
        raw.limits.max_fields_per_request = Some(5);
        raw.limits.max_message_bytes = Some(8192);
        // Longer than any stall below: a stalled write meets its client deadline first.
        raw.audit.timeout_ms = Some(10_000);
    })
    .await;
    create_tenant(&vault, TENANT).await;
    let mut client = vault.records().await;
    let account = pb::Category::Account;
    put(
        &mut client,
        TENANT,
        SEED,
        vec![
            text("email", account, "seed@example.com"),
            text("name", pb::Category::Profile, "Seed Person"),
            text("note", pb::Category::Communication, "untouched"),
        ],
    )
    .await
    .expect("seed");
    let channel = vault.channel().await;

    let acct = account as i32;
    let invalid = Code::InvalidArgument;
    let long = |n: usize| format!("{MARK}{}", "x".repeat(n - MARK.len()));
    let lower_long = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, Request, Code)> = vec![
        (
            "message over max_message_bytes (8 KiB)",
            put_req(
                TENANT,
                SEED,
                vec![change(&format!("{MARK}{}", "v".repeat(9000)))],
            ),
            invalid,
        ),
        (
            "value over max_value_bytes (1 KiB)",
            put_req(
                TENANT,
                SEED,
                vec![change(&format!("{MARK}{}", "v".repeat(1100)))],
            ),
            invalid,
        ),
        (
            "more fields than max_fields_per_request (5)",
            put_req(
                TENANT,
                SEED,
                (0..6).map(|i| field(&format!("f{i}"), acct, "v")).collect(),
            ),
            invalid,
        ),
        (
            "empty tenant id",
            put_req("", SEED, vec![change("x")]),
            invalid,
        ),
        (
            "empty subject id",
            put_req(TENANT, "", vec![change("x")]),
            invalid,
        ),
        (
            "empty field name",
            put_req(TENANT, SEED, vec![field("", acct, "x")]),
            invalid,
        ),
        ("empty purpose", get_req(TENANT, SEED, &[], ""), invalid),
        (
            "tenant id of 64 chars (limit 63)",
            put_req(&lower_long(64), SEED, vec![change("x")]),
            invalid,
        ),
        (
            "subject id of 129 chars (limit 128)",
            put_req(TENANT, &long(129), vec![change("x")]),
            invalid,
        ),
        (
            "field name of 65 chars (limit 64)",
            put_req(TENANT, SEED, vec![field(&lower_long(65), acct, "x")]),
            invalid,
        ),
        (
            "purpose of 65 chars (limit 64)",
            get_req(TENANT, SEED, &[], &lower_long(65)),
            invalid,
        ),
        (
            "NUL in subject id",
            put_req(TENANT, &format!("se\0ed{MARK}"), vec![change("x")]),
            invalid,
        ),
        (
            "newline in subject id",
            put_req(TENANT, &format!("seed\n{MARK}"), vec![change("x")]),
            invalid,
        ),
        (
            "C1 control (U+0085) in subject id",
            put_req(TENANT, &format!("seed\u{85}{MARK}"), vec![change("x")]),
            invalid,
        ),
        (
            "DEL in tenant id",
            put_req("ac\u{7f}me", SEED, vec![change("x")]),
            invalid,
        ),
        (
            "tab in field name",
            put_req(TENANT, SEED, vec![field("em\tail", acct, "x")]),
            invalid,
        ),
        (
            "escape in purpose",
            get_req(TENANT, SEED, &[], "sup\u{1b}port"),
            invalid,
        ),
        (
            "invalid UTF-8 in tenant id (raw protobuf)",
            raw_put(&not_utf8("acme"), SEED.as_bytes(), b"email", b"x"),
            invalid,
        ),
        (
            "invalid UTF-8 in subject id (raw protobuf)",
            raw_put(TENANT.as_bytes(), &not_utf8("seed"), b"email", b"x"),
            invalid,
        ),
        (
            "invalid UTF-8 in field name (raw protobuf)",
            raw_put(TENANT.as_bytes(), SEED.as_bytes(), &not_utf8("email"), b"x"),
            invalid,
        ),
        (
            "invalid UTF-8 in a text value (raw protobuf)",
            raw_put(TENANT.as_bytes(), SEED.as_bytes(), b"email", &not_utf8("v")),
            invalid,
        ),
        (
            "control: the same raw encoding, valid UTF-8, another subject",
            raw_put(TENANT.as_bytes(), b"raw-control", b"email", b"ok"),
            Code::Ok,
        ),
        (
            "unknown category 99",
            put_req(TENANT, SEED, vec![field("email", 99, "x")]),
            invalid,
        ),
        (
            "negative category -1",
            put_req(TENANT, SEED, vec![field("email", -1, "x")]),
            invalid,
        ),
        (
            "duplicate field names in PutFields",
            put_req(
                TENANT,
                SEED,
                vec![change("a@x.example"), change("b@x.example")],
            ),
            invalid,
        ),
        (
            "duplicate field names in GetFields",
            get_req(TENANT, SEED, &["email", "email"], "support"),
            invalid,
        ),
        (
            "duplicate field names in DeleteFields",
            delete_req(&["email", "note", "email"]),
            invalid,
        ),
    ];

    let before = snapshot(&mut client).await;
    let mut rows = Vec::new();
    for (case, req, expected) in cases {
        let got = send(&channel, req).await;
        let code = got.as_ref().err().map_or(Code::Ok, Status::code);
        let intact = snapshot(&mut client).await == before;
        let mut problems = Vec::new();
        if code != expected {
            problems.push(format!("answered {got:?}"));
        }
        if let Err(status) = &got {
            if status.message().contains(MARK) {
                problems.push("the message echoes the input".to_owned());
            }
            if status.message().is_empty() {
                problems.push("the message is empty".to_owned());
            }
        }
        if !intact {
            problems.push("the seed subject changed".to_owned());
        }
        rows.push(Row {
            case: case.into(),
            expected: format!("{expected:?}"),
            got: match &got {
                Ok(()) => "Ok".into(),
                Err(s) => format!("{:?}: {}", s.code(), s.message()),
            },
            data: if intact { "intact" } else { "CHANGED" }.into(),
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        });
    }
    rows.push(deadline_mid_write(&vault, &faults, &mut client, false).await);
    rows.push(deadline_mid_write(&vault, &faults, &mut client, true).await);

    println!("\nInput matrix");
    println!("| case | expected | got | seed subject | problem |");
    println!("| --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.case,
            r.expected,
            r.got,
            r.data,
            r.problem.as_deref().unwrap_or("")
        );
    }
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| r.problem.as_ref().map(|p| format!("{}: {p}", r.case)))
        .collect();
    println!(
        "cases run: {}, answered as documented with the data intact: {}\n",
        rows.len(),
        rows.len() - failed.len()
    );
    assert!(failed.is_empty(), "{failed:#?}");
    // A message that does not decode says so to programs too.
    let undecodable = send(
        &channel,
        raw_put(&not_utf8("acme"), SEED.as_bytes(), b"n", b"x"),
    )
    .await
    .expect_err("undecodable");
    assert_reason(&undecodable, Code::InvalidArgument, "MALFORMED_REQUEST");

    // The vault still serves writes, and the audit chain is whole.
    put(&mut client, TENANT, SEED, vec![change("after@example.com")])
        .await
        .expect("a write after the matrix");
    let report = pb::audit_service_client::AuditServiceClient::new(channel)
        .verify_audit_log(pb::VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(report.ok, "{report:?}");

    drop(client);
    vault.stop().await;
}
