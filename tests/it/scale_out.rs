//! Several vault nodes over one PostgreSQL database: any node serves any request, and what
//! one node changes the next call to another sees. Skipped (with the reason printed) when
//! no PostgreSQL server can be started here; see `tests/support/postgres.rs`.

use std::sync::Arc;

use pii_vault::config::SecretString;
use pii_vault::proto::v1 as pb;
use pii_vault::storage::{PgStore, PgTls, Store};
use tempfile::TempDir;
use tonic::Code;

use crate::erasure::erase;
use crate::postgres;
use crate::util::{copy_dir, create_tenant, get, put, test_config, text, text_of, TestVault};

mod audit_chains;
mod leases;
mod rights;
mod root_rotation;

/// How the nodes of a test get their root key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RootFile {
    /// One root key file for both, as the nodes of a deployment must have.
    Shared,
    /// Each node has its own copy of the file (a misconfiguration).
    Copied,
}

/// Two nodes on one fresh database, and its connection string. They share the dev PKI and
/// the policy (as nodes of one deployment do), the root key file as `root` says, and
/// nothing else; `settings` edits both nodes' configs.
async fn two_nodes_with(
    test: &str, root: RootFile, settings: impl Fn(&mut pii_vault::config::RawConfig),
) -> Option<(TestVault, TestVault, String)> {
    let server = postgres::server_or_skip(test)?;
    let url = server.fresh_database();
    let edit = |raw: &mut pii_vault::config::RawConfig| {
        settings(raw);
        raw.storage.backend = Some("postgres".into());
        raw.storage.postgres_url = Some(SecretString(url.clone()));
        raw.storage.postgres_tls = Some("disable".into());
    };
    let a_dir = TempDir::new().expect("temp dir");
    let a_config = test_config(a_dir.path(), edit);
    let b_dir = TempDir::new().expect("temp dir");
    copy_dir(a_dir.path(), b_dir.path());
    let b_config = test_config(b_dir.path(), |raw| {
        edit(raw);
        if root == RootFile::Shared {
            raw.keys.root_key_file = Some(a_config.root_key_file.clone());
        }
    });
    let node = |url: String| -> Arc<dyn Store> {
        Arc::new(PgStore::connect(&url, 4, &PgTls::Disable).expect("connect to PostgreSQL"))
    };
    let a = TestVault::start_on(a_dir, a_config, Some(node(url.clone()))).await;
    let b = TestVault::start_on(b_dir, b_config, Some(node(url.clone()))).await;
    Some((a, b, url))
}

/// Two nodes on one fresh database, sharing one root key file.
/// Two nodes sharing one root key file, with no backup window: a root rotation destroys
/// the old version at once, so these tests see destruction followed across nodes.
async fn two_nodes(test: &str) -> Option<(TestVault, TestVault)> {
    let (a, b, _) = two_nodes_with(test, RootFile::Shared, |raw| {
        raw.backup.retention_days = Some(0);
    })
    .await?;
    Some((a, b))
}

#[tokio::test]
async fn a_write_through_one_node_reads_back_through_the_other_and_erasure_applies_to_both() {
    let Some((a, b)) = two_nodes("scale_out::write_read_erase").await else {
        return;
    };
    create_tenant(&a, "acme").await;
    let (mut on_a, mut on_b) = (a.records().await, b.records().await);
    put(
        &mut on_a,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "alice@example.com")],
    )
    .await
    .expect("put through A");
    let fields = get(&mut on_b, "acme", "alice", &["email"])
        .await
        .expect("get through B");
    assert_eq!(text_of(&fields[0]), "alice@example.com");

    // Read through B first, so B has the subject's DEK warm, then erase through A.
    put(
        &mut on_b,
        "acme",
        "alice",
        vec![text("city", pb::Category::Profile, "Lyon")],
    )
    .await
    .expect("put through B");
    get(&mut on_b, "acme", "alice", &[]).await.expect("warm B");
    erase(a.channel().await, "acme", "alice")
        .await
        .expect("erase through A");
    let err = get(&mut on_b, "acme", "alice", &["email"])
        .await
        .expect_err("B must not serve an erased subject");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = put(
        &mut on_b,
        "acme",
        "alice",
        vec![text("city", pb::Category::Profile, "Paris")],
    )
    .await
    .expect_err("B must not write an erased subject");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn reads_on_both_nodes_make_one_audit_log_that_verifies() {
    let Some((a, b)) = two_nodes("scale_out::audit_chain").await else {
        return;
    };
    seed_subjects(&a, 20).await;
    // Both nodes append at the same time, each to its own chain: their batches take turns
    // for the next places of the merged order.
    let mut readers = Vec::new();
    for node in [&a, &b] {
        for r in 0..4 {
            let mut client = node.records().await;
            readers.push(tokio::spawn(async move {
                for i in 0..25 {
                    let subject = format!("u{}", (i + r) % 20);
                    get(&mut client, "acme", &subject, &["n"])
                        .await
                        .expect("get");
                }
            }));
        }
    }
    for r in readers {
        r.await.expect("reader");
    }
    for node in [&a, &b] {
        let report = pb::audit_service_client::AuditServiceClient::new(node.channel().await)
            .verify_audit_log(pb::VerifyAuditLogRequest {})
            .await
            .expect("verify")
            .into_inner();
        assert!(report.ok, "{report:?}");
        assert!(
            report.checked >= 1 + 20 + 200,
            "tenant, puts and 200 reads: {report:?}"
        );
    }
    let reads =
        crate::util::audit_events(&b.channel().await, crate::util::by_operation("get_fields"))
            .await;
    assert_eq!(
        reads.len(),
        200,
        "every read through either node has its event"
    );
    let nodes: std::collections::BTreeSet<u64> = reads.iter().map(|e| e.node).collect();
    assert_eq!(
        nodes.len(),
        2,
        "each node wrote its reads' events: {nodes:?}"
    );
    assert!(
        !nodes.contains(&0),
        "no event of a shared log is on the single chain"
    );
}

#[tokio::test]
async fn a_tenant_key_rotation_started_on_one_node_shows_in_the_others_key_status() {
    let Some((a, b)) = two_nodes("scale_out::rotation").await else {
        return;
    };
    seed_subjects(&a, 50).await;
    let rotated = pb::key_service_client::KeyServiceClient::new(a.channel().await)
        .rotate_tenant_key(pb::RotateTenantKeyRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("rotate on A")
        .into_inner();
    assert_eq!(rotated.new_version, 2);
    let status = pb::key_service_client::KeyServiceClient::new(b.channel().await)
        .get_key_status(pb::GetKeyStatusRequest {
            tenant_id: "acme".into(),
            count_deks: false,
        })
        .await
        .expect("status on B")
        .into_inner();
    assert_eq!(status.tenants[0].current_version, 2, "{status:?}");
    // B wraps new subjects under the new version and reads the old ones.
    let mut on_b = b.records().await;
    put(
        &mut on_b,
        "acme",
        "new-on-b",
        vec![text("n", pb::Category::Usage, "y")],
    )
    .await
    .expect("put through B after the rotation");
    let old = get(&mut on_b, "acme", "u7", &["n"])
        .await
        .expect("old subject through B");
    assert_eq!(text_of(&old[0]), "x");
}

/// Creates the tenant "acme" through `node` with subjects u0..u{n} of one field "n" = "x".
async fn seed_subjects(node: &TestVault, n: usize) {
    create_tenant(node, "acme").await;
    let mut client = node.records().await;
    for i in 0..n {
        put(
            &mut client,
            "acme",
            &format!("u{i}"),
            vec![text("n", pb::Category::Usage, "x")],
        )
        .await
        .expect("put");
    }
}

/// Waits (up to 60 s) until `node` reports at least `subjects` DEKs of acme's running
/// re-wrap done; fails with `stalled` otherwise.
async fn wait_for_rewrap_progress(node: &TestVault, subjects: u64, stalled: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let job = tenant_key_status(node.channel().await)
            .await
            .rewrap
            .expect("the re-wrap is still running");
        if job.subjects_rewrapped >= subjects {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{stalled}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits (up to 120 s) until `node` reports no re-wrap running for acme, and returns that
/// status; fails with `unfinished` otherwise.
async fn wait_for_rewrap_end(node: &TestVault, unfinished: &str) -> pb::TenantKeyStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let status = tenant_key_status(node.channel().await).await;
        if status.rewrap.is_none() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{unfinished}: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Key status of one tenant, through `channel`.
async fn tenant_key_status(channel: tonic::transport::Channel) -> pb::TenantKeyStatus {
    pb::key_service_client::KeyServiceClient::new(channel)
        .get_key_status(pb::GetKeyStatusRequest {
            tenant_id: "acme".into(),
            count_deks: false,
        })
        .await
        .expect("key status")
        .into_inner()
        .tenants
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_node_running_a_rewrap_is_killed_another_node_finishes_it() {
    const SUBJECTS: usize = 1500;
    // Over TLS: node A, a real process, connects as its config file says.
    let Some(server) = postgres::tls_server_or_skip("scale_out::kill_during_rewrap") else {
        return;
    };
    let url = server.fresh_database();
    let ca_file = server.ca_file().to_path_buf();
    let tls = PgTls::VerifyFull {
        ca_file: ca_file.clone(),
    };
    let work = TempDir::new().expect("temp dir");
    let a_data = work.path().join("a");
    // Small, paced batches so the re-wrap is still running when node A dies.
    let settings = format!(
        "[storage]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\n\
         postgres_tls = \"verify-full\"\npostgres_ca_file = \"{ca}\"\n\n\
         [keys]\nrewrap_batch_size = 50\nrewrap_pause_ms = 20\n",
        ca = ca_file.display()
    );
    let config_file = work.path().join("vault.toml");
    std::fs::write(&config_file, &settings).expect("config");
    // Node A, a real process, starts first and so takes the key-jobs lease.
    let a = crate::process::VaultProcess::start(
        &a_data,
        &work.path().join("a.log"),
        &["--config", config_file.to_str().expect("utf-8 path")],
    )
    .await;
    let b_dir = TempDir::new().expect("temp dir");
    copy_dir(&a_data, b_dir.path());
    let b_config = test_config(b_dir.path(), |raw| {
        raw.storage.backend = Some("postgres".into());
        raw.storage.postgres_url = Some(SecretString(url.clone()));
        raw.storage.postgres_ca_file = Some(ca_file.clone());
        raw.keys.rewrap_batch_size = Some(50);
        raw.keys.rewrap_pause_ms = Some(20);
    });
    let b_store: Arc<dyn Store> = Arc::new(PgStore::connect(&url, 4, &tls).expect("connect"));
    let b = TestVault::start_on(b_dir, b_config, Some(b_store)).await;

    let a_channel = a.channel().await;
    pb::tenant_service_client::TenantServiceClient::new(a_channel.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("tenant");
    let mut writers = Vec::new();
    for w in 0..8 {
        let channel = a_channel.clone();
        writers.push(tokio::spawn(async move {
            let mut client = pb::record_service_client::RecordServiceClient::new(channel);
            for i in (w..SUBJECTS).step_by(8) {
                put(
                    &mut client,
                    "acme",
                    &format!("s{i}"),
                    vec![text("n", pb::Category::Usage, &format!("v{i}"))],
                )
                .await
                .expect("preload");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    pb::key_service_client::KeyServiceClient::new(a_channel.clone())
        .rotate_tenant_key(pb::RotateTenantKeyRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("rotate on A");

    // Kill A once its re-wrap is under way, as B sees it.
    wait_for_rewrap_progress(&b, 100, "A's re-wrap made no progress").await;
    drop(a_channel);
    drop(a); // SIGKILL

    let done = wait_for_rewrap_end(&b, "B did not finish the re-wrap").await;
    assert_eq!(done.current_version, 2);
    let v1 = done
        .versions
        .iter()
        .find(|v| v.version == 1)
        .expect("v1 listed");
    assert!(
        v1.destroyed_at.is_some(),
        "B destroyed the old version: {done:?}"
    );
    let mut on_b = b.records().await;
    for i in (0..SUBJECTS).step_by(97) {
        let fields = get(&mut on_b, "acme", &format!("s{i}"), &["n"])
            .await
            .expect("read after the takeover");
        assert_eq!(text_of(&fields[0]), format!("v{i}"));
    }
}
