//! Access report and portable export: the report lists every field and the recipients of
//! earlier reads, with consents and restriction; the export is the same content as one
//! JSON document. Scale and erasure are in `export`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pb::subject_rights_service_client::SubjectRightsServiceClient;
use pii_vault::domain::{Consent, Purpose, SubjectId, SubjectState, TenantId, Timestamp};
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::proto::v1 as pb;
use pii_vault::service::EXPORT_SCHEMA;
use pii_vault::storage::{SledStore, StateRecord, Store};
use serde_json::Value as Json;
use tonic::transport::Channel;
use tonic::Code;

use crate::util::{channel_as, client_for, put, start_with_policy, text, TestVault};

mod export;

const POLICY: &str = r#"
[roles]
app = ["uri:spiffe://test/app"]
support = ["uri:spiffe://test/support"]
billing = ["uri:spiffe://test/billing"]
dsr = ["uri:spiffe://test/dsr"]
security = ["uri:spiffe://test/security"]

[[rules]]
name = "app-writes"
who = ["role:app"]
actions = ["write"]

[[rules]]
name = "support-reads"
who = ["role:support"]
actions = ["read"]
purposes = ["support"]
render = "masked"

[[rules]]
name = "billing-reads"
who = ["role:billing"]
actions = ["read"]
categories = ["payment", "account"]
purposes = ["billing"]
render = "reveal"

[[rules]]
name = "dsr"
who = ["role:dsr"]
actions = ["access_report", "export"]
categories = ["account", "payment", "conversation", "profile"]
purposes = ["data_subject_request", "legal_obligation"]
render = "whole"

[[rules]]
name = "security"
who = ["role:security"]
actions = ["tenant_admin", "erase"]
"#;

const DAY_SECS: i64 = 86_400;

fn rights(c: &Channel) -> SubjectRightsServiceClient<Channel> {
    SubjectRightsServiceClient::new(c.clone())
}

fn records(c: &Channel) -> pb::record_service_client::RecordServiceClient<Channel> {
    pb::record_service_client::RecordServiceClient::new(c.clone())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .expect("clock after 1970")
}

fn micros(t: &Option<prost_types::Timestamp>) -> u64 {
    let t = t.as_ref().expect("time is set");
    t.seconds as u64 * 1_000_000 + t.nanos as u64 / 1000
}

fn typed(name: &str, category: pb::Category, kind: pb::value::Kind) -> pb::FieldInput {
    pb::FieldInput {
        expected_version: None,
        indexed: false,
        ttl_seconds: 0,
        transaction_record: false,
        name: name.into(),
        category: category as i32,
        value: Some(pb::Value { kind: Some(kind) }),
    }
}

async fn access(
    c: &Channel, tenant: &str, subject: &str,
) -> Result<pb::AccessReport, tonic::Status> {
    rights(c)
        .access_subject(pb::AccessSubjectRequest {
            tenant_id: tenant.into(),
            subject_id: subject.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The export document's chunks, in order.
async fn export_chunks(
    c: &Channel, tenant: &str, subject: &str, purpose: &str,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut stream = rights(c)
        .export_subject(pb::ExportSubjectRequest {
            tenant_id: tenant.into(),
            subject_id: subject.into(),
            purpose: purpose.into(),
        })
        .await?
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await? {
        chunks.push(chunk.data);
    }
    Ok(chunks)
}

async fn export_json(
    c: &Channel, tenant: &str, subject: &str, purpose: &str,
) -> Result<Json, tonic::Status> {
    let doc: Vec<u8> = export_chunks(c, tenant, subject, purpose).await?.concat();
    Ok(serde_json::from_slice(&doc).expect("the export is one JSON document"))
}

fn assert_erased(err: &tonic::Status) {
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("erased"), "{err:?}");
}

/// The text of a report field's value (bytes as hex, as the export writes them).
fn shown(f: &pb::HeldField) -> Option<String> {
    use pb::value::Kind;
    let field = f.field.as_ref().expect("field");
    field
        .value
        .as_ref()
        .and_then(|v| v.kind.clone())
        .map(|k| match k {
            Kind::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
            Kind::Text(s)
            | Kind::Email(s)
            | Kind::Phone(s)
            | Kind::CardNumber(s)
            | Kind::Iban(s)
            | Kind::Date(s) => s,
        })
}

#[tokio::test]
async fn the_access_report_lists_every_field_and_the_recipients_of_earlier_reads() {
    let vault = start_with_policy(POLICY).await;
    let as_role = |name: &str| client_for(&vault, name, &format!("spiffe://test/{name}"));
    let (app, support, billing, dsr, security) = (
        channel_as(&vault, &as_role("app")).await,
        channel_as(&vault, &as_role("support")).await,
        channel_as(&vault, &as_role("billing")).await,
        channel_as(&vault, &as_role("dsr")).await,
        channel_as(&vault, &as_role("security")).await,
    );
    pb::tenant_service_client::TenantServiceClient::new(security.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("create tenant");
    use pb::value::Kind;
    put(
        &mut records(&app),
        "acme",
        "alice",
        vec![
            typed(
                "email",
                pb::Category::Account,
                Kind::Email("Alice@Example.com".into()),
            ),
            typed(
                "card",
                pb::Category::Payment,
                Kind::CardNumber("4242 4242 4242 4242".into()),
            ),
            text("chat", pb::Category::Conversation, "hello model"),
            text("login", pb::Category::Log, "login from 10.0.0.1"),
            typed(
                "avatar",
                pb::Category::Profile,
                Kind::Bytes(vec![1, 2, 0xfe]),
            ),
        ],
    )
    .await
    .expect("put alice");
    put(
        &mut records(&app),
        "acme",
        "bob",
        vec![text("email", pb::Category::Account, "bob@example.com")],
    )
    .await
    .expect("put bob");

    // Reads with different callers and purposes; a refused read and a read of another
    // subject must not appear among alice's recipients.
    let read = |c: &Channel, subject: &str, names: &[&str], purpose: &str| {
        let mut client = records(c);
        let req = pb::GetFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: subject.into(),
            field_names: names.iter().map(|s| (*s).to_owned()).collect(),
            purpose: purpose.into(),
        };
        async move { client.get_fields(req).await }
    };
    let t0 = now_micros();
    read(&support, "alice", &["email", "chat"], "support")
        .await
        .expect("support reads");
    let t1 = now_micros();
    read(&billing, "alice", &["card"], "billing")
        .await
        .expect("billing reads");
    let t2 = now_micros();
    let refused = read(&support, "alice", &["card"], "billing").await;
    assert_eq!(refused.expect_err("no rule").code(), Code::PermissionDenied);
    read(&billing, "bob", &["email"], "billing")
        .await
        .expect("bob");

    let report = access(&dsr, "acme", "alice").await.expect("access report");
    assert_eq!(
        (report.tenant_id.as_str(), report.subject_id.as_str()),
        ("acme", "alice")
    );
    assert!(!report.restricted && report.consents.is_empty());
    let by_name: HashMap<&str, &pb::HeldField> = report
        .fields
        .iter()
        .map(|f| (f.field.as_ref().expect("field").name.as_str(), f))
        .collect();
    assert_eq!(by_name.len(), 5, "every field is listed: {by_name:?}");
    let expect = [
        (
            "email",
            pb::Category::Account,
            "email",
            Some("alice@example.com"),
            None,
        ),
        (
            "card",
            pb::Category::Payment,
            "card_number",
            Some("424242******4242"),
            Some(7 * 365),
        ),
        (
            "chat",
            pb::Category::Conversation,
            "text",
            Some("hello model"),
            Some(90),
        ),
        // The dsr rule does not cover logs: listed, but redacted.
        ("login", pb::Category::Log, "text", None, Some(365)),
        (
            "avatar",
            pb::Category::Profile,
            "bytes",
            Some("0102fe"),
            None,
        ),
    ];
    for (name, category, kind, value, days) in expect {
        let held = by_name[name];
        let field = held.field.as_ref().expect("field");
        assert_eq!(field.category, category as i32, "{name}");
        assert_eq!(held.kind, kind, "{name}");
        assert_eq!(shown(held).as_deref(), value, "{name}");
        let rendering = match value {
            Some(_) => pb::Rendering::Whole,
            None => pb::Rendering::Redacted,
        };
        assert_eq!(field.rendering, rendering as i32, "{name}");
        assert_eq!(field.version, 1);
        assert!(micros(&field.created_at) >= micros(&report.subject_created_at));
        let retention = held.retention.as_ref().expect("retention");
        assert!(!retention.description.is_empty());
        assert_eq!(retention.period_days, days.unwrap_or(0), "{name}");
        match days {
            Some(d) => assert_eq!(
                held.expires_at.as_ref().expect("expiry").seconds,
                field.updated_at.as_ref().expect("updated").seconds + d as i64 * DAY_SECS,
                "{name}"
            ),
            None => assert!(held.expires_at.is_none(), "{name} has no fixed expiry"),
        }
    }
    assert!(by_name["email"]
        .retention
        .as_ref()
        .expect("rule")
        .description
        .contains("30 days"));

    let recipients: Vec<_> = report
        .recipients
        .iter()
        .map(|r| {
            (
                r.caller.as_str(),
                r.operation.as_str(),
                r.purpose.as_str(),
                r.field_names.clone(),
            )
        })
        .collect();
    assert_eq!(
        recipients,
        [
            (
                "uri:spiffe://test/support",
                "get_fields",
                "support",
                vec!["chat".to_owned(), "email".to_owned()]
            ),
            (
                "uri:spiffe://test/billing",
                "get_fields",
                "billing",
                vec!["card".to_owned()]
            ),
        ]
    );
    let (support_at, billing_at) = (
        micros(&report.recipients[0].time),
        micros(&report.recipients[1].time),
    );
    assert!(
        (t0..=t1).contains(&support_at),
        "{t0} <= {support_at} <= {t1}"
    );
    assert!(
        (t1..=t2).contains(&billing_at),
        "{t1} <= {billing_at} <= {t2}"
    );
    assert!(report
        .recipients
        .iter()
        .all(|r| !r.request_id.is_empty() && r.seq > 0));

    // The export has the same content, and lists the access report as a recipient.
    let doc = export_json(&dsr, "acme", "alice", "data_subject_request")
        .await
        .expect("export");
    assert_eq!(doc["schema"], EXPORT_SCHEMA);
    assert_eq!(
        (doc["tenant"].as_str(), doc["subject"].as_str()),
        (Some("acme"), Some("alice"))
    );
    assert_eq!(doc["restriction"]["restricted"], false);
    assert_eq!(doc["field_count"], 5);
    let fields = doc["fields"].as_array().expect("fields");
    assert_eq!(fields.len(), 5);
    for f in fields {
        let name = f["name"].as_str().expect("name");
        let held = by_name[name];
        assert_eq!(
            f["value"].as_str().map(str::to_owned),
            shown(held),
            "{name}"
        );
        assert_eq!(f["kind"], held.kind);
        assert_eq!(
            f["retention"]["period_days"].as_u64().unwrap_or(0),
            held.retention.as_ref().expect("rule").period_days
        );
        assert_eq!(
            f["retention"]["expires_at"].is_null(),
            held.expires_at.is_none()
        );
        assert!(f["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    assert_eq!(
        fields.iter().find(|f| f["name"] == "login").expect("login")["rendering"],
        "redacted"
    );
    let recipients = doc["recipients"].as_array().expect("recipients");
    assert_eq!(doc["recipient_count"], 3);
    let ops: Vec<(&str, &str)> = recipients
        .iter()
        .map(|r| {
            (
                r["caller"].as_str().unwrap_or(""),
                r["operation"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("uri:spiffe://test/support", "get_fields"),
            ("uri:spiffe://test/billing", "get_fields"),
            ("uri:spiffe://test/dsr", "access_subject"),
        ],
        "the export's own event is not among its recipients"
    );
    // The access report recorded the fields whose values it showed (not the redacted log).
    let mut shown_by_report: Vec<&str> = recipients[2]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    shown_by_report.sort_unstable();
    assert_eq!(shown_by_report, ["avatar", "card", "chat", "email"]);
    assert_eq!(recipients[0]["purpose"], "support");
    assert_eq!(
        recipients[0]["seq"].as_u64(),
        Some(report.recipients[0].seq)
    );

    // A later report lists the export too.
    let again = access(&dsr, "acme", "alice").await.expect("again");
    let last = again.recipients.last().expect("recipients");
    assert_eq!(
        (last.operation.as_str(), last.purpose.as_str()),
        ("export_subject", "data_subject_request")
    );
    assert!(last.field_names.is_empty(), "an export reads every field");

    // Others may not ask for reports or exports.
    let denied = access(&support, "acme", "alice")
        .await
        .expect_err("support");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = export_chunks(&billing, "acme", "alice", "billing")
        .await
        .expect_err("billing");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Consents and restriction (written straight to the store while the vault is down).
    drop((app, support, billing, dsr, security));
    let config = vault.config.clone();
    let dir = vault.stop().await;
    {
        let store = SledStore::open(&config.store_dir(), 1 << 20).expect("open");
        let state = SubjectState {
            consents: vec![Consent {
                purpose: Purpose::parse("marketing").expect("purpose"),
                granted: true,
                at: Timestamp(1_700_000_000_000_000),
                source: "signup-form".into(),
            }],
            restricted_since: Some(Timestamp(1_710_000_000_000_000)),
        };
        let (acme, alice) = (
            TenantId::parse("acme").expect("id"),
            SubjectId::parse("alice").expect("id"),
        );
        // Sealed as the vault seals it, or the vault refuses the record.
        let store: Arc<dyn Store> = Arc::new(store);
        let root = RootKeys::load(&dir.path().join("root.key")).expect("root key");
        let sealer = Keyring::open(root, store.clone())
            .expect("keyring")
            .record_sealer(&acme)
            .expect("sealer");
        let seal = |stored: &StateRecord| {
            Ok(Some(sealer.seal_state(
                &alice,
                state.clone(),
                stored.seq() + 1,
            )))
        };
        store
            .update_subject_state(&acme, &alice, &seal)
            .expect("state");
        store.flush().expect("flush");
    }
    let vault = TestVault::start_on(dir, config, None).await;
    let dsr = channel_as(&vault, &client_for(&vault, "dsr", "spiffe://test/dsr")).await;
    let report = access(&dsr, "acme", "alice")
        .await
        .expect("restricted subjects get reports");
    assert!(report.restricted);
    assert_eq!(
        report.restricted_since.as_ref().map(|t| t.seconds),
        Some(1_710_000_000)
    );
    assert_eq!(report.consents.len(), 1);
    assert_eq!(
        (
            report.consents[0].purpose.as_str(),
            report.consents[0].granted,
            report.consents[0].source.as_str()
        ),
        ("marketing", true, "signup-form")
    );
    let refused = export_chunks(&dsr, "acme", "alice", "data_subject_request")
        .await
        .expect_err("restricted");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let doc = export_json(&dsr, "acme", "alice", "legal_obligation")
        .await
        .expect("a legal obligation may export a restricted subject");
    assert_eq!(doc["restriction"]["restricted"], true);
    assert_eq!(doc["restriction"]["since"], "2024-03-09T16:00:00.000000Z");
    assert_eq!(doc["consents"][0]["purpose"], "marketing");
    assert_eq!(
        doc["consents"][0]["decided_at"],
        "2023-11-14T22:13:20.000000Z"
    );
    assert_eq!(doc["field_count"], 5);
}

#[tokio::test]
async fn the_report_and_the_export_list_retained_records_and_tokens_without_their_values() {
    let vault = TestVault::start().await;
    crate::util::create_tenant(&vault, "acme").await;
    let c = vault.channel().await;
    let mut payment = typed(
        "last_payment",
        pb::Category::Payment,
        pb::value::Kind::Text("EUR 12.00 on 2026-11-30".into()),
    );
    payment.transaction_record = true;
    // A transaction record goes in a request of its own (it lives under another key).
    for fields in [
        vec![text("email", pb::Category::Account, "alice@example.com")],
        vec![payment],
    ] {
        put(&mut records(&c), "acme", "alice", fields)
            .await
            .expect("put");
    }
    let token = pb::token_service_client::TokenServiceClient::new(c.clone())
        .tokenize(pb::TokenizeRequest {
            tenant_id: "acme".into(),
            subject_id: "alice".into(),
            card_number: "4111111111111111".into(),
            idempotency_key: String::new(),
        })
        .await
        .expect("tokenize")
        .into_inner()
        .token;

    let report = access(&c, "acme", "alice").await.expect("report");
    let by_name: HashMap<String, &pb::HeldField> = report
        .fields
        .iter()
        .map(|f| (f.field.as_ref().expect("field").name.clone(), f))
        .collect();
    assert_eq!(by_name.len(), 3, "{report:?}");
    assert!(!by_name["email"].legal_retention);
    let retained = by_name["last_payment"];
    assert!(retained.legal_retention, "{retained:?}");
    // Kept for the payment category's seven years after its last write.
    let until = micros(&retained.expires_at);
    let seven_years = 7 * 365 * DAY_SECS as u64 * 1_000_000;
    assert!(
        until > now_micros() + seven_years - 2 * DAY_SECS as u64 * 1_000_000,
        "{retained:?}"
    );
    let listed = by_name[&token];
    assert_eq!(listed.kind, "card_token");
    assert!(
        shown(listed).is_none(),
        "a token is listed without its card: {listed:?}"
    );

    let doc = export_json(&c, "acme", "alice", "data_subject_request")
        .await
        .expect("export");
    let fields = doc["fields"].as_array().expect("fields");
    assert_eq!(doc["field_count"], 3);
    let field = |name: &str| {
        fields
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {doc}"))
    };
    assert_eq!(field("last_payment")["legal_retention"], true);
    assert_eq!(field("email")["legal_retention"], false);
    assert_eq!(field(&token)["kind"], "card_token");
    assert!(field(&token)["value"].is_null());
    assert!(!doc.to_string().contains("4111111111111111"));
    vault.stop().await;
}
