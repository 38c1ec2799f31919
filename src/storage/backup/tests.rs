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

fn backup_file(db: &sled::Db, dir: &Path) -> (PathBuf, Manifest) {
    let mut bytes = Vec::new();
    let stamp = Stamp {
        created_unix: 42,
        restorable_until_unix: 42 + 86_400,
    };
    let manifest = write(db, stamp, &mut |chunk| {
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
    assert_eq!(names[..2], ["meta", "t/acme/fields"]);
    assert_eq!(names.last(), Some(&"tenants"));
    assert_eq!(manifest.records(), 303);
    assert_eq!(verify(&path).expect("verifies"), manifest);

    let store = dir.path().join("store");
    assert_eq!(restore(&path, &store).expect("restores"), manifest);
    // `restore` just closed the store; sled lets go of its lock from its own threads.
    let restored =
        crate::storage::open_waiting_for_lock(&sled::Config::new().path(&store)).expect("open");
    for name in ["meta", "tenants", "t/acme/fields"] {
        let a = db.open_tree(name).expect("tree");
        let b = restored.open_tree(name).expect("tree");
        assert!(a.iter().eq(b.iter()), "{name} differs");
    }
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
