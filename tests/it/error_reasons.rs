//! Every error the vault sends carries a `google.rpc.ErrorInfo` whose reason is an
//! `ErrorReason` (proto/piivault/v1/errors.proto): each reason is provoked here, or in the
//! test named beside it in `ELSEWHERE`, and checked with `util::assert_reason`. The last
//! test fails when a reason is added to the proto without a test that provokes it.

use std::time::Duration;

use pb::record_service_client::RecordServiceClient;
use pii_vault::proto::v1 as pb;
use pii_vault::storage::faults::Faults;
use tonic::transport::Channel;
use tonic::Code;

use crate::erasure::erase;
use crate::rights::{consent, read, rights};
use crate::util::{
    assert_reason, channel_as, client_for, create_tenant, faulty_vault, get, put, text, TestVault,
};

/// Reasons provoked by another module's test, which asserts them there.
const ELSEWHERE: [(&str, &str); 8] = [
    ("IDEMPOTENCY_KEY_REUSED", "idempotency"),
    ("TOKEN_WITHOUT_SUBJECT", "tokens"),
    ("KEY_LIMIT_REACHED", "keys::limits"),
    ("KEY_OPERATION_BLOCKED", "hygiene"),
    ("RATE_LIMITED", "abuse"),
    ("INTEGRITY_CHECK_FAILED", "state_integrity"),
    ("MALFORMED_REQUEST", "input_matrix"),
    ("CLIENT_UNVERIFIED", "the lib's api::tests"),
];

fn card(name: &str, number: &str) -> pb::FieldInput {
    pb::FieldInput {
        value: Some(pb::Value {
            kind: Some(pb::value::Kind::CardNumber(number.into())),
        }),
        ..text(name, pb::Category::Payment, "")
    }
}

fn email(name: &str, address: &str) -> pb::FieldInput {
    pb::FieldInput {
        value: Some(pb::Value {
            kind: Some(pb::value::Kind::Email(address.into())),
        }),
        ..text(name, pb::Category::Account, "")
    }
}

fn metadata(details: &tonic_types::ErrorDetails, key: &str) -> Option<String> {
    details.error_info()?.metadata.get(key).cloned()
}

async fn get_tenant(c: &Channel, id: &str) -> tonic::Status {
    pb::tenant_service_client::TenantServiceClient::new(c.clone())
        .get_tenant(pb::GetTenantRequest {
            tenant_id: id.into(),
        })
        .await
        .expect_err("no such tenant")
}

#[tokio::test]
async fn invalid_input_names_the_field_that_was_wrong_but_never_its_value() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;
    let bad = "not-an-address@@example.com";
    let err = put(
        &mut records,
        "acme",
        "alice",
        vec![
            text("name", pb::Category::Account, "Alice"),
            email("email", bad),
        ],
    )
    .await
    .expect_err("bad email");
    let details = assert_reason(&err, Code::InvalidArgument, "INVALID_INPUT");
    let violations = &details
        .bad_request()
        .expect("a BadRequest")
        .field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "fields[1].value");
    assert!(
        violations[0].description.contains("email"),
        "{violations:?}"
    );
    assert!(!format!("{err:?}").contains("not-an-address"), "{err:?}");

    let err = put(
        &mut records,
        "",
        "alice",
        vec![text("n", pb::Category::Account, "x")],
    )
    .await
    .expect_err("empty tenant id");
    let details = assert_reason(&err, Code::InvalidArgument, "INVALID_INPUT");
    assert_eq!(
        details
            .bad_request()
            .expect("a BadRequest")
            .field_violations[0]
            .field,
        "tenant_id"
    );
    // A problem of the request as a whole has no field to name: the ErrorInfo alone.
    let err = put(&mut records, "acme", "alice", vec![])
        .await
        .expect_err("no fields");
    let details = assert_reason(&err, Code::InvalidArgument, "INVALID_INPUT");
    assert!(details.bad_request().is_none(), "{details:?}");
    // Nothing was written by the failed calls.
    assert_reason(
        &get(&mut records, "acme", "alice", &[])
            .await
            .expect_err("no subject"),
        Code::NotFound,
        "SUBJECT_NOT_FOUND",
    );
}

#[tokio::test]
async fn a_stale_expected_version_aborts_the_whole_put() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;
    let at = |field: pb::FieldInput, version: u64| pb::FieldInput {
        expected_version: Some(version),
        ..field
    };
    put(
        &mut records,
        "acme",
        "alice",
        vec![at(email("email", "a@x.io"), 0)],
    )
    .await
    .expect("expected new");
    let err = put(
        &mut records,
        "acme",
        "alice",
        vec![
            text("nick", pb::Category::Profile, "al"),
            at(email("email", "b@x.io"), 0),
        ],
    )
    .await
    .expect_err("email exists at v1");
    let details = assert_reason(&err, Code::Aborted, "VERSION_MISMATCH");
    assert_eq!(metadata(&details, "field").as_deref(), Some("email"));
    assert_eq!(metadata(&details, "stored_version").as_deref(), Some("1"));
    let fields = get(&mut records, "acme", "alice", &[]).await.expect("read");
    assert_eq!(fields.len(), 1, "nothing of the aborted put was written");
    assert_eq!(fields[0].version, 1);
    put(
        &mut records,
        "acme",
        "alice",
        vec![at(email("email", "b@x.io"), 1)],
    )
    .await
    .expect("expected the stored version");
}

#[tokio::test]
async fn not_found_reasons_tell_tenant_subject_field_token_erased_and_shredded_apart() {
    let vault = TestVault::start().await;
    let c = vault.channel().await;
    assert_reason(
        &get_tenant(&c, "nope").await,
        Code::NotFound,
        "TENANT_NOT_FOUND",
    );
    create_tenant(&vault, "acme").await;
    let again = pb::tenant_service_client::TenantServiceClient::new(c.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect_err("exists");
    assert_reason(&again, Code::AlreadyExists, "TENANT_EXISTS");

    let mut records = RecordServiceClient::new(c.clone());
    for who in ["alice", "bob"] {
        put(
            &mut records,
            "acme",
            who,
            vec![text("email", pb::Category::Account, "a@x.io")],
        )
        .await
        .expect("put");
    }
    assert_reason(
        &get(&mut records, "acme", "carol", &[])
            .await
            .expect_err("no carol"),
        Code::NotFound,
        "SUBJECT_NOT_FOUND",
    );
    let err = get(&mut records, "acme", "alice", &["shoe_size"])
        .await
        .expect_err("no such field");
    let details = assert_reason(&err, Code::NotFound, "FIELD_NOT_FOUND");
    assert_eq!(metadata(&details, "field").as_deref(), Some("shoe_size"));

    let err = pb::token_service_client::TokenServiceClient::new(c.clone())
        .detokenize(pb::DetokenizeRequest {
            tenant_id: "acme".into(),
            token: format!("tok_{}", "0".repeat(32)),
            purpose: "billing".into(),
        })
        .await
        .expect_err("never issued");
    assert_reason(&err, Code::NotFound, "TOKEN_NOT_FOUND");

    let receipt = erase(c.clone(), "acme", "bob").await.expect("erase");
    let err = get(&mut records, "acme", "bob", &[])
        .await
        .expect_err("erased");
    let details = assert_reason(&err, Code::NotFound, "SUBJECT_ERASED");
    assert_eq!(metadata(&details, "receipt_id"), Some(receipt.receipt_id));

    create_tenant(&vault, "gone").await;
    pb::key_service_client::KeyServiceClient::new(c.clone())
        .shred_tenant(pb::ShredTenantRequest {
            tenant_id: "gone".into(),
            confirm_tenant_id: "gone".into(),
        })
        .await
        .expect("shred");
    assert_reason(
        &get_tenant(&c, "gone").await,
        Code::NotFound,
        "TENANT_SHREDDED",
    );
}

#[tokio::test]
async fn refusals_say_which_rule_refused_policy_restriction_or_consent() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let c = vault.channel().await;
    put(
        &mut RecordServiceClient::new(c.clone()),
        "acme",
        "alice",
        vec![email("email", "alice@example.com")],
    )
    .await
    .expect("put");

    let stranger = channel_as(&vault, &client_for(&vault, "stranger", "spiffe://test/x")).await;
    let err = read(&stranger, "support").await.expect_err("no grant");
    assert_reason(&err, Code::PermissionDenied, "POLICY_DENIED");

    let err = read(&c, "marketing").await.expect_err("no consent");
    let details = assert_reason(&err, Code::FailedPrecondition, "CONSENT_WITHDRAWN");
    assert_eq!(metadata(&details, "purpose").as_deref(), Some("marketing"));
    consent(&c, "marketing", true).await;
    read(&c, "marketing").await.expect("consented");
    consent(&c, "marketing", false).await;
    let err = read(&c, "marketing").await.expect_err("withdrawn");
    assert_reason(&err, Code::FailedPrecondition, "CONSENT_WITHDRAWN");

    // A token is not one subject's: no consent can be checked for it.
    let err = pb::token_service_client::TokenServiceClient::new(c.clone())
        .detokenize(pb::DetokenizeRequest {
            tenant_id: "acme".into(),
            token: format!("tok_{}", "0".repeat(32)),
            purpose: "marketing".into(),
        })
        .await
        .expect_err("no consent to check");
    let details = assert_reason(&err, Code::FailedPrecondition, "CONSENT_UNCHECKABLE");
    assert_eq!(metadata(&details, "purpose").as_deref(), Some("marketing"));

    rights(&c)
        .restrict_subject(pb::RestrictSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
        })
        .await
        .expect("restrict");
    let err = read(&c, "support").await.expect_err("restricted");
    assert_reason(&err, Code::FailedPrecondition, "SUBJECT_RESTRICTED");
}

fn retry_delay(details: &tonic_types::ErrorDetails) -> Duration {
    details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo with a delay")
}

#[tokio::test]
async fn unavailable_answers_say_what_is_down_and_when_to_retry() {
    let (vault, faults) = faulty_vault(|_| {}).await;
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;
    put(
        &mut records,
        "acme",
        "alice",
        vec![text("n", pb::Category::Account, "x")],
    )
    .await
    .expect("put");

    Faults::set(&faults.fail_writes, true);
    let err = put(
        &mut records,
        "acme",
        "alice",
        vec![text("n", pb::Category::Account, "y")],
    )
    .await
    .expect_err("store down");
    let details = assert_reason(&err, Code::Unavailable, "STORAGE_UNAVAILABLE");
    assert!(retry_delay(&details) >= Duration::from_millis(100));
    Faults::set(&faults.fail_writes, false);

    Faults::set(&faults.fail_audit, true);
    let err = get(&mut records, "acme", "alice", &[])
        .await
        .expect_err("audit down");
    let details = assert_reason(&err, Code::Unavailable, "AUDIT_UNAVAILABLE");
    assert!(retry_delay(&details) >= Duration::from_millis(100));
    Faults::set(&faults.fail_audit, false);

    // A new tenant's first write reserves a block of its key's uses: with every key update
    // lost to a (simulated) concurrent writer, the keyring gives up.
    create_tenant(&vault, "other").await;
    Faults::set(&faults.lose_key_races, true);
    let err = put(
        &mut records,
        "other",
        "bob",
        vec![text("n", pb::Category::Account, "z")],
    )
    .await
    .expect_err("keys busy");
    let details = assert_reason(&err, Code::Unavailable, "KEYS_BUSY");
    assert!(retry_delay(&details) > Duration::ZERO);
    Faults::set(&faults.lose_key_races, false);
    put(
        &mut records,
        "other",
        "bob",
        vec![text("n", pb::Category::Account, "z")],
    )
    .await
    .expect("the retry succeeds");
    assert_eq!(
        get(&mut records, "acme", "alice", &[])
            .await
            .expect("read")
            .len(),
        1
    );
}

#[tokio::test]
async fn a_field_that_does_not_open_is_internal_and_says_nothing_more() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    put(
        &mut vault.records().await,
        "acme",
        "alice",
        vec![card("card", "4111 1111 1111 1111")],
    )
    .await
    .expect("put");
    let dir = vault.stop().await;
    {
        let db = pii_vault::storage::open_waiting_for_lock(
            &sled::Config::new().path(dir.path().join("store")),
        )
        .expect("sled");
        let fields = db.open_tree("t/acme/fields").expect("tree");
        let (key, value) = fields.iter().next().expect("one field").expect("read");
        // Past the version, name ("card"), category, kind, three times and the sealed
        // value's length prefix: a byte inside the sealed value.
        let mut damaged = value.to_vec();
        damaged[1 + 8 + 2 + 24 + 4 + 20] ^= 0x01;
        fields.insert(key, damaged).expect("write");
        db.flush().expect("flush");
    }
    let config = crate::util::test_config(dir.path(), |_| {});
    let vault = TestVault::start_on(dir, config, None).await;
    let err = get(&mut vault.records().await, "acme", "alice", &[])
        .await
        .expect_err("damaged");
    assert_reason(&err, Code::Internal, "INTERNAL_ERROR");
    assert_eq!(err.message(), "internal error");
}

/// Every `ErrorReason` but UNSPECIFIED is asserted by a test: here, or in the module that
/// `ELSEWHERE` names, whose source must hold the assertion.
#[test]
fn every_reason_is_provoked_by_a_test() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/");
    let here = std::fs::read_to_string(format!("{root}tests/it/error_reasons.rs")).expect("src");
    let proto = std::fs::read_to_string(format!("{root}proto/piivault/v1/errors.proto"))
        .expect("errors.proto");
    let reasons: Vec<&str> = proto
        .lines()
        .filter_map(|l| l.trim().split_once(" = "))
        .map(|(name, _)| name)
        .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .filter(|n| *n != "ERROR_REASON_UNSPECIFIED")
        .collect();
    assert!(reasons.len() >= 20, "{reasons:?}");
    for reason in reasons {
        assert!(pb::ErrorReason::from_str_name(reason).is_some(), "{reason}");
        let quoted = format!("\"{reason}\"");
        let asserted = match ELSEWHERE.iter().find(|(r, _)| *r == reason) {
            Some((_, "the lib's api::tests")) => {
                std::fs::read_to_string(format!("{root}src/api/mod.rs")).expect("src")
            }
            Some((_, module)) => {
                let path = module.replace("::", "/");
                std::fs::read_to_string(format!("{root}tests/it/{path}.rs")).expect("src")
            }
            None => here.clone(),
        };
        let checked = asserted.match_indices(&quoted).any(|(at, _)| {
            asserted[..at]
                .rfind("assert_reason(")
                .is_some_and(|s| at - s < 300)
        });
        assert!(checked, "no test asserts {reason}");
    }
}
