//! PostgreSQL over TLS: the store's sessions are encrypted, a server certificate that does
//! not chain to the configured CA or does not name the host is refused as a certificate
//! problem, a server without TLS is refused, and SCRAM logins bind the TLS channel. The
//! conformance suite over TLS is `postgres_tls_backend` in `main.rs`.

use pii_vault::certs::Authority;
use pii_vault::storage::{PgStore, PgTls, Store};

use crate::postgres::{self, Postgres, SCRAM_PASSWORD, SCRAM_USER};

fn verify_full(server: &Postgres) -> PgTls {
    PgTls::VerifyFull {
        ca_file: server.ca_file().to_path_buf(),
    }
}

/// The error of a connection that must fail.
fn refused(url: &str, tls: &PgTls) -> String {
    match PgStore::connect(url, 1, tls) {
        Ok(_) => panic!("the connection was made"),
        Err(e) => {
            eprintln!("refused as expected: {e}");
            e.to_string()
        }
    }
}

/// The database name of a connection string made by `fresh_database`.
fn dbname(url: &str) -> &str {
    url.rsplit("dbname=").next().expect("dbname")
}

#[test]
fn every_session_of_a_verify_full_store_is_encrypted() {
    let Some(server) =
        postgres::tls_server_or_skip("every_session_of_a_verify_full_store_is_encrypted")
    else {
        return;
    };
    let url = server.fresh_database();
    let store = PgStore::connect(&url, 2, &verify_full(server)).expect("connect over TLS");
    store.meta_init("k", b"v").expect("write over TLS");
    assert_eq!(store.meta("k").expect("read").as_deref(), Some(&b"v"[..]));
    // Two pool connections and the lease session, as the server sees them.
    let seen = server.psql_admin(&format!(
        "SELECT count(*) FILTER (WHERE s.ssl AND s.version IN ('TLSv1.2', 'TLSv1.3')), count(*) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = '{}'",
        dbname(&url)
    ));
    assert_eq!(seen, "3|3", "encrypted sessions | sessions");
}

#[test]
fn the_tls_test_server_refuses_sessions_without_tls() {
    let Some(server) =
        postgres::tls_server_or_skip("the_tls_test_server_refuses_sessions_without_tls")
    else {
        return;
    };
    // What makes the test above meaningful: nothing gets in without TLS.
    let err = refused(&server.fresh_database(), &PgTls::Disable);
    assert!(err.contains("pg_hba.conf"), "{err}");
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_as_a_certificate_problem() {
    let Some(server) =
        postgres::tls_server_or_skip("a_server_certificate_from_another_ca_is_refused")
    else {
        return;
    };
    let dir = tempfile::TempDir::new().expect("temp dir");
    let other_ca = dir.path().join("other-ca.pem");
    let ca = Authority::generate("another CA", std::time::Duration::from_secs(3600)).expect("CA");
    std::fs::write(&other_ca, ca.cert_pem).expect("write CA");
    let url = format!(
        "{} user={SCRAM_USER} password={SCRAM_PASSWORD}",
        server.fresh_database_owned_by(SCRAM_USER)
    );
    let err = refused(&url, &PgTls::VerifyFull { ca_file: other_ca });
    assert!(err.contains("certificate is not trusted"), "{err}");
    assert!(err.contains("storage.postgres_ca_file"), "{err}");
    assert!(!err.contains(SCRAM_PASSWORD), "the password leaked: {err}");
}

#[test]
fn a_server_certificate_for_another_host_is_refused() {
    let Some(server) =
        postgres::tls_server_or_skip("a_server_certificate_for_another_host_is_refused")
    else {
        return;
    };
    // The same server, reached at its address under a name its certificate does not carry.
    let url = server
        .fresh_database()
        .replace("host=127.0.0.1", "host=db.invalid hostaddr=127.0.0.1");
    let err = refused(&url, &verify_full(server));
    assert!(err.contains("certificate is not trusted"), "{err}");
}

#[test]
fn verify_full_against_a_server_without_tls_fails() {
    let Some(tls_server) =
        postgres::tls_server_or_skip("verify_full_against_a_server_without_tls_fails")
    else {
        return;
    };
    let Some(plain) = postgres::server_or_skip("verify_full_against_a_server_without_tls_fails")
    else {
        return;
    };
    let err = refused(&plain.fresh_database(), &verify_full(tls_server));
    assert!(err.contains("server does not support TLS"), "{err}");
}

#[test]
fn a_missing_ca_file_is_named_in_the_error() {
    let Some(server) = postgres::tls_server_or_skip("a_missing_ca_file_is_named_in_the_error")
    else {
        return;
    };
    let tls = PgTls::VerifyFull {
        ca_file: "/nonexistent/pg-ca.pem".into(),
    };
    let err = refused(&server.fresh_database(), &tls);
    assert!(err.contains("/nonexistent/pg-ca.pem"), "{err}");
    assert!(err.contains("storage.postgres_ca_file"), "{err}");
}

#[test]
fn a_scram_login_over_tls_binds_the_channel() {
    let Some(server) = postgres::tls_server_or_skip("a_scram_login_over_tls_binds_the_channel")
    else {
        return;
    };
    // channel_binding=require: the login fails unless the connector hands tokio-postgres
    // the server certificate's hash and the server agrees with it.
    let url = format!(
        "{} user={SCRAM_USER} password={SCRAM_PASSWORD} channel_binding=require",
        server.fresh_database_owned_by(SCRAM_USER)
    );
    let store =
        PgStore::connect(&url, 1, &verify_full(server)).expect("SCRAM with channel binding");
    store.meta_init("k", b"v").expect("write");
}
