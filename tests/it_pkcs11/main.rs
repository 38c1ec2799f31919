//! The key-management and erasure suite again, with every test vault's root key in a
//! SoftHSM2 token of its own (`util::test_config` gives each config that names no root key
//! a fresh token) instead of a file: rotations, epochs, shreds, limits, re-wraps, erasure,
//! tokens and the backup window, with every wrap and unwrap under the root key done by the
//! token. Tests that name a root key file of their own (an unwritable key directory, the
//! forensic copy of a file) keep it. Without SoftHSM2 installed the vaults fall back to
//! files, loudly; under CI the harness requires it.

#[path = "../support/postgres.rs"]
mod postgres;
#[path = "../support/softhsm.rs"]
mod softhsm;
#[path = "../it/util.rs"]
mod util;

/// Vaults of this binary keep their root key in a PKCS#11 token.
pub const ROOT_CUSTODY: util::Custody = util::Custody::Token;

#[path = "../it/erasure.rs"]
mod erasure;
#[path = "../it/erasure_index.rs"]
mod erasure_index;
#[path = "../it/keys/mod.rs"]
mod keys;
#[path = "../it/metrics.rs"]
mod metrics;
#[path = "../it/tokens.rs"]
mod tokens;
