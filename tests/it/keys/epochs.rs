//! Key epochs as one resumable job: a store fault at every step in turn, an unwritable key
//! directory and a SIGKILL each leave every tenant's epoch mark in place, the failure
//! recorded (audit event, `keys status`, metrics), and the next run completes the epoch;
//! a key location that cannot be rewritten (or would not survive a restart) refuses the
//! start, naming the path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pb::key_service_client::KeyServiceClient;
use pii_vault::proto::v1 as pb;
use pii_vault::storage::faults::Faults;
use tempfile::TempDir;
use tonic::Code;

use super::*;
use crate::erasure::erase;
use crate::util::{
    audit_events, by_operation, create_tenant, faulty_vault, free_port, get, test_config, text_of,
};

/// Every tenant's epoch mark, in tenant order.
fn marks(s: &pb::KeyStatus) -> Vec<(String, bool)> {
    s.tenants
        .iter()
        .map(|t| (t.tenant_id.clone(), t.epoch_pending))
        .collect()
}

async fn epoch(
    keys: &mut KeyServiceClient<Channel>,
) -> Result<pb::RunKeyEpochResponse, tonic::Status> {
    keys.run_key_epoch(pb::RunKeyEpochRequest {})
        .await
        .map(tonic::Response::into_inner)
}

async fn read_email(
    channel: &Channel, tenant: &str, subject: &str,
) -> Result<String, tonic::Status> {
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());
    let fields = get(&mut records, tenant, subject, &["email"]).await?;
    Ok(text_of(&fields[0]).to_owned())
}

async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, text) = crate::metrics::http_get(addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_failing_at_any_store_step_keeps_every_mark_and_completes_on_the_next_run() {
    let port = free_port();
    let (vault, faults) = faulty_vault(|raw| {
        raw.metrics.listen = Some(format!("127.0.0.1:{port}"));
        // Old root versions destroyed by the epoch itself (no backup window), so each
        // completed attempt can be checked for them.
        raw.backup.retention_days = Some(0);
    })
    .await;
    let metrics: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let channel = vault.channel().await;
    let mut keys = KeyServiceClient::new(channel.clone());
    for tenant in ["acme", "globex"] {
        create_tenant(&vault, tenant).await;
        preload(channel.clone(), tenant, 30, 2).await;
    }
    let live: Vec<(String, usize)> = ["acme", "globex"]
        .iter()
        .flat_map(|t| (0..30).map(move |i| ((*t).to_owned(), i)))
        .collect();
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());

    // Fault the n-th key write of the epoch for n = 0, 1, 2, … until an epoch gets through
    // without reaching its fault: every step (tenant rotation, re-wrap batches, key
    // destruction, re-index, root re-wraps, root state, marks) fails once.
    let mut failures = 0;
    let mut receipts = Vec::new();
    for n in 0u64.. {
        assert!(n < 2000, "the epoch never got through");
        // Each round erases one more subject in each tenant: both tenants are marked.
        for tenant in ["acme", "globex"] {
            let subject = format!("gone{n}");
            let field = crate::util::text("email", pb::Category::Account, "gone@example.com");
            crate::util::put(&mut records, tenant, &subject, vec![field])
                .await
                .expect("put");
            let receipt = erase(channel.clone(), tenant, &subject)
                .await
                .expect("erase");
            receipts.push((tenant, subject, receipt));
        }
        let before = status(&mut keys, "", false).await;
        assert!(marks(&before).iter().all(|(_, m)| *m), "{before:?}");

        faults.key_writes_allowed.store(n, Ordering::SeqCst);
        Faults::set(&faults.fail_key_writes, true);
        let result = epoch(&mut keys).await;
        Faults::set(&faults.fail_key_writes, false);
        let Err(failed) = result else {
            break;
        };
        failures += 1;
        assert!(
            matches!(failed.code(), Code::Unavailable | Code::Internal),
            "fault {n}: {failed:?}"
        );
        // Nothing lost: a mark is cleared only once the root step is done, the epoch is
        // under way and says why it stopped, and every live subject reads back.
        let s = status(&mut keys, "", false).await;
        if !marks(&s).iter().all(|(_, m)| *m) {
            assert_ne!(
                s.last_epoch, before.last_epoch,
                "fault {n} cleared a mark before the root step: {s:?}"
            );
        }
        if s.epoch_started.is_some() {
            assert_eq!(s.epoch_failures, 1, "{s:?}");
            assert!(s.last_epoch_failure.is_some(), "{s:?}");
            assert!(!s.last_epoch_failure_reason.is_empty(), "{s:?}");
        }
        for (tenant, i) in live.iter().step_by(7) {
            assert_eq!(
                read_email(&channel, tenant, &format!("s{i}"))
                    .await
                    .expect("live read"),
                email(*i)
            );
        }
        // The next run completes what this one left.
        epoch(&mut keys)
            .await
            .unwrap_or_else(|e| panic!("the run after fault {n} failed: {e:?}"));
        let s = status(&mut keys, "", true).await;
        assert!(marks(&s).iter().all(|(_, m)| !*m), "fault {n}: {s:?}");
        assert!(s.epoch_started.is_none(), "fault {n}: {s:?}");
        for t in &s.tenants {
            let kept: Vec<_> = t
                .versions
                .iter()
                .filter(|v| v.destroyed_at.is_none())
                .collect();
            assert_eq!(kept.len(), 1, "fault {n}: old KEK versions left: {t:?}");
        }
        let root = s.root.expect("root");
        let in_file = root
            .versions
            .iter()
            .filter(|v| v.destroyed_at.is_none())
            .count();
        assert_eq!(in_file, 1, "fault {n}: old root versions left: {root:?}");
    }
    assert!(failures >= 20, "only {failures} faults were reached");
    eprintln!("the epoch failed at {failures} steps in turn and completed after each");

    // Every live subject reads back, every erased one is erased, with its first receipt.
    for (tenant, i) in &live {
        assert_eq!(
            read_email(&channel, tenant, &format!("s{i}"))
                .await
                .expect("read"),
            email(*i)
        );
    }
    for (tenant, subject, first) in &receipts {
        let again = erase(channel.clone(), tenant, subject)
            .await
            .expect("erase again");
        assert_eq!(again.receipt_id, first.receipt_id);
        assert_eq!(
            again.final_after, first.final_after,
            "the receipt's date is kept"
        );
    }
    let counted = metric(metrics, "piivault_key_epoch_failures_total").await;
    assert_eq!(counted, f64::from(failures));
    let failed_events = audit_events(&channel, by_operation("key_epoch"))
        .await
        .into_iter()
        .filter(|e| e.outcome == pb::Outcome::Error as i32)
        .count();
    assert_eq!(
        failed_events, failures as usize,
        "every failed attempt is audited"
    );
    vault.stop().await;
}

/// Makes `dir` unwritable for this process: `chmod 500`, or, for root (whom modes do not
/// stop), the immutable attribute. `None` where neither stops a write.
struct Unwritable(PathBuf, bool);

impl Unwritable {
    fn make(dir: &Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        let blocked = || std::fs::write(dir.join("probe"), b"").is_err();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        if blocked() {
            return Some(Self(dir.to_path_buf(), false));
        }
        let _ = std::fs::remove_file(dir.join("probe"));
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let chattr = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status();
        if chattr.is_ok_and(|s| s.success()) && blocked() {
            return Some(Self(dir.to_path_buf(), true));
        }
        let _ = std::fs::remove_file(dir.join("probe"));
        eprintln!(
            "cannot make {} unwritable here (root without chattr +i)",
            dir.display()
        );
        None
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.1 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.0)
                .status();
        }
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700));
    }
}

/// A config whose root key lives in `keys/` beside the data directory.
fn config_with_key_dir(dir: &Path) -> (pii_vault::config::Config, PathBuf) {
    let key_dir = dir.join("keys");
    std::fs::create_dir(&key_dir).expect("key dir");
    let key_file = key_dir.join("root.key");
    let data = dir.join("data");
    std::fs::create_dir(&data).expect("data dir");
    let config = test_config(&data, |raw| {
        raw.keys.root_key_file = Some(key_file.clone());
        raw.backup.retention_days = Some(0);
    });
    (config, key_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_directory_that_cannot_be_written_refuses_rotation_and_the_epoch_waits_for_it() {
    let dir = TempDir::new().expect("dir");
    let (config, key_dir) = config_with_key_dir(dir.path());
    let vault = crate::util::TestVault::start_on(TempDir::new().expect("dir"), config, None).await;
    let channel = vault.channel().await;
    let mut keys = KeyServiceClient::new(channel.clone());
    create_tenant(&vault, "acme").await;
    preload(channel.clone(), "acme", 5, 1).await;
    erase(channel.clone(), "acme", "s4").await.expect("erase");
    let Some(locked) = Unwritable::make(&key_dir) else {
        return;
    };

    let refused = keys
        .rotate_root_key(pb::RotateRootKeyRequest {})
        .await
        .expect_err("the key file cannot be rewritten");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&key_dir.display().to_string()),
        "{refused:?}"
    );
    assert!(refused.message().contains("StateDirectory"), "{refused:?}");

    let failed = epoch(&mut keys)
        .await
        .expect_err("the root step cannot run");
    assert_eq!(failed.code(), Code::FailedPrecondition, "{failed:?}");
    let s = status(&mut keys, "", false).await;
    assert_eq!(
        marks(&s),
        [("acme".to_owned(), true)],
        "the mark waits for the root step"
    );
    assert!(s.epoch_started.is_some() && s.epoch_failures == 1, "{s:?}");
    assert!(
        s.last_epoch_failure_reason.contains("cannot be written"),
        "{s:?}"
    );
    assert_eq!(
        read_email(&channel, "acme", "s0").await.expect("read"),
        email(0)
    );

    // Writable again: the epoch completes; its tenant step, done before, is not redone.
    drop(locked);
    let done = epoch(&mut keys).await.expect("epoch");
    assert_eq!(done.root_versions_destroyed, [1]);
    let s = status(&mut keys, "", false).await;
    assert_eq!(marks(&s), [("acme".to_owned(), false)]);
    assert!(s.epoch_started.is_none(), "{s:?}");
    assert_eq!(
        s.tenants[0].current_version, 2,
        "one rotation for the one epoch"
    );
    assert_eq!(
        read_email(&channel, "acme", "s0").await.expect("read"),
        email(0)
    );
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_refuses_a_key_location_that_cannot_be_rewritten_or_would_not_survive() {
    async fn start(config: pii_vault::config::Config) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let store = std::sync::Arc::new(
            pii_vault::storage::SledStore::open(&config.store_dir(), 1 << 20).expect("store"),
        );
        pii_vault::server::serve(listener, config, store, std::future::pending())
            .await
            .expect_err("the start is refused")
            .to_string()
    }

    let dir = TempDir::new().expect("dir");
    let (config, key_dir) = config_with_key_dir(dir.path());
    if let Some(_locked) = Unwritable::make(&key_dir) {
        let why = start(config).await;
        assert!(why.contains(&key_dir.display().to_string()), "{why}");
        assert!(why.contains("cannot be written"), "{why}");
    }

    // A memory file system (a Kubernetes `emptyDir` with `medium: Memory`, /dev/shm).
    let shm = Path::new("/dev/shm");
    let data = TempDir::new().expect("dir");
    if !pii_vault::keyring::on_memory_fs(shm) || pii_vault::keyring::on_memory_fs(data.path()) {
        eprintln!("no memory file system beside a disk-backed temp dir here");
        return;
    }
    let keys = tempfile::Builder::new()
        .tempdir_in(shm)
        .expect("dir in /dev/shm");
    let key_file = keys.path().join("root.key");
    let config = test_config(data.path(), |raw| raw.keys.root_key_file = Some(key_file));
    let why = start(config).await;
    assert!(why.contains(&keys.path().display().to_string()), "{why}");
    assert!(why.contains("memory file system"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_killed_mid_way_resumes_on_restart_and_completes() {
    const SUBJECTS: usize = 3000;
    let dir = TempDir::new().expect("dir");
    let process_kill::Preloaded {
        data,
        config,
        log,
        server,
        channel,
    } = process_kill::Preloaded::start(dir.path(), SUBJECTS).await;
    let receipt = erase(channel.clone(), "acme", "s0").await.expect("erase");
    // The epoch runs on the server's worker; the call is dropped with the process.
    let mut asker = KeyServiceClient::new(channel.clone());
    let running = tokio::spawn(async move { epoch(&mut asker).await });
    let mut keys = KeyServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&mut keys, "acme", false).await;
        if s.tenants[0]
            .rewrap
            .as_ref()
            .is_some_and(|j| j.subjects_scanned >= (SUBJECTS / 4) as u64)
        {
            assert!(s.epoch_started.is_some(), "{s:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the epoch's re-wrap made no progress: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((keys, channel));
    server.kill();
    let _ = running.await;

    // Restarted, the worker finds the epoch under way and finishes it on its own.
    process_kill::write_config(&config, &data);
    let server = process_kill::ServerProcess::spawn(&config, &log);
    let channel = server.channel(&data).await;
    let mut keys = KeyServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    let s = loop {
        let s = status(&mut keys, "acme", true).await;
        if s.epoch_started.is_none() {
            break s;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the epoch did not resume: {s:?}\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(s.last_epoch.is_some(), "{s:?}");
    assert_eq!(marks(&s), [("acme".to_owned(), false)]);
    let acme = &s.tenants[0];
    assert_eq!(
        acme.current_version, 2,
        "resumed, not rotated again: {acme:?}"
    );
    assert_eq!(
        acme.versions
            .iter()
            .filter(|v| v.destroyed_at.is_none())
            .count(),
        1,
        "{acme:?}"
    );
    let again = erase(channel.clone(), "acme", "s0")
        .await
        .expect("erase again");
    assert_eq!(again.final_after, receipt.final_after);
    for i in (1..SUBJECTS).step_by(97) {
        assert_eq!(
            read_email(&channel, "acme", &format!("s{i}"))
                .await
                .expect("read"),
            email(i)
        );
    }
}
