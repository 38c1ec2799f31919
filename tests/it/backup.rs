//! Backup of a running vault and restore into a new data directory, through the real CLI:
//! everything reads back, the file holds no plaintext and no root key, damaged files are
//! refused, and writes acknowledged before a backup survive writes running during it.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use pb::audit_service_client::AuditServiceClient;
use pii_vault::proto::v1 as pb;
use tempfile::TempDir;

use crate::util::{
    bytes_occur_below, create_tenant, get, put, test_config, text, text_of, TestVault,
};

/// Runs the `pii-vault` binary.
async fn cli<S: AsRef<OsStr>>(args: &[S]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"))
        .args(args)
        .output()
        .await
        .expect("run pii-vault")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `pii-vault backup` against `vault` into `file`; returns what it printed.
async fn backup(vault: &TestVault, file: &Path) -> String {
    let (addr, data) = (vault.addr.to_string(), vault.data_dir());
    let out = cli(&[
        OsStr::new("backup"),
        OsStr::new("--out"),
        file.as_os_str(),
        OsStr::new("--addr"),
        OsStr::new(&addr),
        OsStr::new("--data-dir"),
        data.as_os_str(),
    ])
    .await;
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("backup written"), "{said}");
    said
}

async fn restore(file: &Path, data_dir: &Path) -> Output {
    cli(&[
        OsStr::new("restore"),
        OsStr::new("--in"),
        file.as_os_str(),
        OsStr::new("--data-dir"),
        data_dir.as_os_str(),
    ])
    .await
}

/// Restores `file` into a new data directory with `from`'s root key file and starts a
/// vault there.
async fn restored_vault(file: &Path, from: &TestVault) -> TestVault {
    let dir = TempDir::new().expect("temp dir");
    let out = restore(file, dir.path()).await;
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    // The backup never holds the root key: it travels separately.
    std::fs::copy(
        from.data_dir().join("root.key"),
        dir.path().join("root.key"),
    )
    .expect("copy the root key file");
    // A restored dev backup is marked as a dev directory again by hand (see README).
    std::fs::write(
        dir.path().join(pii_vault::dev::DEV_MARK),
        "restored dev backup\n",
    )
    .expect("mark the dev directory");
    let config = test_config(dir.path(), |_| {});
    TestVault::start_on(dir, config, None).await
}

async fn audit_verifies(vault: &TestVault) {
    let report = AuditServiceClient::new(vault.channel().await)
        .verify_audit_log(pb::VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(report.ok, "{report:?}");
}

fn value(tenant: &str, i: usize) -> String {
    format!("secret-{tenant}-{i}@example.com")
}

#[tokio::test]
async fn a_backup_restores_into_a_new_data_dir_and_reads_back() {
    let vault = TestVault::start().await;
    let mut client = vault.records().await;
    for tenant in ["acme", "globex"] {
        create_tenant(&vault, tenant).await;
        for i in 0..20 {
            let fields = vec![
                text("email", pb::Category::Account, &value(tenant, i)),
                text("bio", pb::Category::Profile, &format!("bio {i}")),
            ];
            put(&mut client, tenant, &format!("user-{i}"), fields)
                .await
                .expect("put");
        }
    }
    client
        .delete_fields(pb::DeleteFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: "user-0".into(),
            field_names: vec!["bio".into()],
        })
        .await
        .expect("delete");

    let files = TempDir::new().expect("temp dir");
    let file = files.path().join("vault.backup");
    backup(&vault, &file).await;
    // Ciphertext only: no value and no root key byte is in the file.
    let root = std::fs::read_to_string(vault.data_dir().join("root.key")).expect("root key");
    let root_hex = root
        .lines()
        .find_map(|l| l.trim().strip_prefix("key = \""))
        .expect("a key line")
        .trim_end_matches('"');
    let root_bytes = hex::decode(root_hex).expect("hex");
    assert!(!bytes_occur_below(files.path(), &root_bytes));
    assert!(!bytes_occur_below(files.path(), root_hex.as_bytes()));
    assert!(!bytes_occur_below(
        files.path(),
        value("acme", 3).as_bytes()
    ));

    let restored = restored_vault(&file, &vault).await;
    let mut client = restored.records().await;
    for tenant in ["acme", "globex"] {
        for i in 0..20 {
            let fields = get(&mut client, tenant, &format!("user-{i}"), &[])
                .await
                .expect("read back");
            let deleted = tenant == "acme" && i == 0;
            assert_eq!(fields.len(), if deleted { 1 } else { 2 }, "{tenant}/{i}");
            let email = fields.iter().find(|f| f.name == "email").expect("email");
            assert_eq!(text_of(email), value(tenant, i));
        }
    }
    audit_verifies(&restored).await;
    let events = AuditServiceClient::new(restored.channel().await)
        .query_audit_log(pb::QueryAuditLogRequest {
            operation: "backup".into(),
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .message()
        .await
        .expect("stream")
        .expect("a page");
    assert_eq!(events.events.len(), 1, "the backup is audited, in itself");

    // A second restore into the same data directory is refused.
    let out = restore(&file, &restored.data_dir()).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_damaged_backup_is_refused_and_writes_nothing() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "u1",
        vec![text("email", pb::Category::Account, "a@example.com")],
    )
    .await
    .expect("put");
    let files = TempDir::new().expect("temp dir");
    let file = files.path().join("vault.backup");
    backup(&vault, &file).await;
    let good = std::fs::read(&file).expect("read");

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let damaged = files.path().join("damaged.backup");
    std::fs::write(&damaged, &flipped).expect("write");
    let truncated = files.path().join("truncated.backup");
    std::fs::write(&truncated, &good[..good.len() * 2 / 3]).expect("write");
    for bad in [&damaged, &truncated] {
        let target = TempDir::new().expect("temp dir");
        let out = restore(bad, target.path()).await;
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("checksum mismatch: the backup is damaged or incomplete"),
            "{}",
            stderr(&out)
        );
        assert!(!target.path().join("store").exists(), "nothing is written");
    }
}

#[tokio::test]
async fn writes_acknowledged_before_a_backup_survive_writes_during_it() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut client = vault.records().await;
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let subject = format!("w{w}-{n}");
                let field = text("email", pb::Category::Account, &format!("{subject}@x.org"));
                put(&mut client, "acme", &subject, vec![field])
                    .await
                    .expect("put");
                acked.lock().expect("lock").push(subject);
                n += 1;
            }
        }));
    }
    while acked.lock().expect("lock").len() < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let before = acked.lock().expect("lock").clone();
    let files = TempDir::new().expect("temp dir");
    let file = files.path().join("vault.backup");
    backup(&vault, &file).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }

    let restored = restored_vault(&file, &vault).await;
    let mut client = restored.records().await;
    for subject in &before {
        let fields = get(&mut client, "acme", subject, &[])
            .await
            .unwrap_or_else(|e| {
                panic!("{subject} acknowledged before the backup is missing: {e:?}")
            });
        assert_eq!(text_of(&fields[0]), format!("{subject}@x.org"));
    }
    audit_verifies(&restored).await;
}

/// `pii-vault backup verify` with the given arguments after the file.
async fn verify(file: &Path, args: &[&OsStr]) -> Output {
    let mut all = vec![OsStr::new("backup"), OsStr::new("verify"), file.as_os_str()];
    all.extend_from_slice(args);
    cli(&all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_applies_the_erasure_ledger_and_verify_checks_the_backup_window() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    for who in ["alice", "bob"] {
        put(
            &mut client,
            "acme",
            who,
            vec![text(
                "email",
                pb::Category::Account,
                &format!("{who}@example.com"),
            )],
        )
        .await
        .expect("put");
    }
    let files = TempDir::new().expect("temp dir");
    let file = files.path().join("vault.backup");
    let said = backup(&vault, &file).await;
    assert!(said.contains("restorable until"), "{said}");
    let data = vault.data_dir();
    crate::erasure::erase(vault.channel().await, "acme", "alice")
        .await
        .expect("erase after the backup");

    let out = verify(&file, &[OsStr::new("--data-dir"), data.as_os_str()]).await;
    assert!(out.status.success(), "verify: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("intact and restorable") && said.contains("needs root key version 1"),
        "{said}"
    );

    // The root key and the ledger travel beside the backup, never in it.
    let target = TempDir::new().expect("temp dir");
    for name in ["root.key", "erasure.ledger"] {
        std::fs::copy(data.join(name), target.path().join(name)).expect("copy key material");
    }
    let out = restore(&file, target.path()).await;
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("1 entries newer than the backup; 1 subjects erased"),
        "{said}"
    );
    std::fs::write(
        target.path().join(pii_vault::dev::DEV_MARK),
        "restored dev backup\n",
    )
    .expect("mark the dev directory");
    let config = test_config(target.path(), |_| {});
    let restored = TestVault::start_on(target, config, None).await;
    let mut on_restored = restored.records().await;
    let bob = get(&mut on_restored, "acme", "bob", &[])
        .await
        .expect("bob");
    assert_eq!(text_of(&bob[0]), "bob@example.com");
    let alice = get(&mut on_restored, "acme", "alice", &[])
        .await
        .expect_err("alice stays erased");
    assert_eq!(alice.code(), tonic::Code::NotFound, "{alice:?}");
    assert!(alice.message().contains("erased"), "{alice:?}");
    audit_verifies(&restored).await;

    // A vault whose backup window is 0 days: the backup is already too old for it.
    let config_file = files.path().join("no-window.toml");
    std::fs::write(
        &config_file,
        format!(
            "data_dir = \"{}\"\n[backup]\nretention_days = 0\n",
            data.display()
        ),
    )
    .expect("config");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let out = verify(&file, &[OsStr::new("--config"), config_file.as_os_str()]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("more than the backup window (0 days"),
        "{}",
        stderr(&out)
    );
}
