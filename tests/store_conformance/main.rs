//! The storage-trait conformance suite (`suite.rs`) against each backend built here.
//!
//! `cargo test --test store_conformance`

#[macro_use]
mod suite;

mod sled_backend {
    use std::sync::Arc;

    use pii_vault::storage::{SledStore, Store};
    use tempfile::TempDir;

    /// A fresh sled store in a temporary directory, removed after the check.
    fn open() -> (Arc<dyn Store>, TempDir) {
        let dir = TempDir::new().expect("temp dir");
        let store = SledStore::open(&dir.path().join("store"), 4 << 20).expect("open sled");
        (Arc::new(store), dir)
    }

    conformance_tests!(open);
}

/// The fault-injection wrapper, with no fault set, must be transparent.
mod faulty_wrapper {
    use std::sync::Arc;

    use pii_vault::storage::faults::FaultyStore;
    use pii_vault::storage::{SledStore, Store};
    use tempfile::TempDir;

    fn open() -> (Arc<dyn Store>, TempDir) {
        let dir = TempDir::new().expect("temp dir");
        let inner = SledStore::open(&dir.path().join("store"), 4 << 20).expect("open sled");
        (Arc::new(FaultyStore::new(Arc::new(inner))), dir)
    }

    conformance_tests!(open);
}
