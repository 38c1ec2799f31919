//! Graceful shutdown of the real binary: SIGTERM under load loses no acknowledged write
//! and exits 0; a call that never finishes is cut after `limits.shutdown_grace_ms`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pb::record_service_client::RecordServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use pii_vault::proto::v1 as pb;
use tempfile::TempDir;

use crate::process::VaultProcess;
use crate::util::{get, put, text, text_of};

const WRITERS: usize = 16;

async fn create_tenant(vault: &VaultProcess, id: &str) {
    TenantServiceClient::new(vault.channel().await)
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: id.into(),
        })
        .await
        .expect("create tenant");
}

#[tokio::test]
async fn sigterm_under_load_keeps_every_acknowledged_write_and_exits_zero() {
    let dir = TempDir::new().expect("temp dir");
    let log = dir.path().join("vault.log");
    let data = dir.path().join("data");
    let vault = VaultProcess::start(&data, &log, &[]).await;
    create_tenant(&vault, "acme").await;

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = RecordServiceClient::new(vault.channel().await);
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for n in 0.. {
                let (subject, value) = (format!("w{w}-{n}"), format!("value {w}/{n}"));
                let field = text("note", pb::Category::Profile, &value);
                // The first refusal (draining, connection closed) ends this writer.
                if put(&mut client, "acme", &subject, vec![field])
                    .await
                    .is_err()
                    || Instant::now() > deadline
                {
                    return n;
                }
                acked.lock().expect("lock").push((subject, value));
            }
            unreachable!()
        }));
    }
    // Let the load run until a good number of writes were acknowledged, then stop it.
    let start = Instant::now();
    while acked.lock().expect("lock").len() < 200 {
        assert!(start.elapsed() < Duration::from_secs(60), "load too slow");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    vault.terminate();
    let status = vault.wait_exit(Duration::from_secs(30)).await;
    for w in writers {
        w.await.expect("writer");
    }
    assert!(status.success(), "exit status {status}");
    let log_text = std::fs::read_to_string(&log).expect("log");
    assert!(log_text.contains("\"stopped\""), "no clean stop logged");

    let acked = acked.lock().expect("lock").clone();
    let vault = VaultProcess::start(&data, &log, &[]).await;
    let mut client = RecordServiceClient::new(vault.channel().await);
    for (subject, value) in &acked {
        let fields = get(&mut client, "acme", subject, &[])
            .await
            .unwrap_or_else(|e| panic!("acknowledged write {subject} lost: {e:?}"));
        assert_eq!(fields.len(), 1, "{subject}");
        assert_eq!(text_of(&fields[0]), value, "{subject}");
    }
    vault.terminate();
    assert!(vault.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test]
async fn a_call_that_never_finishes_is_cut_after_the_grace_period() {
    let dir = TempDir::new().expect("temp dir");
    let log = dir.path().join("vault.log");
    let config = dir.path().join("vault.toml");
    std::fs::write(
        &config,
        "[limits]\nshutdown_grace_ms = 500\nrequest_timeout_ms = 600000\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf-8 path");
    let vault = VaultProcess::start(&dir.path().join("data"), &log, &["--config", config]).await;

    // A unary call whose request message never arrives: the handler waits for it, so
    // the drain would wait until the request timeout (10 minutes) without the grace bound.
    let channel = vault.channel().await;
    let hung = tokio::spawn(async move {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("ready");
        let never = tokio_stream::pending::<pb::ListTenantsRequest>();
        grpc.client_streaming::<_, _, pb::ListTenantsResponse, _>(
            tonic::Request::new(never),
            http::uri::PathAndQuery::from_static("/piivault.v1.TenantService/ListTenants"),
            tonic_prost::ProstCodec::default(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!hung.is_finished(), "the hanging call ended early");

    let started = Instant::now();
    vault.terminate();
    let status = vault.wait_exit(Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(450),
        "exited before the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "grace period not enforced: {took:?}"
    );
    let result = tokio::time::timeout(Duration::from_secs(10), hung)
        .await
        .expect("the hung call ended")
        .expect("task");
    assert!(result.is_err(), "the cut call cannot have succeeded");
    let log_text = std::fs::read_to_string(&log).expect("log");
    assert!(log_text.contains("grace period over"), "{log_text}");
    assert!(!log_text.contains("store still referenced"), "{log_text}");
}
