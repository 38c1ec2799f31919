//! Erasure by crypto-shredding: reads answer NOT_FOUND/erased, also after a restart; the
//! call is idempotent; ciphertexts are purged in the background; the CLI works for jobs.

use pii_vault::domain::{SubjectId, TenantId};
use pii_vault::proto::v1 as pb;
use pii_vault::storage::{SledStore, Store};
use tonic::transport::Channel;
use tonic::Code;

use crate::util::{audit_events, by_operation, create_tenant, get, put, text, TestVault};

pub async fn erase(
    channel: Channel, tenant: &str, subject: &str,
) -> Result<pb::ErasureReceipt, tonic::Status> {
    pb::subject_rights_service_client::SubjectRightsServiceClient::new(channel)
        .erase_subject(pb::EraseSubjectRequest {
            tenant_id: tenant.into(),
            subject_id: subject.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn assert_erased(err: &tonic::Status) {
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("erased"), "{err:?}");
}

#[tokio::test]
async fn an_erased_subject_stays_erased_across_reads_writes_and_restarts() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "alice",
        vec![
            text("email", pb::Category::Account, "alice@example.com"),
            text("card", pb::Category::Payment, "4111111111111111"),
        ],
    )
    .await
    .expect("put");
    put(
        &mut client,
        "acme",
        "bob",
        vec![text("email", pb::Category::Account, "bob@example.com")],
    )
    .await
    .expect("put bob");

    let receipt = erase(vault.channel().await, "acme", "alice")
        .await
        .expect("erase");
    assert!(receipt.receipt_id.starts_with("er-"));
    assert_eq!(
        (receipt.tenant_id.as_str(), receipt.subject_id.as_str()),
        ("acme", "alice")
    );
    assert_eq!(
        receipt.erased_by,
        format!("uri:{}", pii_vault::certs::DEV_CLIENT_ID)
    );
    assert!(!receipt.already_erased);
    let mut categories = receipt.categories_erased.clone();
    categories.sort();
    assert_eq!(
        categories,
        [pb::Category::Account as i32, pb::Category::Payment as i32]
    );
    let erased_at = receipt.erased_at.as_ref().map(|t| t.seconds).expect("time");
    let final_after = receipt
        .final_after
        .as_ref()
        .map(|t| t.seconds)
        .expect("final");
    assert_eq!(
        final_after - erased_at,
        24 * 3600 + 30 * 86_400,
        "final after the next daily key epoch and the 30-day backup window"
    );

    assert_erased(
        &get(&mut client, "acme", "alice", &[])
            .await
            .expect_err("read"),
    );
    assert_erased(
        &get(&mut client, "acme", "alice", &["email"])
            .await
            .expect_err("read one"),
    );
    let write = put(
        &mut client,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "x@example.com")],
    )
    .await;
    assert_erased(&write.expect_err("an erased id is not written again"));
    // Idempotent: the same receipt comes back.
    let again = erase(vault.channel().await, "acme", "alice")
        .await
        .expect("erase again");
    assert!(again.already_erased);
    assert_eq!(again.receipt_id, receipt.receipt_id);
    // Others are untouched; a never-known subject is NOT_FOUND without "erased".
    assert_eq!(
        get(&mut client, "acme", "bob", &[])
            .await
            .expect("bob")
            .len(),
        1
    );
    let unknown = erase(vault.channel().await, "acme", "carol")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(!unknown.message().contains("erased"));
    let subjects = client
        .list_subjects(pb::ListSubjectsRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .subject_ids;
    assert_eq!(subjects, ["bob"]);

    drop(client);
    let vault = vault.restart().await;
    let mut client = vault.records().await;
    assert_erased(
        &get(&mut client, "acme", "alice", &[])
            .await
            .expect_err("after restart"),
    );
    assert_eq!(
        get(&mut client, "acme", "bob", &[])
            .await
            .expect("bob")
            .len(),
        1
    );

    // The field ciphertexts were purged in the background.
    drop(client);
    let dir = vault.stop().await;
    let store = SledStore::open(&dir.path().join("store"), 1 << 20).expect("open");
    let (acme, alice) = (
        TenantId::parse("acme").expect("id"),
        SubjectId::parse("alice").expect("id"),
    );
    assert!(store.fields(&acme, &alice).expect("fields").is_empty());
    assert!(
        store
            .tombstone(&acme, &alice)
            .expect("tombstone")
            .expect("kept")
            .purged
    );
    assert_eq!(store.epoch_pending().expect("marks"), [(acme, 1)]);
}

#[tokio::test]
async fn erasure_is_audited_with_its_receipt() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "a@example.com")],
    )
    .await
    .expect("put");
    let receipt = erase(vault.channel().await, "acme", "alice")
        .await
        .expect("erase");
    let events = audit_events(&vault.channel().await, by_operation("erase_subject")).await;
    assert_eq!(events.len(), 2, "the intent, then the ending: {events:?}");
    assert_eq!(events[0].outcome, pb::Outcome::Intent as i32);
    let events = crate::util::endings(events);
    assert_eq!(events[0].subject_id, "alice");
    assert!(events[0].reason.contains(&receipt.receipt_id));
}

#[tokio::test]
async fn the_erase_command_reads_ids_from_stdin() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    for s in ["u1", "u2", "u3"] {
        put(
            &mut client,
            "acme",
            s,
            vec![text("n", pb::Category::Usage, "x")],
        )
        .await
        .expect("put");
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"))
        .args(["erase", "acme", "--from", "-", "--addr"])
        .arg(vault.addr.to_string())
        .arg("--data-dir")
        .arg(vault.data_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"u1\n# a comment\nu3\n")
        .expect("write");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("erased 2/2"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert_erased(&get(&mut client, "acme", "u1", &[]).await.expect_err("u1"));
    assert_erased(&get(&mut client, "acme", "u3", &[]).await.expect_err("u3"));
    assert_eq!(
        get(&mut client, "acme", "u2", &[]).await.expect("u2").len(),
        1
    );
}
