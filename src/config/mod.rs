//! Configuration in two phases: the raw TOML form (`RawConfig`, unknown keys rejected) is
//! validated into the `Config` the server runs with. With no file at all, every setting has
//! a safe default. Configuration does no file I/O: the binary reads the file, and `dev`
//! creates what a first dev start needs.

mod raw;
mod root;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::authz::PurposeRules;
use crate::certs::DevPki;
use crate::keyring::{KeyringError, RootSource};
use crate::service::VaultSettings;
use crate::storage::PgTls;

pub use raw::{
    RawAudit, RawAuthz, RawBackup, RawConfig, RawKeys, RawLimits, RawMetrics, RawObservability,
    RawRootSource, RawStorage, RawTls, RawTokens,
};

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "pii-vault-data";

/// Where the vault keeps its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// sled in `<data_dir>/store`.
    Sled,
    /// A PostgreSQL database shared by every node.
    Postgres {
        url: SecretString,
        connections: usize,
        tls: PgTls,
    },
}

/// A string that may hold a credential: its Debug output never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Paths of the server's TLS material.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// Revocation lists of the client CA (PEM), if any.
    pub client_crl: Option<PathBuf>,
}

/// What one client may use of the server: its request rate, refused calls, connections
/// and streams.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AbuseLimits {
    /// Sustained requests per second per identity.
    pub requests_per_second: u32,
    /// Requests per identity in a burst.
    pub request_burst: u32,
    /// Sustained refused requests per second per identity.
    pub denied_per_second: u32,
    /// Refused requests per identity in a burst.
    pub denied_burst: u32,
    /// Open connections, handshakes included.
    pub max_connections: u32,
    /// Concurrent streams per HTTP/2 connection.
    pub max_streams_per_connection: u32,
    /// How long a request refused for its rate is held before RESOURCE_EXHAUSTED goes out
    /// (zero: answered at once).
    pub refusal_delay: Duration,
}

/// The validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub root_key_file: PathBuf,
    /// Where the root key versions are: the file above, or a PKCS#11 token.
    pub root_source: RootSource,
    pub tls: TlsPaths,
    /// True when the TLS paths are the dev defaults, which `bootstrap` may create.
    pub dev_tls: bool,
    /// Limits and audit settings of the use cases.
    pub vault: VaultSettings,
    /// The policy file.
    pub policy_file: PathBuf,
    /// Purposes with special rules (restriction, consent).
    pub purposes: PurposeRules,
    pub max_message_bytes: usize,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    /// How long shutdown waits for in-flight calls before dropping their connections.
    pub shutdown_grace: Duration,
    pub cache_capacity_bytes: u64,
    /// Rate limits and connection caps.
    pub abuse: AbuseLimits,
    pub backend: Backend,
    /// Where to serve `GET /metrics` (plain HTTP); `None` = no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether a request's W3C `traceparent` header is read into its log span.
    pub trace_propagation: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {problem}")]
    File { path: String, problem: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] KeyringError),
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
}

fn bounded(name: &str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid(format!(
            "{name} is {value}; it must be between {min} and {max}"
        )))
    }
}

fn bounded_usize(name: &str, value: usize, min: usize, max: usize) -> Result<usize, ConfigError> {
    let v = bounded(name, value as u64, min as u64, max as u64)?;
    usize::try_from(v).map_err(|_| ConfigError::Invalid(format!("{name} is too large")))
}

/// Longest key epoch interval: the policy's 30-day backup window.
pub const MAX_EPOCH_HOURS: u64 = 720;

impl Config {
    /// Where sled keeps its files.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// The dev PKI paths for this data directory.
    pub fn dev_pki(&self) -> DevPki {
        DevPki::in_dir(&self.data_dir.join("tls"))
    }
}

#[cfg(test)]
mod tests;
