//! The storage-trait conformance suite (`suite.rs`) against each backend built here.
//!
//! `cargo test --test store_conformance`

#[path = "../support/postgres.rs"]
mod postgres;
#[macro_use]
mod suite;

mod sled_backend {
    use std::sync::Arc;

    use pii_vault::storage::{SledStore, Store};
    use tempfile::TempDir;

    /// A fresh sled store in a temporary directory, removed after the check.
    fn open() -> Option<(Arc<dyn Store>, TempDir)> {
        let dir = TempDir::new().expect("temp dir");
        let store = SledStore::open(&dir.path().join("store"), 4 << 20).expect("open sled");
        Some((Arc::new(store), dir))
    }

    conformance_tests!(open);
}

/// The fault-injection wrapper, with no fault set, must be transparent.
mod faulty_wrapper {
    use std::sync::Arc;

    use pii_vault::storage::faults::FaultyStore;
    use pii_vault::storage::{SledStore, Store};
    use tempfile::TempDir;

    fn open() -> Option<(Arc<dyn Store>, TempDir)> {
        let dir = TempDir::new().expect("temp dir");
        let inner = SledStore::open(&dir.path().join("store"), 4 << 20).expect("open sled");
        Some((Arc::new(FaultyStore::new(Arc::new(inner))), dir))
    }

    conformance_tests!(open);
}

/// The PostgreSQL backend, each check in a fresh database of a throw-away server.
mod postgres_backend {
    use std::sync::Arc;

    use pii_vault::storage::{PgStore, Store};

    use crate::postgres;

    /// A store on a new database of the shared test server; `None` (skipped, the reason
    /// printed) without one.
    fn open() -> Option<(Arc<dyn Store>, ())> {
        let server = postgres::server_or_skip("the PostgreSQL conformance check")?;
        let url = server.fresh_database();
        Some((Arc::new(PgStore::connect(&url, 4).expect("connect")), ()))
    }

    conformance_tests!(open);
}
