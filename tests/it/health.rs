//! Health that tells the truth (issue 18, item 1): gRPC health and `/readyz` turn
//! NOT_SERVING while the store cannot be written, while audit appends fail, and once
//! shutdown begins; they come back when the store does. `/livez` answers throughout.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pii_vault::proto::v1 as pb;
use pii_vault::storage::faults::Faults;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::metrics::http_get;
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
