//! A change and its audit event are durable together (issue 17, item 2): the event of a
//! change is recorded, as an intent, before the change is made. With the audit log unable to
//! record (the store's append failing, as on a full disk, or the writer stuck past the
//! audit timeout), every read and every change answers UNAVAILABLE, reads return nothing,
//! and the changes leave no trace in the store. Afterwards every intent in the log has its
//! ending, and the chain verifies. A start after a crash records a torn tail it cut and an
//! intent whose ending was never recorded.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pii_vault::audit::{AuditEvent, ChainMark, EventDraft, Head, Operation, Outcome, HEAD};
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::proto::v1 as pb;
use pii_vault::storage::faults::Faults;
use pii_vault::storage::{SledStore, Store};
use tonic::transport::Channel;
use tonic::Code;

use crate::erasure::erase;
use crate::util::{
    all_audit_events, create_tenant, faulty_vault, get, put, text, text_of, TestVault,
};

const TENANT: &str = "acme";

async fn key_version(channel: &Channel) -> u32 {
    pb::key_service_client::KeyServiceClient::new(channel.clone())
        .get_key_status(pb::GetKeyStatusRequest {
            tenant_id: TENANT.into(),
            count_deks: false,
        })
        .await
        .expect("key status")
        .into_inner()
        .tenants[0]
        .current_version
}

async fn read(channel: &Channel, subject: &str) -> Result<Vec<(String, String)>, tonic::Status> {
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());
    get(&mut records, TENANT, subject, &[]).await.map(|fields| {
        fields
            .iter()
            .map(|f| (f.name.clone(), text_of(f).to_owned()))
            .collect()
    })
}

/// Every request the fault must refuse, by name, with its result.
async fn attempts(channel: &Channel) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());
    let mut keys = pb::key_service_client::KeyServiceClient::new(channel.clone());
    let mut out = Vec::new();
    let changed = vec![text("email", pb::Category::Account, "changed@example.com")];
    out.push((
        "PutFields (replace)",
        put(&mut records, TENANT, "alice", changed).await.map(drop),
    ));
    let ghost = vec![text("email", pb::Category::Account, "ghost@example.com")];
    out.push((
        "PutFields (new subject)",
        put(&mut records, TENANT, "ghost", ghost).await.map(drop),
    ));
    out.push((
        "DeleteFields",
        records
            .delete_fields(pb::DeleteFieldsRequest {
                tenant_id: TENANT.into(),
                subject_id: "alice".into(),
                field_names: vec!["email".into()],
            })
            .await
            .map(drop),
    ));
    out.push((
        "EraseSubject",
        erase(channel.clone(), TENANT, "alice").await.map(drop),
    ));
    out.push((
        "RotateTenantKey",
        keys.rotate_tenant_key(pb::RotateTenantKeyRequest {
            tenant_id: TENANT.into(),
        })
        .await
        .map(drop),
    ));
    out.push(("GetFields", read(channel, "alice").await.map(drop)));
    out
}

/// The tenant and alice's email; returns a channel and what a read of alice returns.
async fn seed_alice(vault: &TestVault) -> (Channel, Vec<(String, String)>) {
    create_tenant(vault, TENANT).await;
    let channel = vault.channel().await;
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());
    let email = vec![text("email", pb::Category::Account, "alice@example.com")];
    put(&mut records, TENANT, "alice", email)
        .await
        .expect("put");
    let before = read(&channel, "alice").await.expect("read");
    (channel, before)
}

#[tokio::test]
async fn a_failed_or_stuck_audit_append_answers_unavailable_and_changes_nothing() {
    let (vault, faults) = faulty_vault(|raw| raw.audit.timeout_ms = Some(1_000)).await;
    let (channel, before) = seed_alice(&vault).await;
    let version = key_version(&channel).await;

    faults.stall_millis.store(2_500, Ordering::SeqCst);
    for (fault, flag) in [
        ("store append fails", &faults.fail_audit),
        ("writer stuck", &faults.stall_audit),
    ] {
        Faults::set(flag, true);
        for (what, result) in attempts(&channel).await {
            match result {
                Err(s) if s.code() == Code::Unavailable => {
                    assert!(
                        !s.message().contains("alice@example.com"),
                        "{fault}: {what}: {s:?}"
                    );
                }
                other => panic!("{fault}: {what} answered {other:?}, not UNAVAILABLE"),
            }
        }
        Faults::set(flag, false);
        // Let a stuck append finish (and the writer end the intents it wrote for callers
        // that had given up).
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        assert_eq!(
            read(&channel, "alice").await.expect("read after the fault"),
            before,
            "{fault}: alice changed"
        );
        let ghost = read(&channel, "ghost")
            .await
            .expect_err("ghost was never written");
        assert_eq!(ghost.code(), Code::NotFound, "{fault}: {ghost:?}");
        assert_eq!(key_version(&channel).await, version, "{fault}: key rotated");
    }

    let events = all_audit_events(&vault).await;
    assert_every_intent_ended(&events);
    let abandoned: Vec<&pb::AuditEvent> = events
        .iter()
        .filter(|e| e.reason.starts_with("not made: the request gave up"))
        .collect();
    assert!(
        !abandoned.is_empty(),
        "the stuck writer's intents were ended by the writer"
    );
    assert!(abandoned
        .iter()
        .all(|e| e.outcome == pb::Outcome::Error as i32));
    let report = verify_online(&channel).await;
    assert!(report.ok, "{report:?}");
}

/// Every intent the log holds has exactly one ending (there are at least two: the tenant's
/// creation and the first put).
fn assert_every_intent_ended(events: &[pb::AuditEvent]) {
    let mut endings: HashMap<(String, String), Vec<i32>> = HashMap::new();
    for e in events {
        if e.outcome != pb::Outcome::Intent as i32 {
            endings
                .entry((e.request_id.clone(), e.operation.clone()))
                .or_default()
                .push(e.outcome);
        }
    }
    let intents: Vec<&pb::AuditEvent> = events
        .iter()
        .filter(|e| e.outcome == pb::Outcome::Intent as i32)
        .collect();
    assert!(intents.len() >= 2, "the first put and tenant: {intents:?}");
    for intent in &intents {
        let ended = endings
            .get(&(intent.request_id.clone(), intent.operation.clone()))
            .unwrap_or_else(|| panic!("intent without its ending: {intent:?}"));
        assert_eq!(ended.len(), 1, "{intent:?}: {ended:?}");
    }
}

async fn verify_online(channel: &Channel) -> pb::VerifyAuditLogResponse {
    pb::audit_service_client::AuditServiceClient::new(channel.clone())
        .verify_audit_log(pb::VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner()
}

/// A tmpfs of its own mounted on a directory (root only), lazily unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        match out.status.success() {
            true => Ok(Self(dir.to_path_buf())),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        }
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(status.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The audit log's own filesystem fills up (a real ENOSPC from a small tmpfs under
/// `<store>/audit`, where mounting one is allowed: as root). Reads and changes answer
/// UNAVAILABLE and change nothing; once there is room again the vault goes on, with the
/// data as it was and a chain that verifies.
#[tokio::test]
async fn a_full_disk_under_the_audit_log_answers_unavailable_and_changes_nothing() {
    let dir = tempfile::TempDir::new().expect("dir");
    let config = crate::util::test_config(dir.path(), |raw| raw.audit.timeout_ms = Some(2_000));
    let disk = match Tmpfs::mount(&config.store_dir().join("audit"), "96k") {
        Ok(disk) => disk,
        Err(why) => {
            println!("skipped: cannot mount a tmpfs for the audit log here ({why})");
            return;
        }
    };
    let vault = TestVault::start_on(dir, config, None).await;
    let (channel, before) = seed_alice(&vault).await;

    // Reads until the log's filesystem is full.
    let mut full = None;
    for _ in 0..5_000 {
        if let Err(status) = read(&channel, "alice").await {
            full = Some(status);
            break;
        }
    }
    let full = full.expect("the 96 KiB filesystem filled up");
    assert_eq!(full.code(), Code::Unavailable, "{full:?}");
    for (what, result) in attempts(&channel).await {
        match result {
            Err(s) if s.code() == Code::Unavailable => {
                assert!(!s.message().contains("alice@example.com"), "{what}: {s:?}");
            }
            other => panic!("{what} answered {other:?} on a full disk, not UNAVAILABLE"),
        }
    }

    // Room again: the vault serves, and nothing refused was made.
    disk.resize("4m");
    let mut after = None;
    for _ in 0..50 {
        if let Ok(fields) = read(&channel, "alice").await {
            after = Some(fields);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after.as_ref(), Some(&before), "alice as she was");
    let ghost = read(&channel, "ghost").await.expect_err("never written");
    assert_eq!(ghost.code(), Code::NotFound, "{ghost:?}");
    assert_every_intent_ended(&all_audit_events(&vault).await);
    let report = verify_online(&channel).await;
    assert!(report.ok, "{report:?}");
    drop(vault);
    drop(disk);
}

/// The audit key of a stopped vault in `dir` (file custody), and its store.
fn stopped_log(
    dir: &std::path::Path,
) -> (
    Arc<dyn Store>,
    pii_vault::crypto::Key<pii_vault::crypto::Audit>,
) {
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&dir.join("store"), 1 << 20).expect("open"));
    let root = RootKeys::load(&dir.join("root.key")).expect("root key");
    let keys = Keyring::open(root, store.clone()).expect("keyring");
    let key = keys.audit_key().expect("audit key");
    (store, key)
}

#[tokio::test]
async fn a_torn_tail_and_an_intent_without_its_ending_are_recorded_at_the_next_start() {
    let vault = TestVault::start().await;
    create_tenant(&vault, TENANT).await;
    let mut records = vault.records().await;
    let email = vec![text("email", pb::Category::Account, "alice@example.com")];
    put(&mut records, TENANT, "alice", email)
        .await
        .expect("put");
    drop(records);
    let config = vault.config.clone();
    let dir = vault.stop().await;

    // As a crash would leave it: a put's intent on disk (listed open in its batch's head),
    // no ending; then a batch torn half-way.
    {
        let (store, key) = stopped_log(dir.path());
        let (last, bytes) = store.audit_last().expect("last").expect("an event");
        let prev = AuditEvent::decode(&bytes).expect("decode").mac;
        let draft = EventDraft {
            time: pii_vault::domain::Timestamp(1),
            request_id: "crashed-put".into(),
            caller: "uri:spiffe://pii-vault.local/dev-admin".into(),
            operation: Operation::PutFields,
            tenant: TENANT.into(),
            subject: "alice".into(),
            fields: vec!["email".into()],
            purpose: String::new(),
            outcome: Outcome::Intent,
            reason: String::new(),
            rule: String::new(),
        };
        let intent = AuditEvent::seal(&key, last + 1, draft, prev);
        let head = Head {
            mark: ChainMark::new(&key, HEAD, intent.seq, intent.mac),
            open_intents: vec![intent.seq],
        };
        store
            .audit_append(&[(intent.seq, intent.encode())], &head.encode())
            .expect("append the intent");
    }
    let segment = std::fs::read_dir(dir.path().join("store").join("audit"))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .expect("a segment");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("open");
    std::io::Write::write_all(&mut f, &[0xA5; 100]).expect("torn tail");
    drop(f);

    let vault = TestVault::start_on(dir, config.clone(), None).await;
    // The writer records them as it starts, alongside the first requests.
    let mut events = Vec::new();
    for _ in 0..100 {
        events = all_audit_events(&vault).await;
        if events.iter().any(|e| e.operation == "audit_recovery") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovery: Vec<&pb::AuditEvent> = events
        .iter()
        .filter(|e| e.operation == "audit_recovery")
        .collect();
    assert_eq!(
        recovery.len(),
        1,
        "{:?}",
        events
            .iter()
            .map(|e| (e.seq, e.operation.as_str(), e.outcome, e.reason.as_str()))
            .collect::<Vec<_>>()
    );
    assert!(
        recovery[0].reason.contains("torn tail of 100 bytes"),
        "{:?}",
        recovery[0]
    );
    let endings: Vec<&pb::AuditEvent> = events
        .iter()
        .filter(|e| e.request_id == "crashed-put")
        .collect();
    assert_eq!(
        endings.len(),
        2,
        "the intent and its recorded ending: {endings:?}"
    );
    assert_eq!(endings[1].outcome, pb::Outcome::Error as i32);
    assert_eq!(endings[1].operation, "put_fields");
    assert_eq!(endings[1].subject_id, "alice");
    assert!(
        endings[1].reason.contains("ending unknown"),
        "{:?}",
        endings[1]
    );
    let report = pb::audit_service_client::AuditServiceClient::new(vault.channel().await)
        .verify_audit_log(pb::VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(report.ok, "{report:?}");

    // Recorded once: the next start finds nothing to record.
    let dir = vault.stop().await;
    let vault = TestVault::start_on(dir, config, None).await;
    let again = all_audit_events(&vault).await;
    assert_eq!(
        again
            .iter()
            .filter(|e| e.operation == "audit_recovery" || e.request_id == "crashed-put")
            .count(),
        3
    );
    vault.stop().await;
}
