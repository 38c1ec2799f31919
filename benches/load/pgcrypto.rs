//! Baseline P, the peer: the same reads and writes done the way a service without a vault
//! would do them (issue 17, item 6). PostgreSQL with the `pgcrypto` extension encrypts each
//! value in a column; the application holds the key and sends it with every statement.
//!
//! - The server is the tests' throw-away one with TLS on (`postgres::tls_server()`): a test
//!   CA, a server certificate for 127.0.0.1, and `pg_hba.conf` admitting TCP sessions only
//!   over TLS. Its durability settings are initdb's defaults (`fsync=on`,
//!   `synchronous_commit=on`), printed at the start, so a commit is durable when it returns,
//!   as the vault's writes and audited reads are.
//! - Connections: tokio-postgres over rustls with the server certificate verified against
//!   that CA and the host (the vault's own connector, `storage::MakeRustls`), one
//!   connection per stream (as many as the largest concurrency), each with its statements
//!   prepared once: a pool that never makes a stream wait.
//! - Put of k fields: one transaction (`BEGIN`, one `INSERT ... ON CONFLICT DO UPDATE` of the
//!   k rows `(tenant, subject, name, pgp_sym_encrypt(value, key, 'cipher-algo=aes256'))`,
//!   `COMMIT`).
//! - Get of k fields: one transaction (`BEGIN`, `SELECT pgp_sym_decrypt(value, key)` of the k
//!   fields, `INSERT` of one audit row: time, caller, tenant, subject, field names, purpose,
//!   `COMMIT`); the read counts only if all k values came back, 256 B each.
//!
//! pgcrypto's symmetric PGP functions derive the cipher key from the passphrase on every
//! call (salted and iterated S2K with SHA-1, its defaults); the key sent here is 32 random
//! bytes in hex, made at the start and never printed.
//!
//! Without a PostgreSQL server, or without pgcrypto (it ships in the distribution's
//! PostgreSQL package, as contrib), `Peer::start` says why and the caller skips P.

use std::sync::Arc;
use std::time::Duration;

use pii_vault::crypto::fill_random;
use pii_vault::storage::MakeRustls;
use tokio::sync::Mutex;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Statement};

use crate::drive::{failed, Outcome, Target};
use crate::fixture::{value, FIELDS_PER_SUBJECT, TENANT, VALUE_BYTES};
use crate::postgres;
use crate::scenario::Scenario;

/// Who the audit rows name as the caller: the load generator's identity at the vault.
const CALLER: &str = "spiffe://pii-vault.local/dev-admin";
/// The purpose the vault's reads give (`scenario::get_request`).
const PURPOSE: &str = "benchmark";

const SCHEMA: &str = "
    CREATE EXTENSION IF NOT EXISTS pgcrypto;
    CREATE TABLE fields (
        tenant text NOT NULL,
        subject text NOT NULL,
        name text NOT NULL,
        value bytea NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (tenant, subject, name)
    );
    CREATE TABLE audit (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL,
        caller text NOT NULL,
        tenant text NOT NULL,
        subject text NOT NULL,
        fields text[] NOT NULL,
        purpose text NOT NULL
    );";

const PUT: &str = "
    INSERT INTO fields (tenant, subject, name, value, updated_at)
    SELECT $1, $2, f.name, pgp_sym_encrypt(f.value, $5, 'cipher-algo=aes256'), now()
    FROM unnest($3::text[], $4::text[]) AS f(name, value)
    ON CONFLICT (tenant, subject, name)
    DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at";

const GET: &str = "
    SELECT name, pgp_sym_decrypt(value, $4)
    FROM fields WHERE tenant = $1 AND subject = $2 AND name = ANY($3::text[])";

const AUDIT: &str = "
    INSERT INTO audit (at, caller, tenant, subject, fields, purpose)
    VALUES (now(), $1, $2, $3, $4, $5)";

/// Why P cannot run.
pub enum Unavailable {
    /// No PostgreSQL server could be started.
    NoServer(String),
    /// The server has no pgcrypto, or P could not be set up on it.
    NotSetUp(String),
}

/// One connection and its prepared statements.
struct Conn {
    client: Mutex<Client>,
    put: Statement,
    get: Statement,
    audit: Statement,
}

/// The peer: its connections, the key, and what the server said about itself.
pub struct Peer {
    conns: Vec<Arc<Conn>>,
    key: Arc<str>,
}

impl Peer {
    /// Starts (or reuses) the TLS server, creates a database with pgcrypto and the two
    /// tables, opens `connections` connections and stores `subjects` subjects of 10 fields.
    /// Prints the server's settings and its sessions' TLS.
    pub async fn start(connections: usize, subjects: usize) -> Result<Self, Unavailable> {
        let (ca_file, url, available) = tokio::task::spawn_blocking(|| {
            let server = postgres::tls_server()?;
            let available = server
                .psql_admin("SELECT count(*) FROM pg_available_extensions WHERE name = 'pgcrypto'");
            Ok((
                server.ca_file().to_path_buf(),
                server.fresh_database(),
                available == "1",
            ))
        })
        .await
        .map_err(|e| Unavailable::NoServer(e.to_string()))?
        .map_err(Unavailable::NoServer)?;
        let not_set_up =
            |what: &str, e: &dyn std::fmt::Display| Unavailable::NotSetUp(format!("{what}: {e}"));
        if !available {
            return Err(Unavailable::NotSetUp(
                "the server has no pgcrypto extension (PostgreSQL's contrib modules)".into(),
            ));
        }
        let connector =
            MakeRustls::from_ca_file(&ca_file).map_err(|e| not_set_up("TLS connector", &e))?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| not_set_up("connection string", &e))?;
        config
            .ssl_mode(SslMode::Require)
            .application_name("pii-vault-bench-peer")
            .connect_timeout(Duration::from_secs(10));

        let mut conns = Vec::with_capacity(connections);
        for i in 0..connections.max(1) {
            let (client, connection) = config
                .connect(connector.clone())
                .await
                .map_err(|e| not_set_up("connect over TLS", &e))?;
            tokio::spawn(connection);
            if i == 0 {
                client
                    .batch_execute(SCHEMA)
                    .await
                    .map_err(|e| not_set_up("create pgcrypto and the tables", &e))?;
            }
            let prepare = |sql| client.prepare(sql);
            let (put, get, audit) = tokio::try_join!(prepare(PUT), prepare(GET), prepare(AUDIT))
                .map_err(|e| not_set_up("prepare", &e))?;
            conns.push(Arc::new(Conn {
                client: Mutex::new(client),
                put,
                get,
                audit,
            }));
        }
        describe(&conns[0])
            .await
            .map_err(|e| not_set_up("read the server's settings", &e))?;

        let mut key = [0u8; 32];
        fill_random(&mut key).map_err(|e| not_set_up("random key", &e))?;
        let peer = Self {
            conns,
            key: hex::encode(key).into(),
        };
        peer.preload(subjects).await?;
        Ok(peer)
    }

    /// Gives subjects `s0 .. s{subjects}` their 10 fields, the vault's preloaded values.
    async fn preload(&self, subjects: usize) -> Result<(), Unavailable> {
        let streams = self.conns.len().min(8);
        let tasks: Vec<_> = (0..streams)
            .map(|w| {
                let target = self.target(w, Scenario::Put10, subjects);
                tokio::spawn(async move {
                    for i in (w..subjects).step_by(streams) {
                        if target.put(i as u64, FIELDS_PER_SUBJECT).await != Outcome::Ok {
                            return false;
                        }
                    }
                    true
                })
            })
            .collect();
        for t in tasks {
            if !t.await.unwrap_or(false) {
                let why = crate::drive::first_failure().map_or("unknown", |s| s.as_str());
                return Err(Unavailable::NotSetUp(format!("preload failed: {why}")));
            }
        }
        Ok(())
    }

    fn target(&self, w: usize, scenario: Scenario, subjects: usize) -> PeerTarget {
        PeerTarget {
            conn: self.conns[w % self.conns.len()].clone(),
            key: self.key.clone(),
            scenario,
            subjects,
        }
    }

    /// `streams` streams of `scenario`, each on a connection of its own (while there are
    /// enough).
    pub fn targets(&self, scenario: Scenario, streams: usize, subjects: usize) -> Vec<PeerTarget> {
        (0..streams)
            .map(|w| self.target(w, scenario, subjects))
            .collect()
    }
}

/// Prints the server's version and durability settings, pgcrypto's version and the TLS of
/// the peer's sessions, as the server reports them.
async fn describe(conn: &Conn) -> Result<(), tokio_postgres::Error> {
    let client = conn.client.lock().await;
    let settings: String = client
        .query_one(
            "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) \
             FROM pg_settings WHERE name IN ('server_version', 'fsync', 'synchronous_commit', \
             'wal_sync_method', 'shared_buffers', 'max_connections')",
            &[],
        )
        .await?
        .get(0);
    let pgcrypto: String = client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pgcrypto'",
            &[],
        )
        .await?
        .get(0);
    let tls = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*), \
                    string_agg(DISTINCT s.version || ' ' || s.cipher, ', ') \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database()",
            &[],
        )
        .await?;
    let (encrypted, sessions): (i64, i64) = (tls.get(0), tls.get(1));
    let ciphers: Option<String> = tls.get(2);
    println!("# P: PostgreSQL {settings}; pgcrypto {pgcrypto}");
    println!(
        "# P: {encrypted} of {sessions} sessions over TLS ({}), server certificate verified",
        ciphers.as_deref().unwrap_or("none")
    );
    Ok(())
}

/// Reads and writes of the preloaded subjects, on one connection.
#[derive(Clone)]
pub struct PeerTarget {
    conn: Arc<Conn>,
    key: Arc<str>,
    scenario: Scenario,
    subjects: usize,
}

impl PeerTarget {
    /// The subject of request `n` and the names of its first `fields` fields, as the vault's.
    fn names(&self, n: u64, fields: usize) -> (String, Vec<String>) {
        let subject = format!("s{}", n as usize % self.subjects);
        (subject, (0..fields).map(|f| format!("f{f}")).collect())
    }

    /// One transaction: the `fields` fields of request `n`'s subject, written.
    async fn put(&self, n: u64, fields: usize) -> Outcome {
        let (subject, names) = self.names(n, fields);
        let values = vec![value(n as usize); fields];
        let mut client = self.conn.client.lock().await;
        let result = async {
            let tx = client.transaction().await?;
            let key: &str = &self.key;
            tx.execute(&self.conn.put, &[&TENANT, &subject, &names, &values, &key])
                .await?;
            tx.commit().await
        };
        match result.await {
            Ok(()) => Outcome::Ok,
            Err(e) => failed(sql_failure(&e)),
        }
    }

    /// One transaction: the `fields` fields of request `n`'s subject read and decrypted, and
    /// an audit row.
    async fn get(&self, n: u64, fields: usize) -> Outcome {
        let (subject, names) = self.names(n, fields);
        let mut client = self.conn.client.lock().await;
        let result = async {
            let tx = client.transaction().await?;
            let key: &str = &self.key;
            let rows = tx
                .query(&self.conn.get, &[&TENANT, &subject, &names, &key])
                .await?;
            tx.execute(
                &self.conn.audit,
                &[&CALLER, &TENANT, &subject, &names, &PURPOSE],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(rows)
        };
        match result.await {
            Ok(rows) => {
                let whole = rows.len() == fields
                    && rows.iter().all(|r| {
                        r.try_get::<_, &str>(1)
                            .is_ok_and(|v| v.len() == VALUE_BYTES)
                    });
                if whole {
                    Outcome::Ok
                } else {
                    failed(format!(
                        "P: {} of {fields} values read back whole",
                        rows.len()
                    ))
                }
            }
            Err(e) => failed(sql_failure(&e)),
        }
    }
}

/// What a failed statement is reported as: its SQLSTATE, not the server's message.
fn sql_failure(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(state) => format!("P: SQLSTATE {}", state.code()),
        None if e.is_closed() => "P: connection closed".into(),
        None => "P: PostgreSQL client error".into(),
    }
}

impl Target for PeerTarget {
    async fn call(&mut self, n: u64) -> Outcome {
        match self.scenario {
            Scenario::Get1 => self.get(n, 1).await,
            Scenario::Get10 => self.get(n, FIELDS_PER_SUBJECT).await,
            Scenario::Put1 => self.put(n, 1).await,
            Scenario::Put10 => self.put(n, FIELDS_PER_SUBJECT).await,
            Scenario::Mixed if n.is_multiple_of(10) => self.put(n, 1).await,
            Scenario::Mixed => self.get(n, 1).await,
            Scenario::Erase | Scenario::Flood => Outcome::Failed,
        }
    }
}
