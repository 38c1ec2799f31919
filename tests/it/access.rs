//! Access report and portable export: the report lists every field and the recipients of
//! earlier reads; the export is the same content as one JSON document, streamed in bounded
//! chunks even for 100,000 fields; an erased subject has neither, also after a restart.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pb::subject_rights_service_client::SubjectRightsServiceClient;
use pii_vault::domain::{Consent, Purpose, SubjectId, SubjectState, TenantId, Timestamp};
use pii_vault::proto::v1 as pb;
use pii_vault::service::{EXPORT_CHUNK, EXPORT_SCHEMA};
use pii_vault::storage::faults::FaultyStore;
use pii_vault::storage::{SledStore, Store};
use serde::Deserialize;
use serde_json::Value as Json;
use tonic::transport::Channel;
use tonic::Code;

use crate::erasure::erase;
use crate::util::{
    channel_as, client_for, create_tenant, put, start_with_policy, test_config, text, TestVault,
};

const POLICY: &str = r#"
[roles]
app = ["spiffe://test/app"]
support = ["spiffe://test/support"]
billing = ["spiffe://test/billing"]
dsr = ["spiffe://test/dsr"]
security = ["spiffe://test/security"]

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
        indexed: false,
        ttl_seconds: 0,
        transaction_record: false,
        name: name.into(),
        category: category as i32,
        value: Some(pb::Value { kind: Some(kind) }),
    }
}

async fn access(
    c: &Channel,
    tenant: &str,
    subject: &str,
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
    c: &Channel,
    tenant: &str,
    subject: &str,
    purpose: &str,
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
    c: &Channel,
    tenant: &str,
    subject: &str,
    purpose: &str,
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
                "spiffe://test/support",
                "get_fields",
                "support",
                vec!["chat".to_owned(), "email".to_owned()]
            ),
            (
                "spiffe://test/billing",
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
            ("spiffe://test/support", "get_fields"),
            ("spiffe://test/billing", "get_fields"),
            ("spiffe://test/dsr", "access_subject"),
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
        store
            .set_subject_state(&acme, &alice, &state)
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

/// Resident and peak resident set of this process, in KiB (Linux).
fn rss_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((get("VmRSS:")?, get("VmHWM:")?))
}

#[derive(Deserialize)]
struct ExportDoc {
    schema: String,
    subject: String,
    field_count: u64,
    fields: Vec<ExportField>,
    recipient_count: u64,
    recipients: Vec<Json>,
}

#[derive(Deserialize)]
struct ExportField {
    name: String,
    category: String,
    value: Option<String>,
    rendering: String,
    version: u64,
}

const BIG: usize = 100_000;
const BATCH: usize = 1000;

fn big_value(i: usize) -> String {
    format!("value {i:06} of a subject with very many fields")
}

#[tokio::test]
async fn a_subject_with_100000_fields_exports_in_bounded_chunks_and_memory() {
    let dir = tempfile::TempDir::new().expect("dir");
    let config = test_config(dir.path(), |_| {});
    let sled = SledStore::open(&config.store_dir(), 1 << 24).expect("open");
    let store = FaultyStore::new(Arc::new(sled));
    let faults = store.faults.clone();
    let vault = TestVault::start_on(dir, config, Some(Arc::new(store))).await;
    create_tenant(&vault, "acme").await;
    let channel = vault.channel().await;
    let mut client = records(&channel);
    for batch in 0..BIG / BATCH {
        let fields = (batch * BATCH..(batch + 1) * BATCH)
            .map(|i| text(&format!("f{i:06}"), pb::Category::Usage, &big_value(i)))
            .collect();
        put(&mut client, "acme", "big", fields)
            .await
            .expect("put batch");
    }
    crate::util::get(&mut client, "acme", "big", &["f000007"])
        .await
        .expect("one read, to be listed as a recipient");

    // Reset the peak RSS counter (Linux: writing 5 to clear_refs), so VmHWM below is the
    // peak during the export alone. Other tests run in this process too: the RSS figures are
    // printed as evidence, the asserted bound is the store's page counters.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = rss_kib();
    let loads_before = faults.whole_field_loads.load(Ordering::SeqCst);
    faults.largest_field_page.store(0, Ordering::SeqCst);

    // Stream the document to a file, never holding it in memory here either.
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut file = std::io::BufWriter::new(out.reopen().expect("reopen"));
    let mut stream = rights(&channel)
        .export_subject(pb::ExportSubjectRequest {
            tenant_id: "acme".into(),
            subject_id: "big".into(),
            purpose: "data_subject_request".into(),
        })
        .await
        .expect("export starts")
        .into_inner();
    let (mut chunks, mut bytes, mut largest) = (0usize, 0usize, 0usize);
    while let Some(chunk) = stream.message().await.expect("chunk") {
        assert!(!chunk.data.is_empty(), "no empty chunks");
        assert!(
            chunk.data.len() <= EXPORT_CHUNK,
            "chunk of {} bytes",
            chunk.data.len()
        );
        largest = largest.max(chunk.data.len());
        chunks += 1;
        bytes += chunk.data.len();
        file.write_all(&chunk.data).expect("write");
    }
    file.flush().expect("flush");
    drop(file);
    let after = rss_kib();

    let largest_page = faults.largest_field_page.load(Ordering::SeqCst);
    let loads = faults.whole_field_loads.load(Ordering::SeqCst) - loads_before;
    if let (Some((rss0, _)), Some((rss1, peak))) = (before, after) {
        eprintln!(
            "export of {BIG} fields: {bytes} bytes in {chunks} chunks (largest {largest}); \
             store pages of at most {largest_page} fields, {loads} whole-subject loads; \
             RSS {rss0} KiB before, {rss1} KiB after, peak during export {peak} KiB \
             (peak reset: {reset}, +{} KiB)",
            peak.saturating_sub(rss0)
        );
    }
    assert_eq!(
        loads, 0,
        "the export never loads all fields of the subject at once"
    );
    assert!(
        (1..=128).contains(&largest_page),
        "the exporter holds one page of at most 128 field records, saw {largest_page}"
    );
    assert!(
        chunks >= bytes / EXPORT_CHUNK,
        "{chunks} chunks for {bytes} bytes"
    );
    assert_eq!(
        largest, EXPORT_CHUNK,
        "full chunks while the document is large"
    );

    let doc: ExportDoc = serde_json::from_reader(BufReader::new(
        std::fs::File::open(out.path()).expect("open"),
    ))
    .expect("the concatenated chunks are one JSON document");
    assert_eq!(
        (doc.schema.as_str(), doc.subject.as_str()),
        (EXPORT_SCHEMA, "big")
    );
    assert_eq!(doc.field_count, BIG as u64);
    assert_eq!(doc.fields.len(), BIG);
    let mut seen = vec![false; BIG];
    for f in &doc.fields {
        let i: usize = f.name[1..].parse().expect("f<index>");
        assert!(!seen[i], "{} listed twice", f.name);
        seen[i] = true;
        assert_eq!(
            f.value.as_deref(),
            Some(big_value(i).as_str()),
            "{}",
            f.name
        );
        assert_eq!(
            (f.category.as_str(), f.rendering.as_str(), f.version),
            ("usage", "revealed", 1)
        );
    }
    assert!(seen.iter().all(|s| *s), "every field is present");
    assert_eq!(doc.recipient_count, 1);
    assert_eq!(doc.recipients[0]["fields"][0], "f000007");
}

#[tokio::test]
async fn an_erased_subject_has_no_report_and_no_export_also_after_a_restart() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let channel = vault.channel().await;
    put(
        &mut records(&channel),
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "alice@example.com")],
    )
    .await
    .expect("put");

    // The export command writes the document to a file (only under its name when complete).
    let file = vault.data_dir().join("alice.json");
    // Run off the test's runtime thread, which also serves the vault.
    let cli = |out: std::path::PathBuf| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"));
        cmd.args(["export", "acme", "alice", "--out"])
            .arg(out)
            .arg("--addr")
            .arg(vault.addr.to_string())
            .arg("--data-dir")
            .arg(vault.data_dir());
        async move {
            tokio::task::spawn_blocking(move || cmd.output())
                .await
                .expect("join")
                .expect("run export")
        }
    };
    let done = cli(file.clone()).await;
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let doc: Json = serde_json::from_slice(&std::fs::read(&file).expect("file")).expect("json");
    assert_eq!(doc["schema"], EXPORT_SCHEMA);
    assert_eq!(doc["fields"][0]["value"], "alice@example.com");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the export holds personal data");
    }

    erase(channel.clone(), "acme", "alice")
        .await
        .expect("erase");
    assert_erased(&access(&channel, "acme", "alice").await.expect_err("access"));
    assert_erased(
        &export_chunks(&channel, "acme", "alice", "data_subject_request")
            .await
            .expect_err("export"),
    );
    let gone = vault.data_dir().join("gone.json");
    let failed = cli(gone.clone()).await;
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("erased"));
    assert!(!gone.exists());
    assert!(!vault.data_dir().join("gone.json.partial").exists());

    // Never known: NOT_FOUND without "erased".
    let unknown = access(&channel, "acme", "carol")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(!unknown.message().contains("erased"));

    drop(channel);
    let vault = vault.restart().await;
    let channel = vault.channel().await;
    assert_erased(
        &access(&channel, "acme", "alice")
            .await
            .expect_err("after restart"),
    );
    assert_erased(
        &export_chunks(&channel, "acme", "alice", "data_subject_request")
            .await
            .expect_err("after restart"),
    );
}

#[tokio::test]
async fn field_pages_cover_one_subject_exactly() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    for (subject, n) in [("a", 7), ("a0", 2), ("b", 3)] {
        let fields = (0..n)
            .map(|i| text(&format!("n{i}"), pb::Category::Usage, "x"))
            .collect();
        put(&mut client, "acme", subject, fields)
            .await
            .expect("put");
    }
    drop(client);
    let dir = vault.stop().await;
    let store = SledStore::open(&dir.path().join("store"), 1 << 20).expect("open");
    let acme = TenantId::parse("acme").expect("id");
    let a = SubjectId::parse("a").expect("id");
    let mut names = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = store.fields_page(&acme, &a, names.last(), 3).expect("page");
        sizes.push(page.len());
        if page.is_empty() {
            break;
        }
        names.extend(page.into_iter().map(|r| r.meta.name));
    }
    assert_eq!(sizes, [3, 3, 1, 0]);
    let all: Vec<_> = store
        .fields(&acme, &a)
        .expect("fields")
        .into_iter()
        .map(|r| r.meta.name)
        .collect();
    assert_eq!(
        names, all,
        "pages are the whole subject, in order, and nothing else"
    );
    let missing = SubjectId::parse("nobody").expect("id");
    assert!(store
        .fields_page(&acme, &missing, None, 3)
        .expect("page")
        .is_empty());
}
