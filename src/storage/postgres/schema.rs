//! The PostgreSQL schema, created and migrated by the vault itself.
//!
//! Migrations are numbered and applied in order, each in the transaction that records it in
//! `pv_schema`, under an advisory lock: nodes starting together apply each one once. A
//! database migrated by a newer vault is refused rather than written in an older layout.

use tokio_postgres::Client;

use super::error::{block, Failure};

/// Advisory lock key held while migrating ("pvschema" in ASCII).
const MIGRATION_LOCK: i64 = 0x7076_7363_6865_6d61;

/// (version, SQL), in order. Never edit a released one: add the next.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2), (3, V3)];

/// The first layout: one table per sled tree, the same encoded records in `bytea` columns.
/// Text keys collate as bytes ("C"), so pages come in the order sled gives.
const V1: &str = r#"
CREATE TABLE pv_meta (
    key text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE pv_tenants (
    id text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE pv_keks (
    tenant text COLLATE "C" NOT NULL,
    version integer NOT NULL,
    wrapped bytea NOT NULL,
    PRIMARY KEY (tenant, version)
);
CREATE TABLE pv_key_state (
    tenant text COLLATE "C" PRIMARY KEY,
    state bytea NOT NULL
);
CREATE TABLE pv_subjects (
    tenant text COLLATE "C" NOT NULL,
    subject text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, subject)
);
CREATE TABLE pv_fields (
    tenant text COLLATE "C" NOT NULL,
    subject text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, subject, name)
);
CREATE TABLE pv_expiry (
    tenant text COLLATE "C" NOT NULL,
    at bigint NOT NULL,
    subject text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant, at, subject, name)
);
CREATE TABLE pv_index (
    tenant text COLLATE "C" NOT NULL,
    entry bytea NOT NULL,
    PRIMARY KEY (tenant, entry)
);
CREATE TABLE pv_state (
    tenant text COLLATE "C" NOT NULL,
    subject text COLLATE "C" NOT NULL,
    state bytea NOT NULL,
    PRIMARY KEY (tenant, subject)
);
CREATE TABLE pv_tombstones (
    tenant text COLLATE "C" NOT NULL,
    subject text COLLATE "C" NOT NULL,
    tombstone bytea NOT NULL,
    purged boolean NOT NULL,
    PRIMARY KEY (tenant, subject)
);
CREATE INDEX pv_tombstones_unpurged ON pv_tombstones (tenant, subject) WHERE NOT purged;
CREATE TABLE pv_epoch_pending (
    tenant text COLLATE "C" PRIMARY KEY,
    erasures bigint NOT NULL
);
CREATE TABLE pv_legal_holds (
    until bigint NOT NULL,
    tenant text COLLATE "C" NOT NULL,
    shadow text COLLATE "C" NOT NULL,
    PRIMARY KEY (until, tenant, shadow)
);
CREATE TABLE pv_audit (
    seq bigint PRIMARY KEY,
    event bytea NOT NULL
);
"#;

/// Idempotency records (`pv_idempotency`), by tenant, subject and scope, with their expiry
/// indexed for pruning.
const V2: &str = r#"
CREATE TABLE pv_idempotency (
    tenant text COLLATE "C" NOT NULL,
    subject text COLLATE "C" NOT NULL,
    scope bytea NOT NULL,
    expires_at bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, subject, scope)
);
CREATE INDEX pv_idempotency_expiry ON pv_idempotency (tenant, expires_at);
"#;

/// The audit log's node chains (`pv_audit_nodes`): one row per node start, numbered from 1
/// without gaps, with the head of the node's chain once it appended. The events of
/// `pv_audit` before this version are the single chain (node 0), whose head stays in
/// `pv_meta`.
const V3: &str = r#"
CREATE TABLE pv_audit_nodes (
    node bigint PRIMARY KEY,
    started_at bigint NOT NULL,
    head bytea
);
"#;

/// The newest schema version this vault knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Brings the database to the newest schema; returns the version it was at.
pub fn migrate(client: &mut Client) -> Result<i32, Failure> {
    let tx = block(client.transaction())?;
    block(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]))?;
    block(tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS pv_schema (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    ))?;
    let row = block(tx.query_one("SELECT coalesce(max(version), 0) FROM pv_schema", &[]))?;
    let found: i32 = row.get(0);
    if found > latest() {
        return Err(Failure::Store(crate::storage::StoreError::Backend(
            format!(
                "the database schema is at version {found}, newer than this vault's {}; \
             upgrade the vault",
                latest()
            ),
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        block(tx.batch_execute(sql))?;
        block(tx.execute("INSERT INTO pv_schema (version) VALUES ($1)", &[version]))?;
        tracing::info!(version, "applied PostgreSQL schema migration");
    }
    block(tx.commit())?;
    Ok(found)
}
