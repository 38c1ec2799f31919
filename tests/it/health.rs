//! Health that tells the truth (issue 18, item 1): gRPC health and `/readyz` turn
//! NOT_SERVING while the store cannot be written, while audit appends fail, and once
//! shutdown begins; they come back when the store does. `/livez` answers throughout.

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pii_vault::proto::v1 as pb;
use pii_vault::storage::faults::Faults;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use pb::record_service_client::RecordServiceClient;

use crate::metrics::http_get;
use crate::process::VaultProcess;
use crate::util::{create_tenant, faulty_vault, free_port, get, put, text};

const RECORDS: &str = "piivault.v1.RecordService";

async fn grpc_health(c: &Channel, service: &str) -> ServingStatus {
    let status = HealthClient::new(c.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("a known status")
}

/// Polls `probe` until it returns true, for at most 15 s.
async fn eventually<F: Future<Output = bool>>(what: &str, mut probe: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !probe().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `/readyz` answers `status` with a body containing `reason`, and the server as a
/// whole and the record service report `grpc` over gRPC health.
async fn reports(
    metrics: SocketAddr, c: &Channel, status: &str, reason: &str, grpc: ServingStatus,
) -> bool {
    let (line, body) = http_get(metrics, "/readyz").await;
    line.contains(status)
        && body.contains(reason)
        && grpc_health(c, "").await == grpc
        && grpc_health(c, RECORDS).await == grpc
}

#[tokio::test]
async fn health_follows_the_store_and_the_audit_log() {
    let port = free_port();
    let (vault, faults) =
        faulty_vault(|raw| raw.metrics.listen = Some(format!("127.0.0.1:{port}"))).await;
    let metrics: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let c = vault.channel().await;
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;
    put(
        &mut records,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "a@example.com")],
    )
    .await
    .expect("put");
    let serving = ServingStatus::Serving;
    let not_serving = ServingStatus::NotServing;
    eventually("ready at start", || {
        reports(metrics, &c, "200", "ready", serving)
    })
    .await;

    Faults::set(&faults.fail_flush, true);
    eventually("not serving while flushes fail", || {
        reports(metrics, &c, "503", "store cannot be written", not_serving)
    })
    .await;
    let (live, _) = http_get(metrics, "/livez").await;
    assert!(live.contains("200"), "{live}");
    Faults::set(&faults.fail_flush, false);
    eventually("serving again", || {
        reports(metrics, &c, "200", "ready", serving)
    })
    .await;

    Faults::set(&faults.fail_audit, true);
    get(&mut records, "acme", "alice", &["email"])
        .await
        .expect_err("a read fails closed without its audit event");
    eventually("not serving after an audit append failed", || {
        reports(
            metrics,
            &c,
            "503",
            "audit log cannot be written",
            not_serving,
        )
    })
    .await;
    Faults::set(&faults.fail_audit, false);
    eventually("serving once no append fails", || {
        reports(metrics, &c, "200", "ready", serving)
    })
    .await;
    get(&mut records, "acme", "alice", &["email"])
        .await
        .expect("reads again");
}

#[tokio::test]
async fn readyz_says_draining_as_soon_as_shutdown_begins() {
    let port = free_port();
    let (vault, faults) =
        faulty_vault(|raw| raw.metrics.listen = Some(format!("127.0.0.1:{port}"))).await;
    let metrics: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    create_tenant(&vault, "acme").await;
    let (line, _) = http_get(metrics, "/readyz").await;
    assert!(line.contains("200"), "{line}");

    // A call held in the audit append keeps the drain going for a few seconds.
    faults
        .stall_millis
        .store(3000, std::sync::atomic::Ordering::SeqCst);
    Faults::set(&faults.stall_audit, true);
    let mut records = vault.records().await;
    let held = tokio::spawn(async move {
        get(&mut records, "acme", "alice", &[])
            .await
            .err()
            .map(|s| s.code())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(vault.stop());
    eventually("draining on /readyz", || async {
        let (line, body) = http_get(metrics, "/readyz").await;
        line.contains("503") && body.contains("draining")
    })
    .await;
    let _ = held.await.expect("the held call");
    stopping.await.expect("stopped");
}

/// A second `serve` on a data directory another vault holds: it refuses with one clear
/// line and a failure exit code, and never accepts a connection on its own port.
#[tokio::test]
async fn a_second_server_on_a_held_data_directory_fails_before_it_listens() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let data = dir.path().join("data");
    let first = VaultProcess::start(&data, &dir.path().join("first.log"), &[]).await;
    let port = free_port();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"))
        .args([
            "serve",
            "--dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second server");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().expect("poll") {
            break status;
        }
        let connected = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        assert!(
            connected.is_err(),
            "the second server accepted a connection"
        );
        assert!(Instant::now() < deadline, "the second server did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = second.wait_with_output().expect("output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!status.success());
    assert!(!stdout.contains("listening"), "{stdout}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one line:\n{stderr}");
    assert!(
        errors[0].contains("in use by another pii-vault process"),
        "{stderr}"
    );
    // The first one serves on.
    let mut records = RecordServiceClient::new(first.channel().await);
    let err = get(&mut records, "acme", "nobody", &[])
        .await
        .expect_err("no tenant");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// `pii-vault health` against `addr`, with the dev certificates of `data_dir`: its exit
/// code and its output.
fn health_cli(addr: &str, data_dir: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"))
        .args(["health", "--timeout", "3", "--addr", addr, "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run pii-vault health");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// For scripts: exit 0 while the vault serves, 2 while it answers NOT_SERVING, 1 when it
/// cannot be asked. (Two workers: the command blocks one while the vault runs on the other.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_exits_by_what_the_vault_answers() {
    let (vault, faults) = faulty_vault(|_| {}).await;
    let addr = vault.addr.to_string();
    let data = vault.config.data_dir.clone();
    let (code, text) = health_cli(&addr, &data);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("vault: SERVING"), "{text}");

    Faults::set(&faults.fail_flush, true);
    let c = vault.channel().await;
    eventually("not serving", || async {
        grpc_health(&c, "").await == ServingStatus::NotServing
    })
    .await;
    let (code, text) = health_cli(&addr, &data);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("NOT_SERVING"), "{text}");
    drop(c);

    // Stopped (its certificates kept; the flush at shutdown must work): nothing answers.
    Faults::set(&faults.fail_flush, false);
    let _dir = vault.stop().await;
    let (code, text) = health_cli(&addr, &data);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.starts_with("error: "), "{text}");
}
