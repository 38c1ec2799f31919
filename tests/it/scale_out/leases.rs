//! Job leases: a background job runs on one node at a time, and survives the loss of the
//! database session that held its lease.

use pii_vault::proto::v1 as pb;

use super::{
    seed_subjects, two_nodes_with, wait_for_rewrap_end, wait_for_rewrap_progress, RootFile,
};
use crate::util::{get, text_of};

/// The advisory lock key the vault derives for a job name (see `storage::postgres::lease::job_key`), split
/// as `pg_locks` shows it: high and low 32 bits.
fn lock_key(job: &str) -> (i64, i64) {
    let digest = pii_vault::crypto::sha256(format!("pii-vault job {job}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let key = u64::from_be_bytes(first);
    ((key >> 32) as i64, (key & 0xffff_ffff) as i64)
}

/// The backend process holding `job`'s lease, if any.
async fn lease_holder(db: &tokio_postgres::Client, job: &str) -> Option<i32> {
    let (high, low) = lock_key(job);
    db.query_opt(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[&high, &low],
    )
    .await
    .expect("query pg_locks")
    .map(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_job_lease_session_is_cut_mid_rewrap_the_rewrap_still_completes() {
    const SUBJECTS: usize = 600;
    let Some((a, b, url)) = two_nodes_with("scale_out::lease_lost", RootFile::Shared, |raw| {
        // Small, paced batches so the re-wrap is still running when its lease is cut.
        raw.keys.rewrap_batch_size = Some(25);
        raw.keys.rewrap_pause_ms = Some(20);
    })
    .await
    else {
        return;
    };
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    seed_subjects(&a, SUBJECTS).await;
    pb::key_service_client::KeyServiceClient::new(a.channel().await)
        .rotate_tenant_key(pb::RotateTenantKeyRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("rotate");

    wait_for_rewrap_progress(&b, 50, "the re-wrap made no progress").await;
    let holder = lease_holder(&db, "key-jobs")
        .await
        .expect("a node holds the key-jobs lease");
    let cut: bool = db
        .query_one("SELECT pg_terminate_backend($1)", &[&holder])
        .await
        .expect("terminate the lease session")
        .get(0);
    assert!(cut, "the lease session was terminated");

    let done =
        wait_for_rewrap_end(&a, "the re-wrap did not complete after its lease was cut").await;
    assert_eq!(done.current_version, 2);
    assert!(
        done.versions
            .iter()
            .any(|v| v.version == 1 && v.destroyed_at.is_some()),
        "v1 destroyed: {done:?}"
    );
    let now = lease_holder(&db, "key-jobs")
        .await
        .expect("a node took the key-jobs lease again");
    assert_ne!(now, holder, "a new session holds the lease");
    for node in [&a, &b] {
        let mut client = node.records().await;
        for i in (0..SUBJECTS).step_by(37) {
            let fields = get(&mut client, "acme", &format!("u{i}"), &["n"])
                .await
                .expect("read after the re-wrap");
            assert_eq!(text_of(&fields[0]), "x");
        }
        let report = pb::audit_service_client::AuditServiceClient::new(node.channel().await)
            .verify_audit_log(pb::VerifyAuditLogRequest {})
            .await
            .expect("verify")
            .into_inner();
        assert!(report.ok, "{report:?}");
    }
}
