//! Logs of the real binary at debug level: every line of a request carries its request id,
//! and no field value or root key byte ever reaches them, whatever the request did.

use std::time::Duration;

use pb::record_service_client::RecordServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use pii_vault::proto::v1 as pb;
use tempfile::TempDir;

use crate::process::VaultProcess;
use crate::util::text;

const PLANTED: &str = "planted-secret-4d9c2e71";

fn with_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("x-request-id", id.parse().expect("ascii id"));
    req
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// `with_id`, with a W3C `traceparent` header.
fn with_trace<T>(message: T, id: &str, traceparent: &str) -> tonic::Request<T> {
    let mut req = with_id(message, id);
    req.metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    req
}

fn put_request(subject: &str, fields: Vec<pb::FieldInput>) -> pb::PutFieldsRequest {
    pb::PutFieldsRequest {
        tenant_id: "acme".into(),
        subject_id: subject.into(),
        fields,
        idempotency_key: String::new(),
    }
}

/// The hex key strings of the root key file.
fn root_key_hex(data_dir: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(data_dir.join("root.key")).expect("root key file");
    let keys: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("key = \""))
        .map(|rest| rest.trim_end_matches('"').to_owned())
        .collect();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.len() == 64),
        "{keys:?}"
    );
    keys
}

#[tokio::test]
async fn debug_logs_carry_request_ids_and_never_values_or_key_bytes() {
    let dir = TempDir::new().expect("temp dir");
    let log_dir = TempDir::new().expect("temp dir");
    let log = log_dir.path().join("vault.log");
    let vault = VaultProcess::start(dir.path(), &log, &[]).await;

    let channel = vault.channel().await;
    let mut tenants = TenantServiceClient::new(channel.clone());
    let mut records = RecordServiceClient::new(channel);
    tenants
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("create tenant");
    let planted = || text("email", pb::Category::Account, PLANTED);
    records
        .put_fields(with_id(put_request("u1", vec![planted()]), "req-log-put"))
        .await
        .expect("put");
    // Trace propagation is off by default: the header is not read.
    let got = records
        .get_fields(with_trace(
            pb::GetFieldsRequest {
                tenant_id: "acme".into(),
                subject_id: "u1".into(),
                field_names: vec![],
                purpose: "support".into(),
            },
            "req-log-get",
            &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
        ))
        .await
        .expect("get");
    assert_eq!(got.into_inner().fields.len(), 1);

    // Bad requests that carry the planted value: each is refused, none may echo it.
    let oversized = text(
        "email",
        pb::Category::Account,
        &PLANTED.repeat(64 * 1024 / PLANTED.len() + 1),
    );
    let bad = [
        put_request(
            "u1",
            vec![text("Bad Name!", pb::Category::Account, PLANTED)],
        ),
        put_request("u1", vec![oversized]),
        put_request(&format!("bad subject {PLANTED}"), vec![planted()]),
        put_request("u1", vec![planted(), planted()]),
        pb::PutFieldsRequest {
            tenant_id: "nobody".into(),
            ..put_request("u1", vec![planted()])
        },
    ];
    for (i, req) in bad.into_iter().enumerate() {
        let status = records
            .put_fields(with_id(req, &format!("req-log-bad-{i}")))
            .await
            .expect_err("refused");
        assert!(!status.message().contains(PLANTED), "{status:?}");
    }
    let status = records
        .get_fields(with_id(
            pb::GetFieldsRequest {
                tenant_id: "acme".into(),
                subject_id: "u1".into(),
                field_names: vec![],
                purpose: format!("Not A Purpose {PLANTED}"),
            },
            "req-log-bad-purpose",
        ))
        .await
        .expect_err("bad purpose");
    assert!(!status.message().contains(PLANTED), "{status:?}");

    let addr = vault.addr.clone();
    vault.terminate();
    let log_text = vault.log_text();
    let status = vault.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");
    let log_text = std::fs::read_to_string(&log).unwrap_or(log_text);

    assert!(
        log_text.lines().count() > 10,
        "expected debug logs:\n{log_text}"
    );
    assert!(!log_text.contains(PLANTED), "a field value reached the log");
    for key in root_key_hex(dir.path()) {
        assert!(
            !log_text.contains(&key) && !log_text.contains(&key.to_uppercase()),
            "root key bytes reached the log"
        );
    }
    // Values are logged plain, as an operator would type them: never Rust's Debug form.
    let serving = log_text
        .lines()
        .find(|l| l.contains("serving (mTLS required"))
        .unwrap_or_else(|| panic!("no serving line:\n{log_text}"));
    let json: serde_json::Value = serde_json::from_str(serving).expect("a JSON log line");
    assert_eq!(json["fields"]["listen"], addr.as_str(), "{serving}");
    for line in log_text.lines() {
        assert!(
            !line.contains("Some(") && !line.contains(r#":"None""#),
            "a Debug-formatted value: {line}"
        );
    }
    // Every request id sent appears, on lines that also name the method.
    for (id, method) in [
        ("req-log-put", "piivault.v1.RecordService/PutFields"),
        ("req-log-get", "piivault.v1.RecordService/GetFields"),
        ("req-log-bad-0", "piivault.v1.RecordService/PutFields"),
        ("req-log-bad-purpose", "piivault.v1.RecordService/GetFields"),
    ] {
        let line = log_text
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("request id {id} not logged:\n{log_text}"));
        assert!(line.contains(method), "{line}");
        let json: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert_eq!(json["span"]["request_id"], id, "{line}");
    }
    assert!(!log_text.contains(TRACE_ID), "traceparent read while off");
}

/// With `[observability] trace_propagation = true`, a request's valid `traceparent` puts
/// its trace id and parent span id into the request's span; an invalid one is ignored.
#[tokio::test]
async fn trace_propagation_puts_the_callers_trace_into_the_span() {
    let dir = TempDir::new().expect("temp dir");
    let other = TempDir::new().expect("temp dir");
    let log = other.path().join("vault.log");
    let config = other.path().join("vault.toml");
    std::fs::write(&config, "[observability]\ntrace_propagation = true\n").expect("config");
    let config_arg = config.to_str().expect("utf-8 path");
    let vault = VaultProcess::start(dir.path(), &log, &["--config", config_arg]).await;
    let mut tenants = TenantServiceClient::new(vault.channel().await);
    let create = |id: &str| pb::CreateTenantRequest {
        tenant_id: id.into(),
    };
    tenants
        .create_tenant(with_trace(
            create("acme"),
            "req-trace-good",
            &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
        ))
        .await
        .expect("create tenant");
    tenants
        .create_tenant(with_trace(
            create("beta"),
            "req-trace-bad",
            &format!("00-{}-{PARENT_ID}-01", TRACE_ID.to_uppercase()),
        ))
        .await
        .expect("create tenant");
    vault.terminate();
    let status = vault.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}");
    let log_text = std::fs::read_to_string(&log).expect("log");

    let span_of = |id: &str| -> serde_json::Value {
        let line = log_text
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("request id {id} not logged:\n{log_text}"));
        let json: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        json["span"].clone()
    };
    let good = span_of("req-trace-good");
    assert_eq!(good["trace_id"], TRACE_ID, "{good}");
    assert_eq!(good["parent_span_id"], PARENT_ID, "{good}");
    let bad = span_of("req-trace-bad");
    assert!(bad.get("trace_id").is_none(), "{bad}");
    assert!(bad.get("parent_span_id").is_none(), "{bad}");
}
