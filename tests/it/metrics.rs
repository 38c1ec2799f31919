//! The Prometheus endpoint: every named series is exposed over plain HTTP with values that
//! match what the test did, and no label carries a subject id or a value.

use std::net::SocketAddr;

use pii_vault::proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{create_tenant, free_port, get, put, text, TestVault};

/// Status line and body of `GET path` on the metrics port (waiting up to 10 s for the
/// server to open it: a test vault starts in a task of its own).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut tries = 0;
    let mut tcp = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => break tcp,
            Err(e) if tries < 200 && e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect to the metrics port: {e}"),
        }
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The value of the sample named exactly `series` (name and labels).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not exposed in:\n{text}"))
        .parse()
        .expect("a number")
}

fn rpc(metric: &str, service: &str, method: &str, code: &str) -> String {
    format!(r#"{metric}{{service="piivault.v1.{service}",method="{method}",code="{code}"}}"#)
}

#[tokio::test]
async fn metrics_endpoint_exposes_rpc_audit_flush_key_and_store_series() {
    let port = free_port();
    let vault =
        TestVault::start_with(|raw| raw.metrics.listen = Some(format!("127.0.0.1:{port}"))).await;
    let metrics_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");

    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    let planted = "planted-metrics-value-7f3a";
    for i in 0..5 {
        put(
            &mut client,
            "acme",
            &format!("subject-{i}"),
            vec![text("email", pb::Category::Account, planted)],
        )
        .await
        .expect("put");
    }
    for i in 0..2 {
        get(&mut client, "acme", &format!("subject-{i}"), &[])
            .await
            .expect("get");
    }
    get(&mut client, "acme", "nobody", &[])
        .await
        .expect_err("not found");

    crate::erasure::erase(vault.channel().await, "acme", "subject-4")
        .await
        .expect("erase");

    let (status, text) = http_get(metrics_addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let requests = "piivault_rpc_requests_total";
    let durations = "piivault_rpc_duration_seconds_count";
    assert_eq!(
        sample(&text, &rpc(requests, "RecordService", "PutFields", "OK")),
        5.0
    );
    assert_eq!(
        sample(&text, &rpc(durations, "RecordService", "PutFields", "OK")),
        5.0
    );
    assert_eq!(
        sample(&text, &rpc(requests, "RecordService", "GetFields", "OK")),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            &rpc(requests, "RecordService", "GetFields", "NOT_FOUND")
        ),
        1.0
    );
    assert_eq!(
        sample(&text, &rpc(requests, "TenantService", "CreateTenant", "OK")),
        1.0
    );
    let put_seconds = sample(
        &text,
        &rpc(
            "piivault_rpc_duration_seconds_sum",
            "RecordService",
            "PutFields",
            "OK",
        ),
    );
    assert!(put_seconds > 0.0 && put_seconds < 60.0, "{put_seconds}");

    // One audit event per call, each made durable by a flush.
    assert!(sample(&text, "piivault_audit_events_total") >= 9.0);
    assert!(sample(&text, "piivault_audit_append_duration_seconds_count") >= 1.0);
    assert_eq!(sample(&text, "piivault_audit_append_failures_total"), 0.0);
    assert!(sample(&text, "piivault_store_flush_duration_seconds_count") >= 1.0);
    assert_eq!(sample(&text, "piivault_store_flush_failures_total"), 0.0);

    assert_eq!(sample(&text, "piivault_erasures_total"), 1.0);
    // Retention deletions happen in the hourly sweep (tests/it/retention.rs drives it
    // in-process).
    assert_eq!(sample(&text, "piivault_retention_deletions_total"), 0.0);
    // Two subjects read once each: two DEK unwraps, no hit yet (tests/it/keys/dek_cache.rs
    // covers hits).
    assert_eq!(sample(&text, "piivault_dek_cache_hits_total"), 0.0);
    assert_eq!(sample(&text, "piivault_dek_cache_misses_total"), 2.0);
    assert_eq!(
        sample(&text, r#"piivault_tenant_key_version{tenant="acme"}"#),
        1.0
    );
    assert!(sample(&text, "piivault_store_size_bytes") > 0.0);

    // What is running, and what the process uses (read from /proc at the scrape).
    let build = format!(
        r#"piivault_build_info{{version="{}",commit="#,
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&build), "{build} missing from:\n{text}");
    if cfg!(target_os = "linux") {
        assert!(sample(&text, "process_resident_memory_bytes") > 1e6);
        assert!(sample(&text, "process_open_fds") >= 3.0);
        assert!(sample(&text, "process_cpu_seconds_total") > 0.0);
        let started = sample(&text, "process_start_time_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(started > now - 3600.0 && started <= now + 1.0, "{started}");
    }

    // A tenant key rotation: the background re-wrap reports its progress and the new version.
    pb::key_service_client::KeyServiceClient::new(vault.channel().await)
        .rotate_tenant_key(pb::RotateTenantKeyRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("rotate");
    let progress = r#"piivault_rewrap_progress_ratio{tenant="acme"}"#;
    let version = r#"piivault_tenant_key_version{tenant="acme"}"#;
    let mut rotated = String::new();
    for _ in 0..200 {
        rotated = http_get(metrics_addr, "/metrics").await.1;
        if rotated.contains(progress) && sample(&rotated, version) == 2.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&rotated, progress), 1.0, "{rotated}");
    assert_eq!(sample(&rotated, version), 2.0);

    // Tenant ids are labels; subject ids and values are not.
    assert!(
        !text.contains("subject-"),
        "a subject id leaked into:\n{text}"
    );
    assert!(!text.contains(planted));

    let (status, _) = http_get(metrics_addr, "/other").await;
    assert!(status.contains("404"), "{status}");
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Key epochs and re-wraps expose when they last succeeded and when they last failed, so an
/// alert can fire when erasures stop becoming final.
#[tokio::test]
async fn key_jobs_expose_their_last_success_and_failure() {
    let port = free_port();
    let (vault, faults) = crate::util::faulty_vault(|raw| {
        raw.metrics.listen = Some(format!("127.0.0.1:{port}"));
    })
    .await;
    let metrics_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut keys = pb::key_service_client::KeyServiceClient::new(vault.channel().await);
    let success =
        |job: &str| format!(r#"piivault_key_job_last_success_timestamp_seconds{{job="{job}"}}"#);
    let failure =
        |job: &str| format!(r#"piivault_key_job_last_failure_timestamp_seconds{{job="{job}"}}"#);

    let before = unix_now();
    let (_, text) = http_get(metrics_addr, "/metrics").await;
    assert!(!text.contains(&success("key_epoch")), "{text}");

    // An epoch whose flush fails is a failure.
    pii_vault::storage::faults::Faults::set(&faults.fail_flush, true);
    keys.run_key_epoch(pb::RunKeyEpochRequest {})
        .await
        .expect_err("an epoch that cannot flush fails");
    pii_vault::storage::faults::Faults::set(&faults.fail_flush, false);
    let (_, text) = http_get(metrics_addr, "/metrics").await;
    let failed_at = sample(&text, &failure("key_epoch"));
    assert!(
        failed_at >= before - 1.0 && failed_at <= unix_now() + 1.0,
        "{failed_at}"
    );
    assert!(!text.contains(&success("key_epoch")), "{text}");

    // Then one that succeeds; the failure stays as it was.
    keys.run_key_epoch(pb::RunKeyEpochRequest {})
        .await
        .expect("epoch");
    let (_, text) = http_get(metrics_addr, "/metrics").await;
    let succeeded_at = sample(&text, &success("key_epoch"));
    assert!(
        succeeded_at >= failed_at && succeeded_at <= unix_now() + 1.0,
        "{succeeded_at}"
    );
    assert_eq!(sample(&text, &failure("key_epoch")), failed_at);

    // A tenant rotation's background re-wrap.
    create_tenant(&vault, "acme").await;
    keys.rotate_tenant_key(pb::RotateTenantKeyRequest {
        tenant_id: "acme".into(),
    })
    .await
    .expect("rotate");
    let mut text = String::new();
    for _ in 0..200 {
        text = http_get(metrics_addr, "/metrics").await.1;
        if text.contains(&success("rewrap")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(sample(&text, &success("rewrap")) >= succeeded_at, "{text}");
    assert!(!text.contains(&failure("rewrap")), "{text}");
}
