//! Rotation of tenant and root keys under load, and the `keys` CLI.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pii_vault::proto::v1 as pb;
use pii_vault::storage::{SledStore, Store};
use tonic::Code;

use super::*;
use crate::util::{create_tenant, get, put, text, text_of, TestVault};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_tenant_key_with_10000_subjects_under_load_loses_nothing() {
    const SUBJECTS: usize = 10_000;
    let vault = TestVault::start_with(|raw| {
        raw.keys.rewrap_batch_size = Some(250);
        raw.keys.rewrap_pause_ms = Some(10);
    })
    .await;
    create_tenant(&vault, "acme").await;
    preload(vault.channel().await, "acme", SUBJECTS, 8).await;
    let mut keys = keys_client(&vault).await;

    // Load while the re-wrap runs: readers check values, writers update existing subjects
    // and create new ones; every acknowledged write is remembered.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let done_ops = Arc::new(AtomicU64::new(0));
    let written: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut load = Vec::new();
    for w in 0..6usize {
        let channel = vault.channel().await;
        let (stop, failures, done_ops, written) = (
            stop.clone(),
            failures.clone(),
            done_ops.clone(),
            written.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut client = pb::record_service_client::RecordServiceClient::new(channel);
            let mut n = w * 7919;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let i = n % SUBJECTS;
                let ok = if w < 4 {
                    match get(&mut client, "acme", &format!("s{i}"), &["email"]).await {
                        Ok(f) => text_of(&f[0]) == email(i),
                        Err(_) => false,
                    }
                } else {
                    // Existing subjects get a note; every 5th write creates a subject.
                    let subject = if n % 5 == 0 {
                        format!("new-{w}-{n}")
                    } else {
                        format!("s{i}")
                    };
                    let value = format!("note {n}");
                    let r = put(
                        &mut client,
                        "acme",
                        &subject,
                        vec![text("note", pb::Category::Profile, &value)],
                    )
                    .await;
                    if r.is_ok() {
                        written.lock().expect("lock").insert(subject, value);
                    }
                    r.is_ok()
                };
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                done_ops.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rotated = keys
        .rotate_tenant_key(pb::RotateTenantKeyRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!((rotated.previous_version, rotated.new_version), (1, 2));
    // A second rotation while the re-wrap runs is refused.
    let busy = keys
        .rotate_tenant_key(pb::RotateTenantKeyRequest {
            tenant_id: "acme".into(),
        })
        .await;
    let ops_at_start = done_ops.load(Ordering::SeqCst);
    let mut saw_progress = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(&mut keys, "acme", false).await;
        match &s.tenants[0].rewrap {
            Some(r) => saw_progress |= r.subjects_rewrapped > 0,
            None => break,
        }
        assert!(Instant::now() < deadline, "re-wrap did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ops_during = done_ops.load(Ordering::SeqCst) - ops_at_start;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.expect("load task");
    }
    if let Err(s) = busy {
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    }
    assert!(saw_progress, "progress was visible while the re-wrap ran");
    assert!(ops_during > 0, "load ran during the re-wrap");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no request failed");

    let t = wait_for_rewrap(&mut keys, "acme", Duration::from_secs(10)).await;
    let written = written.lock().expect("lock").clone();
    let new_subjects = written.keys().filter(|s| s.starts_with("new-")).count() as u64;
    assert_eq!(t.current_version, 2);
    assert_eq!(t.subjects, Some(SUBJECTS as u64 + new_subjects));
    let v1 = t
        .versions
        .iter()
        .find(|v| v.version == 1)
        .expect("v1 listed");
    assert!(v1.destroyed_at.is_some(), "old version destroyed: {t:?}");
    assert_eq!(v1.wraps, Some(0));
    let v2 = t.versions.iter().find(|v| v.version == 2).expect("v2");
    assert_eq!(v2.wraps, t.subjects, "every DEK is wrapped under v2");
    assert!(v2.current && v2.destroyed_at.is_none());

    // Every field reads back.
    let mut client = vault.records().await;
    for i in 0..SUBJECTS {
        let subject = format!("s{i}");
        let fields = get(&mut client, "acme", &subject, &[]).await.expect("read");
        let by_name: HashMap<_, _> = fields
            .iter()
            .map(|f| (f.name.as_str(), text_of(f)))
            .collect();
        assert_eq!(by_name["email"], email(i));
        if let Some(note) = written.get(&subject) {
            assert_eq!(by_name["note"], note);
        }
    }
    for (subject, note) in written.iter().filter(|(s, _)| s.starts_with("new-")) {
        let fields = get(&mut client, "acme", subject, &["note"])
            .await
            .expect("new");
        assert_eq!(text_of(&fields[0]), note);
    }

    // In the store: no DEK under v1, and v1 itself is gone.
    drop(client);
    let dir = vault.stop().await;
    let store = SledStore::open(&dir.path().join("store"), 64 << 20).expect("open");
    let acme = tid("acme");
    let wraps = wraps_by_kek(&store, &acme);
    assert_eq!(wraps.keys().copied().collect::<Vec<_>>(), [2], "{wraps:?}");
    assert!(store.kek(&acme, 1).expect("kek").is_none(), "v1 destroyed");
    assert!(store.kek(&acme, 2).expect("kek").is_some());
}

#[tokio::test]
async fn rotating_the_root_key_rewrites_the_file_and_keeps_everything_readable() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    create_tenant(&vault, "globex").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "a@example.com")],
    )
    .await
    .expect("put");
    let mut keys = keys_client(&vault).await;
    let r = keys
        .rotate_root_key(pb::RotateRootKeyRequest {})
        .await
        .expect("rotate root")
        .into_inner();
    // v1 is retired, not destroyed: it still opens backups for the backup window (30 days).
    assert_eq!(
        (
            r.current_version,
            r.retired_versions.as_slice(),
            r.destroyed_versions.as_slice()
        ),
        (2, &[1][..], &[][..])
    );
    // Two tenant KEKs and the audit key.
    assert_eq!(r.keys_rewrapped, 3);
    let file = vault.config.root_source.load().expect("load");
    assert_eq!(file.version_numbers(), [1, 2]);
    assert_eq!(
        file.retired().iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        [1]
    );
    let s = status(&mut keys, "", false).await;
    let root = s.root.expect("root");
    assert_eq!(root.current_version, 2);
    assert!(
        !root.rotation_pending,
        "a retired version is not a pending rotation"
    );
    let v2 = root.versions.iter().find(|v| v.version == 2).expect("v2");
    assert_eq!(v2.wraps, Some(3));
    assert!(v2.retired_at.is_none());
    let v1 = root.versions.iter().find(|v| v.version == 1).expect("v1");
    assert_eq!(v1.wraps, Some(0), "v1 wraps nothing any more");
    let (retired, until) = (
        v1.retired_at.as_ref().expect("retired").seconds,
        v1.destroyed_after
            .as_ref()
            .expect("destroyed after")
            .seconds,
    );
    assert_eq!(until - retired, 30 * 86_400, "kept for the backup window");
    assert!(v1.destroyed_at.is_none());
    drop((client, keys));

    let vault = vault.restart().await;
    let mut client = vault.records().await;
    let f = get(&mut client, "acme", "alice", &[])
        .await
        .expect("read after restart");
    assert_eq!(text_of(&f[0]), "a@example.com");
    let verify = pb::audit_service_client::AuditServiceClient::new(vault.channel().await)
        .verify_audit_log(pb::VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(verify.ok, "{verify:?}");
    // Key operations are audited.
    let mut stream = pb::audit_service_client::AuditServiceClient::new(vault.channel().await)
        .query_audit_log(pb::QueryAuditLogRequest {
            operation: "rotate_root_key".into(),
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner();
    let mut events = Vec::new();
    while let Some(m) = stream.message().await.expect("stream") {
        events.extend(m.events);
    }
    let events = crate::util::endings(events);
    assert_eq!(events.len(), 1);
    assert!(events[0].reason.contains("retired v1"), "{:?}", events[0]);
}

/// Runs `pii-vault keys ARGS` against the vault; (success, stdout, stderr).
async fn cli(vault: &TestVault, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pii-vault"));
    cmd.arg("keys")
        .args(args)
        .arg("--addr")
        .arg(vault.addr.to_string())
        .arg("--data-dir")
        .arg(vault.data_dir());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run pii-vault keys");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_command_rotates_reports_and_shreds() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    create_tenant(&vault, "scratch").await;
    preload(vault.channel().await, "acme", 50, 4).await;
    let (ok, out, err) = cli(&vault, &["rotate-tenant", "acme", "--format", "json"]).await;
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(json["new_version"], 2);
    assert_eq!(json["status"]["tenants"][0]["current_version"], 2);
    assert!(err.contains("re-wrap to v2 complete"), "{err}");

    let (ok, out, err) = cli(&vault, &["status", "acme"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("tenant acme: current v2, 50 subjects"),
        "{out}"
    );

    let (ok, _, err) = cli(&vault, &["shred-tenant", "scratch"]).await;
    assert!(!ok && err.contains("--confirm"), "{err}");
    let (ok, out, err) = cli(
        &vault,
        &[
            "shred-tenant",
            "scratch",
            "--confirm",
            "scratch",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("\"destroyed_versions\":[1]"), "{out}");

    let (ok, out, err) = cli(&vault, &["epoch", "--format", "json"]).await;
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(json["root_version"], 2);
    assert_eq!(json["shredded_tenants"][0], "scratch");
    let (ok, out, err) = cli(&vault, &["rotate-root"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("root key: now v3"), "{out}");
}
