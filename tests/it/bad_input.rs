//! Every malformed request answers INVALID_ARGUMENT with a message that names the problem
//! without echoing the value, and leaves the stored data exactly as it was.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pii_vault::proto::v1 as pb;
use pii_vault::proto::v1::record_service_client::RecordServiceClient;
use pii_vault::storage::faults::Faults;
use tonic::transport::Channel;
use tonic::Code;

use crate::util::{create_tenant, faulty_vault, get, put, text, TestVault};

/// A distinctive marker put into bad values, to check messages never echo them.
const MARK: &str = "Zq9Marker";

fn field(name: &str, category: i32, value: Option<pb::value::Kind>) -> pb::FieldInput {
    pb::FieldInput {
        expected_version: None,
        indexed: false,
        ttl_seconds: 0,
        transaction_record: false,
        name: name.into(),
        category,
        value: value.map(|kind| pb::Value { kind: Some(kind) }),
    }
}

fn put_req(tenant: &str, subject: &str, fields: Vec<pb::FieldInput>) -> pb::PutFieldsRequest {
    pb::PutFieldsRequest {
        tenant_id: tenant.into(),
        subject_id: subject.into(),
        fields,
        idempotency_key: String::new(),
    }
}

fn ok_field() -> pb::FieldInput {
    text("email", pb::Category::Account, "changed@example.com")
}

async fn snapshot(client: &mut RecordServiceClient<Channel>) -> Vec<(String, String, u64)> {
    get(client, "acme", "u", &[])
        .await
        .expect("snapshot")
        .into_iter()
        .map(|f| (f.name.clone(), format!("{:?}", f.value), f.version))
        .collect()
}

#[tokio::test]
async fn each_bad_request_is_invalid_argument_and_changes_nothing() {
    let vault = TestVault::start_with(|raw| {
        raw.limits.max_value_bytes = Some(1024);
        raw.limits.max_fields_per_request = Some(5);
        raw.limits.max_message_bytes = Some(4096);
    })
    .await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "u",
        vec![text("email", pb::Category::Account, "a@example.com")],
    )
    .await
    .expect("seed");
    let before = snapshot(&mut client).await;

    let text_kind = |s: &str| Some(pb::value::Kind::Text(s.into()));
    let cat = pb::Category::Account as i32;
    let long_subject = format!("{MARK}{}", "x".repeat(129));
    let puts: Vec<(&str, pb::PutFieldsRequest)> = vec![
        ("empty tenant id", put_req("", "u", vec![ok_field()])),
        (
            "upper-case tenant id",
            put_req(&format!("{MARK}acme"), "u", vec![ok_field()]),
        ),
        (
            "slash in tenant id",
            put_req(&format!("acme/{MARK}"), "u", vec![ok_field()]),
        ),
        ("empty subject id", put_req("acme", "", vec![ok_field()])),
        (
            "over-long subject id",
            put_req("acme", &long_subject, vec![ok_field()]),
        ),
        (
            "control character in subject id",
            put_req("acme", &format!("u\u{1}{MARK}"), vec![ok_field()]),
        ),
        (
            "non-ASCII subject id",
            put_req("acme", &format!("ü{MARK}"), vec![ok_field()]),
        ),
        (
            "space in subject id",
            put_req("acme", &format!("u {MARK}"), vec![ok_field()]),
        ),
        (
            "bad field name",
            put_req("acme", "u", vec![field(MARK, cat, text_kind("v"))]),
        ),
        (
            "missing value",
            put_req("acme", "u", vec![field("email", cat, None)]),
        ),
        (
            "unspecified category",
            put_req("acme", "u", vec![field("email", 0, text_kind("v"))]),
        ),
        (
            "unknown category",
            put_req("acme", "u", vec![field("email", 99, text_kind("v"))]),
        ),
        (
            "value over the limit",
            put_req(
                "acme",
                "u",
                vec![field(
                    "email",
                    cat,
                    text_kind(&format!("{MARK}{}", "v".repeat(1100))),
                )],
            ),
        ),
        (
            "duplicate field names",
            put_req("acme", "u", vec![ok_field(), ok_field()]),
        ),
        ("no fields", put_req("acme", "u", vec![])),
        (
            "too many fields",
            put_req(
                "acme",
                "u",
                (0..6)
                    .map(|i| text(&format!("f{i}"), pb::Category::Account, "v"))
                    .collect(),
            ),
        ),
        (
            "message over the size limit",
            put_req(
                "acme",
                "u",
                (0..5)
                    .map(|i| {
                        field(
                            &format!("f{i}"),
                            cat,
                            text_kind(&format!("{MARK}{}", "v".repeat(1000))),
                        )
                    })
                    .collect(),
            ),
        ),
    ];
    for (case, req) in puts {
        let err = client.put_fields(req).await.expect_err(case);
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
        assert!(
            !err.message().is_empty(),
            "{case}: message names the problem"
        );
        assert!(
            !err.message().contains(MARK),
            "{case}: message echoes input: {}",
            err.message()
        );
        assert_eq!(
            snapshot(&mut client).await,
            before,
            "{case}: stored data changed"
        );
    }

    let gets = [
        ("missing purpose", "email", ""),
        ("bad purpose", "email", "Billing!"),
        ("bad field name", "E-mail", "support"),
    ];
    for (case, name, purpose) in gets {
        let err = client
            .get_fields(pb::GetFieldsRequest {
                tenant_id: "acme".into(),
                subject_id: "u".into(),
                field_names: vec![name.into()],
                purpose: purpose.into(),
            })
            .await
            .expect_err(case);
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
    }

    for (case, size, token) in [
        ("page too large", 5000, String::new()),
        ("token not hex", 10, "zz".to_owned()),
        ("token not an id", 10, hex::encode("not an id!")),
    ] {
        let err = client
            .list_subjects(pb::ListSubjectsRequest {
                tenant_id: "acme".into(),
                page_size: size,
                page_token: token,
            })
            .await
            .expect_err(case);
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
    }

    let err = client
        .delete_fields(pb::DeleteFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: "u".into(),
            field_names: vec![],
        })
        .await
        .expect_err("delete nothing");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(snapshot(&mut client).await, before);
}

/// The deadline expires while the request is still inside the server: its audit event is
/// held up by a stalled writer (longer than the deadline, shorter than the audit timeout),
/// so the outcome does not depend on how fast the put is.
#[tokio::test]
async fn an_expired_deadline_is_honoured() {
    let (vault, faults) = faulty_vault(|raw| raw.audit.timeout_ms = Some(10_000)).await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    let deadline = Duration::from_millis(200);
    faults.stall_millis.store(2_000, Ordering::SeqCst);
    Faults::set(&faults.stall_audit, true);
    let mut req = tonic::Request::new(put_req("acme", "u", vec![ok_field()]));
    req.set_timeout(deadline);
    let started = Instant::now();
    let err = client.put_fields(req).await.expect_err("deadline");
    let took = started.elapsed();
    Faults::set(&faults.stall_audit, false);
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // The vault answers a few milliseconds early, so that the answer arrives in time.
    assert!(
        took >= deadline - Duration::from_millis(10) && took < Duration::from_millis(1_500),
        "the call returned after {took:?}, not at its {deadline:?} deadline"
    );
    // Once the writer is unstuck the vault serves again, and the put, made once its
    // intent was on disk, is there whole.
    let mut read = Err(tonic::Status::unknown("not read"));
    for _ in 0..100 {
        read = get(&mut client, "acme", "u", &[]).await;
        if read.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read.expect("read after the stall").len(), 1);
    drop(client);
    vault.stop().await;
}
