//! The configuration file as written: serde types with every key optional and unknown keys
//! rejected. `validate.rs` turns them into the `Config` the server runs with.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, SecretString};

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on, e.g. `127.0.0.1:7443`.
    pub listen: Option<String>,
    /// Directory holding the store (and, by default, the root key and dev certificates).
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub keys: RawKeys,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub authz: RawAuthz,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub observability: RawObservability,
    #[serde(default)]
    pub tokens: RawTokens,
    #[serde(default)]
    pub backup: RawBackup,
}

/// `[backup]`: how long backups are kept, which is how long the keys that open them are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    /// Days a root key version retired by a rotation still opens backups before it is
    /// destroyed; a backup older than this is refused by `restore`. Default 30 (the privacy
    /// policy's backup window), at most 30; 0 destroys retired versions at once (no backup
    /// outlives the next rotation).
    pub retention_days: Option<u32>,
}

/// `[keys] root`: where the root key versions live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRootSource {
    /// `file` (the default) or `pkcs11`.
    pub kind: String,
    /// `file`: the key file (the same as `keys.root_key_file`).
    pub path: Option<PathBuf>,
    /// `pkcs11`: the PKCS#11 library of the HSM (a `.so`).
    pub module: Option<PathBuf>,
    /// `pkcs11`: the token's label (or give `slot`).
    pub token_label: Option<String>,
    /// `pkcs11`: the slot id (or give `token_label`).
    pub slot: Option<u64>,
    /// `pkcs11`: a file (mode 0600) holding the user PIN (or give `pin_env`).
    pub pin_file: Option<PathBuf>,
    /// `pkcs11`: an environment variable holding the user PIN (or give `pin_file`).
    pub pin_env: Option<String>,
    /// `pkcs11`: the label prefix of the root key objects. Default `pii-vault-root`.
    pub key_label_prefix: Option<String>,
}

/// `[tokens]`: the shape of each tenant's card tokens (random `tok_` + 32 hex digits for
/// tenants named in neither list).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    /// Tenants whose tokens are deterministic: the same card gets the same token (an HMAC
    /// of the card under the tenant's index key) until that key is rotated.
    pub deterministic_tenants: Option<Vec<String>>,
    /// Tenants whose tokens are card-shaped: 16 digits, Luhn-valid, starting with 9, the
    /// card's last four kept.
    pub card_shaped_tenants: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObservability {
    /// Read the W3C `traceparent` header of each request and put its trace id and parent
    /// span id into the request's log span, so the vault's logs join the caller's trace. The
    /// header is used for nothing else; a malformed one is ignored. Default false.
    pub trace_propagation: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthz {
    /// Policy file (TOML). Default `<data_dir>/policy.toml`; with the dev TLS defaults a dev
    /// policy granting the dev client certificate everything is created there on first start.
    pub policy_file: Option<PathBuf>,
    /// Purposes that may still read a restricted subject. Default
    /// `["legal_obligation", "fraud_prevention"]`.
    pub legal_obligation_purposes: Option<Vec<String>>,
    /// Purposes that need the subject's explicit consent. Default `["marketing", "model_training"]`.
    pub consent_purposes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Address of the plain-HTTP Prometheus endpoint (`GET /metrics`), e.g.
    /// `127.0.0.1:9464`. Absent: no endpoint.
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Longest a request waits for its audit event to be on disk before failing closed
    /// with UNAVAILABLE, in milliseconds. Default 2000.
    pub timeout_ms: Option<u64>,
    /// Events older than this many days are pruned (daily, and by `PruneAuditLog`).
    /// Default 365 (the privacy policy keeps log data 12 months).
    pub retention_days: Option<u32>,
    /// Optional JSON-lines mirror of every event for a SIEM.
    pub jsonl_path: Option<PathBuf>,
    /// Rotate the mirror when it would exceed this many bytes. Default 64 MiB.
    pub jsonl_max_bytes: Option<u64>,
    /// Rotated mirror files kept. Default 5.
    pub jsonl_keep: Option<u32>,
    /// Optional RFC 5424 syslog mirror of every event: the collector's `host:port` (TCP,
    /// octet-counted frames). Absent: none.
    pub syslog_address: Option<String>,
    /// `verify-full` (the default: TLS, the collector's certificate checked against
    /// `syslog_ca_file` and the host of `syslog_address`) or `disable` (plain TCP, logged as
    /// a warning at start).
    pub syslog_tls: Option<String>,
    /// The CA certificate(s), PEM, the collector's certificate must chain to.
    pub syslog_ca_file: Option<PathBuf>,
    /// RFC 5424 facility number, 0 to 23. Default 13 (log audit).
    pub syslog_facility: Option<u8>,
    /// The private enterprise number in the structured data id `audit@NUMBER`. Default
    /// 32473, the number RFC 5612 reserves for examples: set your organisation's.
    pub syslog_enterprise_number: Option<u32>,
    /// Denials of one identity recorded one by one per window; further ones are counted
    /// and recorded as one `denials_summary` event when the window ends. Default 10.
    pub denial_events_per_window: Option<u32>,
    /// That window, in seconds. Default 60.
    pub denial_window_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Server certificate chain (PEM). Default: `<data_dir>/tls/server.pem`.
    pub cert: Option<PathBuf>,
    /// Server private key (PEM). Default: `<data_dir>/tls/server.key`.
    pub key: Option<PathBuf>,
    /// CA that client certificates must chain to (PEM). Default: `<data_dir>/tls/ca.pem`.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM, one or more) of the client CA: a revoked client
    /// certificate is refused at the handshake. Read at start and again on SIGHUP.
    /// Default: none.
    pub client_crl: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// Root key file (mode 0600). Default: `<data_dir>/root.key`.
    pub root_key_file: Option<PathBuf>,
    /// Where the root key lives: `{ kind = "file", path = "…" }` (the default, as
    /// `root_key_file`) or `{ kind = "pkcs11", module = "…", token_label = "…",
    /// pin_file = "…" }`, whose token does every wrap and unwrap (README).
    pub root: Option<RawRootSource>,
    /// The erasure ledger: every erasure and tenant shred, kept with the root key and out
    /// of backups, applied by `restore` and at every start. Default: `erasure.ledger` next
    /// to the root key file (a PKCS#11 root: in the data directory); none on PostgreSQL
    /// unless set.
    pub erasure_ledger: Option<PathBuf>,
    /// Hours between key epochs (an erasure is final after the next). Default 24; at most
    /// 720, the 30-day backup window of the privacy policy.
    pub epoch_interval_hours: Option<u64>,
    /// Field values one subject DEK may seal before a new DEK version replaces it. Default
    /// 2^30, far below the 2^32 NIST SP 800-38D allows with random 96-bit nonces.
    pub max_encryptions_per_dek: Option<u64>,
    /// Keys one tenant KEK version or root key version may wrap before it is rotated.
    /// Default 2^30.
    pub max_encryptions_per_wrapping_key: Option<u64>,
    /// Subjects re-wrapped per batch after a tenant key rotation. Default 500.
    pub rewrap_batch_size: Option<usize>,
    /// Pause between re-wrap batches in milliseconds, leaving room for traffic. Default 0.
    pub rewrap_pause_ms: Option<u64>,
    /// Unwrapped subject DEKs kept in memory, so hot reads skip the unwrap. 0 disables the
    /// cache. Default 16384.
    pub dek_cache_entries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest field value in bytes. Default 65536.
    pub max_value_bytes: Option<usize>,
    /// Largest request message in bytes. Default 4 MiB.
    pub max_message_bytes: Option<usize>,
    /// Most fields in one request. Default 1000.
    pub max_fields_per_request: Option<usize>,
    /// Longest a request may run, in milliseconds; clients' own deadlines apply too. Default 30000.
    pub request_timeout_ms: Option<u64>,
    /// Longest a TLS handshake may take, in milliseconds. Default 10000.
    pub handshake_timeout_ms: Option<u64>,
    /// On shutdown, how long in-flight calls may take to finish, in milliseconds; then the
    /// remaining connections are dropped. Default 10000.
    pub shutdown_grace_ms: Option<u64>,
    /// Requests one client identity may make per second, sustained (a token bucket per
    /// identity); over it a call answers RESOURCE_EXHAUSTED with a RetryInfo. Default 2000.
    pub requests_per_second: Option<u32>,
    /// Requests one identity may make in a burst above the sustained rate. Default 4000.
    pub request_burst: Option<u32>,
    /// Refused requests (PERMISSION_DENIED, UNAUTHENTICATED) one identity may have per
    /// second, sustained; past its burst the identity is refused every request until the
    /// allowance refills. Default 5.
    pub denied_per_second: Option<u32>,
    /// Refused requests one identity may have in a burst. Default 50.
    pub denied_burst: Option<u32>,
    /// Open client connections (TLS handshakes included); a connection over the cap is
    /// closed at once. Default 1024.
    pub max_connections: Option<u32>,
    /// Concurrent HTTP/2 streams (calls) one connection may have open. Default 128.
    pub max_streams_per_connection: Option<u32>,
    /// How long a call refused for its identity's rate is held, in milliseconds, before it
    /// is answered RESOURCE_EXHAUSTED: a client that ignores RetryInfo and retries at once
    /// is paced by its open streams instead of spinning. 0 answers at once. Default 50.
    pub refusal_delay_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// sled page cache size in bytes. Default 256 MiB.
    pub cache_capacity_bytes: Option<u64>,
    /// `sled` (default: embedded, one node) or `postgres` (several nodes, one database).
    pub backend: Option<String>,
    /// The PostgreSQL connection string (`host=… port=… user=… dbname=…` or a URL). It may
    /// carry a password: keep the config file private. Never logged or printed.
    pub postgres_url: Option<SecretString>,
    /// Connections in the PostgreSQL pool. Default 16.
    pub postgres_connections: Option<u64>,
    /// How connections to PostgreSQL are protected: `verify-full` (the default: TLS 1.2 or
    /// 1.3, the server certificate checked against `postgres_ca_file` and against the host
    /// of `postgres_url`, as libpq's `sslmode=verify-full`) or `disable` (plain TCP, for a
    /// database reached over a private link only; logged as a warning at start). There is
    /// no encrypt-without-verifying mode (libpq's `require`). The default is `verify-full`
    /// even for a loopback host, so a config copied from a test machine to one with a
    /// remote database cannot silently send records and passwords in the clear.
    pub postgres_tls: Option<String>,
    /// The CA certificate(s), PEM, the PostgreSQL server certificate must chain to. Needed
    /// with `postgres_tls = "verify-full"`: the platform's trust store is not used.
    pub postgres_ca_file: Option<PathBuf>,
}

impl RawConfig {
    /// Parses the text of a TOML configuration file; `origin` (its path) names it in errors.
    /// Reading the file is the caller's (the binary's): configuration does no file I/O.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::File {
            path: origin.to_owned(),
            problem: e.message().to_owned(),
        })
    }
}
