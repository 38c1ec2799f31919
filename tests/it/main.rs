//! Integration tests: one binary, each test starts the real server on 127.0.0.1 with a
//! free port, a temporary data directory and its own dev certificates.

#[path = "../support/postgres.rs"]
mod postgres;
mod process;
#[path = "../support/softhsm.rs"]
mod softhsm;
mod util;

/// Vaults of this binary keep their root key in a file (`it_pkcs11` runs the key-management
/// and erasure suite again with tokens).
pub const ROOT_CUSTODY: util::Custody = util::Custody::File;

mod abuse;
mod access;
mod at_rest;
mod audit;
mod audit_durable;
mod audit_syslog;
mod authz;
mod authz_matrix;
mod backup;
mod bad_input;
mod batch_erase;
mod batch_records;
mod category_paths;
mod cli;
mod corruption;
mod deadlines;
mod dev_mode;
mod disk_faults;
mod erasure;
mod erasure_index;
mod error_reasons;
mod examples;
mod health;
mod hsm;
mod hygiene;
mod idempotency;
mod input_matrix;
mod keys;
mod logs;
mod metrics;
mod records;
mod restart;
mod retention;
mod rights;
mod rollback;
mod scale_out;
mod shutdown;
mod state_integrity;
mod state_race;
mod tenants;
mod tls;
mod tls_matrix;
mod tokens;
mod typed_client;
