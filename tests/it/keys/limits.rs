//! Usage limits: keys are rotated instead of reused, and counts never go back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pii_vault::proto::v1 as pb;
use pii_vault::storage::faults::FaultyStore;
use pii_vault::storage::{SledStore, Store};
use tempfile::TempDir;
use tonic::Code;

use super::*;
use crate::erasure::erase;
use crate::util::{
    assert_reason, create_tenant, get, keep_root, put, test_config, text, text_of, TestVault,
};

#[tokio::test]
async fn a_dek_at_its_usage_limit_is_replaced_not_reused() {
    let vault = TestVault::start_with(|raw| {
        raw.keys.max_encryptions_per_dek = Some(3);
        raw.keys.max_encryptions_per_wrapping_key = Some(16);
    })
    .await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    for f in 0..10 {
        put(
            &mut client,
            "acme",
            "alice",
            vec![text(
                &format!("f{f}"),
                pb::Category::Profile,
                &format!("v{f}"),
            )],
        )
        .await
        .expect("put");
    }
    let four = (0..4)
        .map(|f| text(&format!("g{f}"), pb::Category::Profile, "x"))
        .collect();
    let err = put(&mut client, "acme", "alice", four)
        .await
        .expect_err("more seals than one DEK may do");
    assert_reason(&err, Code::FailedPrecondition, "KEY_LIMIT_REACHED");
    assert!(err.message().contains("max_encryptions_per_dek"), "{err:?}");
    let read = get(&mut client, "acme", "alice", &[]).await.expect("read");
    assert_eq!(read.len(), 10);
    for f in &read {
        assert_eq!(text_of(f), format!("v{}", &f.name[1..]));
    }
    drop(client);
    let vault = vault.restart().await;
    let mut client = vault.records().await;
    // After a restart the count continues from the reservation, never lower.
    put(
        &mut client,
        "acme",
        "alice",
        vec![text("f0", pb::Category::Profile, "v0 again")],
    )
    .await
    .expect("put after restart");
    assert_eq!(
        get(&mut client, "acme", "alice", &["f9"])
            .await
            .expect("f9")[0]
            .value,
        read[9].value
    );
    drop(client);
    let dir = vault.stop().await;

    let store = SledStore::open(&dir.path().join("store"), 16 << 20).expect("open");
    let (acme, alice) = (tid("acme"), sid("alice"));
    let record = store.subject(&acme, &alice).expect("read").expect("alice");
    let mut seals_per_dek: HashMap<u32, u32> = HashMap::new();
    let fields = store.fields(&acme, &alice).expect("fields");
    for f in &fields {
        *seals_per_dek.entry(f.sealed.key_version()).or_default() += 1;
    }
    // Ten seals under a limit of three: f0..f2 under v1, f3..f5 under v2, f6..f8 under v3,
    // f9 under v4; f0's rewrite after the restart continues the count of v4.
    let version_of = |name: &str| {
        fields
            .iter()
            .find(|f| f.meta.name.as_str() == name)
            .map(|f| f.sealed.key_version())
    };
    assert_eq!(version_of("f1"), Some(1));
    assert_eq!(version_of("f3"), Some(2));
    assert_eq!(version_of("f8"), Some(3));
    assert_eq!(version_of("f9"), Some(4));
    assert!(version_of("f0") >= Some(4), "{seals_per_dek:?}");
    assert!(seals_per_dek.values().all(|n| *n <= 3), "{seals_per_dek:?}");
    assert!(record.dek_reserved <= 3);
    let mut kept: Vec<u32> = record.older_deks.iter().map(|d| d.version).collect();
    kept.push(record.dek_version);
    for v in seals_per_dek.keys() {
        assert!(kept.contains(v), "DEK v{v} kept for reading: {kept:?}");
    }
}

#[tokio::test]
async fn a_tenant_key_at_its_usage_limit_is_rotated_and_its_old_version_retired() {
    let vault = TestVault::start_with(|raw| {
        raw.keys.max_encryptions_per_wrapping_key = Some(16);
    })
    .await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    let one = |i: usize| vec![text("email", pb::Category::Account, &email(i))];
    for i in 0..10 {
        put(&mut client, "acme", &format!("s{i}"), one(i))
            .await
            .expect("put");
    }
    for i in 0..6 {
        erase(vault.channel().await, "acme", &format!("s{i}"))
            .await
            .expect("erase");
    }
    // Ten more subjects: the 17th wrap of KEK v1 rotates it instead.
    for i in 10..20 {
        put(&mut client, "acme", &format!("s{i}"), one(i))
            .await
            .expect("put");
    }
    let mut keys = keys_client(&vault).await;
    let t = wait_for_rewrap(&mut keys, "acme", Duration::from_secs(30)).await;
    assert_eq!(t.current_version, 2, "{t:?}");
    let v1 = t.versions.iter().find(|v| v.version == 1).expect("v1");
    assert_eq!(v1.encryptions, 16);
    assert!(v1.destroyed_at.is_some(), "{t:?}");
    let v2 = t.versions.iter().find(|v| v.version == 2).expect("v2");
    assert!(v2.encryptions <= 16 && v2.wraps == Some(14), "{t:?}");
    for i in 6..20 {
        let f = get(&mut client, "acme", &format!("s{i}"), &[])
            .await
            .expect("read");
        assert_eq!(text_of(&f[0]), email(i));
    }
    // Counts never go back across a restart: reservations count as used.
    drop((client, keys));
    let vault = vault.restart().await;
    let mut keys = keys_client(&vault).await;
    let after = status(&mut keys, "acme", false).await;
    let v2_after = after.tenants[0]
        .versions
        .iter()
        .find(|v| v.version == 2)
        .expect("v2");
    assert!(
        v2_after.encryptions >= v2.encryptions,
        "{v2_after:?} vs {v2:?}"
    );
}

#[tokio::test]
async fn a_crash_between_reservation_and_use_never_lowers_the_count() {
    let dir = TempDir::new().expect("dir");
    let config = test_config(dir.path(), |_| {});
    let data = dir.path().to_path_buf();
    // Only explicit flushes make writes durable, so a copy of the files is a crash image.
    let open = |path: &Path| -> Arc<FaultyStore> {
        let sled =
            SledStore::open_with_flush_interval(&path.join("store"), 16 << 20, None).expect("open");
        Arc::new(FaultyStore::new(Arc::new(sled)))
    };
    let store = open(&data);
    let vault = TestVault::start_on(dir, config.clone(), Some(store.clone())).await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    for f in ["f0", "f1"] {
        put(
            &mut client,
            "acme",
            "alice",
            vec![text(f, pb::Category::Profile, "x")],
        )
        .await
        .expect("put");
    }
    drop((client, store));
    // A restart forgets the in-memory block: the next write must reserve a new one.
    let dir = vault.stop().await;
    let (acme, alice) = (tid("acme"), sid("alice"));
    let store = open(&data);
    let before = store
        .subject(&acme, &alice)
        .expect("read")
        .expect("alice")
        .dek_reserved;
    // The crash happens at the moment the sealed values reach the store: the
    // reservation made for them must already be on disk by then.
    let crash = TempDir::new().expect("crash image");
    let image = crash.path().to_path_buf();
    let seen_in_memory = Arc::new(AtomicU64::new(0));
    let taken = Arc::new(AtomicBool::new(false));
    {
        let (inner, image, seen, taken) = (
            Arc::downgrade(&store),
            image.clone(),
            seen_in_memory.clone(),
            taken.clone(),
        );
        let data = data.clone();
        store.on_put_fields(move || {
            if taken.swap(true, Ordering::SeqCst) {
                return;
            }
            if let Some(s) = inner.upgrade() {
                let rec = s.subject(&tid("acme"), &sid("alice")).ok().flatten();
                seen.store(rec.map_or(0, |r| r.dek_reserved), Ordering::SeqCst);
            }
            copy_dir(&data, &image);
        });
    }
    let vault = TestVault::start_on(dir, config.clone(), Some(store.clone())).await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "alice",
        vec![text("f2", pb::Category::Profile, "x")],
    )
    .await
    .expect("put");
    drop((client, store));
    vault.stop().await;
    let in_memory = seen_in_memory.load(Ordering::SeqCst);
    assert!(
        taken.load(Ordering::SeqCst) && in_memory > before,
        "{in_memory} vs {before}"
    );

    // The crash image holds the reservation.
    let crashed = SledStore::open(&image.join("store"), 16 << 20).expect("open crash image");
    let on_disk = crashed
        .subject(&acme, &alice)
        .expect("read")
        .expect("alice")
        .dek_reserved;
    assert_eq!(on_disk, in_memory, "reservation durable before use");
    assert!(crashed
        .field(
            &acme,
            &alice,
            &pii_vault::domain::FieldName::parse("f2").expect("name")
        )
        .expect("read")
        .is_none());
    drop(crashed);

    // Restarting from the crash image, the count continues from there.
    let crash_dir = TempDir::new().expect("dir");
    copy_dir(&image, crash_dir.path());
    let config = test_config(crash_dir.path(), keep_root(&config));
    let vault = TestVault::start_on(crash_dir, config, None).await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "alice",
        vec![text("f3", pb::Category::Profile, "x")],
    )
    .await
    .expect("put after the crash");
    assert_eq!(
        get(&mut client, "acme", "alice", &[])
            .await
            .expect("read")
            .len(),
        3
    );
    drop(client);
    let dir = vault.stop().await;
    let store = SledStore::open(&dir.path().join("store"), 16 << 20).expect("open");
    let after = store
        .subject(&acme, &alice)
        .expect("read")
        .expect("alice")
        .dek_reserved;
    assert!(
        after > on_disk,
        "count never lower: {after} after {on_disk}"
    );
}
