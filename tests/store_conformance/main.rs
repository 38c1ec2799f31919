//! The storage-trait conformance suite (`suite.rs`) against each backend built here.
//!
//! `cargo test --test store_conformance`

#[path = "../support/postgres.rs"]
mod postgres;
#[macro_use]
mod suite;
mod tls;

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

    use pii_vault::storage::{PgStore, PgTls, Store};

    use crate::postgres;

    /// A store on a new database of the shared test server; `None` (skipped, the reason
    /// printed) without one.
    fn open() -> Option<(Arc<dyn Store>, ())> {
        let server = postgres::server_or_skip("the PostgreSQL conformance check")?;
        let url = server.fresh_database();
        Some((
            Arc::new(PgStore::connect(&url, 4, &PgTls::Disable).expect("connect")),
            (),
        ))
    }

    conformance_tests!(open);
}

/// The PostgreSQL backend over TLS (`PgTls::VerifyFull`), on the TLS test server.
mod postgres_tls_backend {
    use std::sync::Arc;

    use pii_vault::storage::{PgStore, PgTls, Store};

    use crate::postgres;

    fn open() -> Option<(Arc<dyn Store>, ())> {
        let server = postgres::tls_server_or_skip("the PostgreSQL conformance check over TLS")?;
        let url = server.fresh_database();
        let tls = PgTls::VerifyFull {
            ca_file: server.ca_file().to_path_buf(),
        };
        Some((
            Arc::new(PgStore::connect(&url, 4, &tls).expect("connect")),
            (),
        ))
    }

    conformance_tests!(open);
}

/// PostgreSQL only: connections the server drops are opened again, and no pool slot is lost.
mod postgres_reconnect {
    use std::process::Command;

    use pii_vault::storage::{PgStore, PgTls, Store};

    use crate::postgres;

    #[test]
    fn connections_closed_by_the_server_are_opened_again() {
        let Some(server) = postgres::server_or_skip("postgres_reconnect") else {
            return;
        };
        let url = server.fresh_database();
        let store = PgStore::connect(&url, 2, &PgTls::Disable).expect("connect");
        store.meta_init("k", b"v").expect("first write");
        // Cut every session of this database but psql's own, as a restart would.
        let dbname = url.rsplit("dbname=").next().expect("dbname");
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
        );
        let out = Command::new(server.psql())
            .args(["-q", "-t", "-d", &url, "-c", &sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cut: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("count");
        assert!(
            cut >= 3,
            "two pool connections and the lease session were cut: {cut}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        // More calls than slots: each slot opens its connection again.
        for i in 0..10 {
            assert_eq!(
                store.meta("k").expect("read after the cut").as_deref(),
                Some(&b"v"[..]),
                "call {i}"
            );
        }
        assert!(store.job_lease("some-job").expect("a new lease session"));
    }
}
