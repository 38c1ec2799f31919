//! The backup format: round trip, dependency order, damaged and foreign files.

use super::*;

fn sample_db() -> sled::Db {
    let db = sled::Config::new().temporary(true).open().expect("db");
    for (tree, n) in [("meta", 2u32), ("tenants", 1), ("t/acme/fields", 300)] {
        let t = db.open_tree(tree).expect("tree");
        for i in 0..n {
            t.insert(i.to_be_bytes(), vec![7u8; 1000]).expect("insert");
        }
    }
    db
}

/// An audit log of five events, in `dir/audit`.
fn sample_audit(dir: &Path) -> SegmentLog {
    let log = SegmentLog::open(&dir.join("audit"), 1 << 20).expect("audit log");
    let events: Vec<(u64, Vec<u8>)> = (1..=5).map(|s| (s, vec![s as u8; 40])).collect();
    log.append(&events, b"head 5").expect("append");
    log
}

fn backup_file(db: &sled::Db, dir: &Path) -> (PathBuf, Manifest) {
    let audit = sample_audit(dir);
    let mut bytes = Vec::new();
    let stamp = Stamp {
        created_unix: 42,
        restorable_until_unix: 42 + 86_400,
    };
    let manifest = write(db, &audit, stamp, &mut |chunk| {
        bytes.extend_from_slice(&chunk);
        true
    })
    .expect("backup");
    let path = dir.join("vault.backup");
    std::fs::write(&path, &bytes).expect("write file");
    (path, manifest)
}

#[test]
fn round_trip_keeps_every_entry_in_dependency_order() {
    let dir = tempfile::tempdir().expect("dir");
    let db = sample_db();
    let (path, manifest) = backup_file(&db, dir.path());
    let names: Vec<&str> = manifest.trees.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names[..3], ["meta", "audit", "t/acme/fields"]);
    assert_eq!(names.last(), Some(&"tenants"));
    // Three meta entries with the audit head, five audit events.
    assert_eq!(manifest.records(), 3 + 5 + 300 + 1);
    assert_eq!(verify(&path).expect("verifies"), manifest);

    let store = dir.path().join("store");
    assert_eq!(restore(&path, &store).expect("restores"), manifest);
    // `restore` just closed the store; sled lets go of its lock from its own threads.
    let restored =
        crate::storage::open_waiting_for_lock(&sled::Config::new().path(&store)).expect("open");
    for name in ["tenants", "t/acme/fields"] {
        let a = db.open_tree(name).expect("tree");
        let b = restored.open_tree(name).expect("tree");
        assert!(a.iter().eq(b.iter()), "{name} differs");
    }
    // The audit log comes back in the form an earlier version stored it in (moved into
    // segment files when the store is opened).
    let meta = restored.open_tree("meta").expect("meta");
    assert_eq!(meta.len(), 3);
    assert_eq!(
        meta.get("audit_head").expect("get").as_deref(),
        Some(&b"head 5"[..])
    );
    let audit = restored.open_tree("audit").expect("audit");
    let events: Vec<(u64, Vec<u8>)> = audit
        .iter()
        .map(|kv| {
            let (k, v) = kv.expect("entry");
            (
                u64::from_be_bytes(k.as_ref().try_into().expect("seq")),
                v.to_vec(),
            )
        })
        .collect();
    assert_eq!(
        events,
        (1..=5).map(|s| (s, vec![s as u8; 40])).collect::<Vec<_>>()
    );
    drop(restored);
    assert!(matches!(
        restore(&path, &store),
        Err(BackupError::Exists { .. })
    ));
}

#[test]
fn damaged_or_truncated_files_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("dir");
    let (path, _) = backup_file(&sample_db(), dir.path());
    let good = std::fs::read(&path).expect("read");

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 1;
    std::fs::write(&path, &flipped).expect("write");
    let store = dir.path().join("store");
    assert!(matches!(
        restore(&path, &store),
        Err(BackupError::Checksum { .. })
    ));
    assert!(!store.exists() && !scratch_dir(&store).exists());

    std::fs::write(&path, &good[..good.len() - 100]).expect("write");
    assert!(matches!(verify(&path), Err(BackupError::Checksum { .. })));
    std::fs::write(&path, b"not a backup at all, just some text here").expect("write");
    assert!(matches!(verify(&path), Err(BackupError::NotABackup { .. })));
}
