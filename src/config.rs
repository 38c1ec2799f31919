//! Configuration in two phases: the raw TOML form (`RawConfig`, unknown keys rejected) is
//! validated into the `Config` the server runs with. With no file at all, every setting has
//! a safe default, and `bootstrap` creates what a first start on a fresh machine needs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::authz::{Policy, PurposeRules};
use crate::certs::{DevPki, DEV_CLIENT_ID};
use crate::domain::Purpose;
use crate::keyring::KeyLimits;
use crate::keyring::{KeyringError, RootKeys};
use crate::service::{KeySettings, Limits, SinkConfig, VaultSettings};
use crate::storage::PgTls;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "pii-vault-data";

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// Root key file (mode 0600). Default: `<data_dir>/root.key`.
    pub root_key_file: Option<PathBuf>,
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
}

/// The validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub root_key_file: PathBuf,
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
    pub backend: Backend,
    /// Where to serve `GET /metrics` (plain HTTP); `None` = no endpoint.
    pub metrics_listen: Option<SocketAddr>,
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

impl RawKeys {
    /// The key epoch interval and the key settings.
    fn settings(&self) -> Result<(Duration, KeySettings), ConfigError> {
        let hours = bounded(
            "keys.epoch_interval_hours",
            self.epoch_interval_hours.unwrap_or(24),
            1,
            MAX_EPOCH_HOURS,
        )?;
        let defaults = KeySettings::default();
        let keys = KeySettings {
            limits: KeyLimits {
                dek: bounded(
                    "keys.max_encryptions_per_dek",
                    self.max_encryptions_per_dek.unwrap_or(defaults.limits.dek),
                    1,
                    1 << 31,
                )?,
                wrapping: bounded(
                    "keys.max_encryptions_per_wrapping_key",
                    self.max_encryptions_per_wrapping_key
                        .unwrap_or(defaults.limits.wrapping),
                    16,
                    1 << 31,
                )?,
            },
            rewrap_batch: bounded_usize(
                "keys.rewrap_batch_size",
                self.rewrap_batch_size.unwrap_or(defaults.rewrap_batch),
                1,
                100_000,
            )?,
            rewrap_pause: Duration::from_millis(bounded(
                "keys.rewrap_pause_ms",
                self.rewrap_pause_ms.unwrap_or(0),
                0,
                60_000,
            )?),
            dek_cache_entries: bounded_usize(
                "keys.dek_cache_entries",
                self.dek_cache_entries.unwrap_or(defaults.dek_cache_entries),
                0,
                10_000_000,
            )?,
        };
        Ok((Duration::from_secs(hours * 3600), keys))
    }
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            problem: e.message().to_owned(),
        })
    }

    /// Checks every setting and fills in defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen_text = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::Invalid(format!("listen address {listen_text:?} is not host:port"))
        })?;
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let dev = DevPki::in_dir(&data_dir.join("tls"));
        let dev_tls =
            self.tls.cert.is_none() && self.tls.key.is_none() && self.tls.client_ca.is_none();
        if !dev_tls
            && (self.tls.cert.is_none() || self.tls.key.is_none() || self.tls.client_ca.is_none())
        {
            return Err(ConfigError::Invalid(
                "tls.cert, tls.key and tls.client_ca must be set together".into(),
            ));
        }
        let tls = TlsPaths {
            cert: self.tls.cert.unwrap_or(dev.server_cert),
            key: self.tls.key.unwrap_or(dev.server_key),
            client_ca: self.tls.client_ca.unwrap_or(dev.ca_cert),
        };
        let l = self.limits;
        let max_value_bytes = bounded_usize(
            "limits.max_value_bytes",
            l.max_value_bytes.unwrap_or(64 * 1024),
            1,
            16 << 20,
        )?;
        let max_message_bytes = bounded_usize(
            "limits.max_message_bytes",
            l.max_message_bytes.unwrap_or(4 << 20),
            1024,
            256 << 20,
        )?;
        if max_message_bytes < max_value_bytes {
            return Err(ConfigError::Invalid(
                "limits.max_message_bytes must be at least limits.max_value_bytes".into(),
            ));
        }
        let purposes = |key: &str, list: Option<Vec<String>>, default: Vec<Purpose>| match list {
            None => Ok(default),
            Some(items) => items
                .iter()
                .map(|p| {
                    Purpose::parse(p).map_err(|e| ConfigError::Invalid(format!("authz.{key}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>(),
        };
        let defaults = PurposeRules::default();
        let purposes = PurposeRules {
            legal_obligation: purposes(
                "legal_obligation_purposes",
                self.authz.legal_obligation_purposes,
                defaults.legal_obligation,
            )?,
            need_consent: purposes(
                "consent_purposes",
                self.authz.consent_purposes,
                defaults.need_consent,
            )?,
        };
        let metrics_listen = match self.metrics.listen.as_deref() {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                ConfigError::Invalid(format!("metrics.listen {text:?} is not host:port"))
            })?),
        };
        let (key_epoch_interval, keys) = self.keys.settings()?;
        Ok(Config {
            policy_file: self
                .authz
                .policy_file
                .unwrap_or_else(|| data_dir.join("policy.toml")),
            purposes,
            listen,
            metrics_listen,
            root_key_file: self
                .keys
                .root_key_file
                .unwrap_or_else(|| data_dir.join("root.key")),
            data_dir,
            tls,
            dev_tls,
            vault: VaultSettings {
                limits: Limits {
                    max_value_bytes,
                    max_fields_per_request: bounded_usize(
                        "limits.max_fields_per_request",
                        l.max_fields_per_request.unwrap_or(1000),
                        1,
                        100_000,
                    )?,
                },
                audit_timeout: Duration::from_millis(bounded(
                    "audit.timeout_ms",
                    self.audit.timeout_ms.unwrap_or(2000),
                    10,
                    600_000,
                )?),
                audit_retention: Duration::from_secs(
                    86_400
                        * bounded(
                            "audit.retention_days",
                            u64::from(self.audit.retention_days.unwrap_or(365)),
                            1,
                            36_500,
                        )?,
                ),
                #[cfg(feature = "testing")]
                audit_enabled: true,
                key_epoch_interval,
                keys,
                retention: crate::service::RetentionRules::default(),
                audit_sink: match self.audit.jsonl_path {
                    None => None,
                    Some(path) => Some(SinkConfig {
                        path,
                        max_bytes: bounded(
                            "audit.jsonl_max_bytes",
                            self.audit.jsonl_max_bytes.unwrap_or(64 << 20),
                            4096,
                            1 << 40,
                        )?,
                        keep: u32::try_from(bounded(
                            "audit.jsonl_keep",
                            u64::from(self.audit.jsonl_keep.unwrap_or(5)),
                            0,
                            1000,
                        )?)
                        .unwrap_or(5),
                    }),
                },
                ..VaultSettings::default()
            },
            max_message_bytes,
            request_timeout: Duration::from_millis(bounded(
                "limits.request_timeout_ms",
                l.request_timeout_ms.unwrap_or(30_000),
                10,
                3_600_000,
            )?),
            handshake_timeout: Duration::from_millis(bounded(
                "limits.handshake_timeout_ms",
                l.handshake_timeout_ms.unwrap_or(10_000),
                10,
                600_000,
            )?),
            shutdown_grace: Duration::from_millis(bounded(
                "limits.shutdown_grace_ms",
                l.shutdown_grace_ms.unwrap_or(10_000),
                0,
                3_600_000,
            )?),
            cache_capacity_bytes: bounded(
                "storage.cache_capacity_bytes",
                self.storage.cache_capacity_bytes.unwrap_or(256 << 20),
                1 << 20,
                1 << 40,
            )?,
            backend: self.storage.backend()?,
        })
    }
}

impl RawStorage {
    fn backend(&self) -> Result<Backend, ConfigError> {
        match self.backend.as_deref().unwrap_or("sled") {
            "sled" => {
                let postgres_keys = [
                    ("postgres_url", self.postgres_url.is_some()),
                    ("postgres_tls", self.postgres_tls.is_some()),
                    ("postgres_ca_file", self.postgres_ca_file.is_some()),
                ];
                if let Some((key, _)) = postgres_keys.iter().find(|(_, set)| *set) {
                    return Err(ConfigError::Invalid(format!(
                        "storage.{key} is set but storage.backend is not \"postgres\""
                    )));
                }
                Ok(Backend::Sled)
            }
            "postgres" => {
                let url = self.postgres_url.clone().ok_or_else(|| {
                    ConfigError::Invalid(
                        "storage.backend is \"postgres\" but storage.postgres_url is not set"
                            .into(),
                    )
                })?;
                let connections = bounded_usize(
                    "storage.postgres_connections",
                    self.postgres_connections.unwrap_or(16) as usize,
                    1,
                    1024,
                )?;
                Ok(Backend::Postgres {
                    url,
                    connections,
                    tls: self.postgres_tls()?,
                })
            }
            other => Err(ConfigError::Invalid(format!(
                "storage.backend is {other:?}; it must be \"sled\" or \"postgres\""
            ))),
        }
    }

    /// The PostgreSQL TLS setting; `verify-full` unless turned off by name.
    fn postgres_tls(&self) -> Result<PgTls, ConfigError> {
        match (
            self.postgres_tls.as_deref().unwrap_or("verify-full"),
            &self.postgres_ca_file,
        ) {
            ("verify-full", Some(ca_file)) => Ok(PgTls::VerifyFull {
                ca_file: ca_file.clone(),
            }),
            ("verify-full", None) => Err(ConfigError::Invalid(
                "storage.postgres_tls is \"verify-full\" (the default), which needs \
                 storage.postgres_ca_file: the PEM file of the CA that signed the PostgreSQL \
                 server's certificate (the platform's trust store is not used); only for a \
                 database reached over a private link, set storage.postgres_tls = \"disable\""
                    .into(),
            )),
            ("disable", None) => Ok(PgTls::Disable),
            ("disable", Some(_)) => Err(ConfigError::Invalid(
                "storage.postgres_ca_file is set but storage.postgres_tls is \"disable\"".into(),
            )),
            ("require" | "verify-ca" | "prefer" | "allow", _) => Err(ConfigError::Invalid(
                "storage.postgres_tls must be \"verify-full\" or \"disable\": the vault has no \
                 libpq mode that encrypts without verifying the server's certificate and name"
                    .into(),
            )),
            (other, _) => Err(ConfigError::Invalid(format!(
                "storage.postgres_tls is {other:?}; it must be \"verify-full\" or \"disable\""
            ))),
        }
    }
}

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

/// What `bootstrap` created, so the caller can tell the user.
#[derive(Debug, Default)]
pub struct Bootstrapped {
    pub root_key: bool,
    pub dev_certs: bool,
    pub dev_policy: bool,
}

/// Prepares a first start: creates the data directory, a root key file (mode 0600) if the
/// store is new, and the dev PKI if the TLS paths are the defaults and missing. Refuses to
/// invent a root key for a store that already holds data.
pub fn bootstrap(config: &Config) -> Result<Bootstrapped, ConfigError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ConfigError::Io { path, source }
    };
    std::fs::create_dir_all(&config.data_dir).map_err(io(&config.data_dir))?;
    let mut done = Bootstrapped::default();
    if !config.root_key_file.exists() {
        if config.store_dir().exists() {
            return Err(ConfigError::Invalid(format!(
                "root key file {} is missing but {} already holds data; restore the key file (a new key cannot read the old data)",
                config.root_key_file.display(),
                config.store_dir().display()
            )));
        }
        RootKeys::generate()?.save(&config.root_key_file)?;
        done.root_key = true;
    }
    let pki = config.dev_pki();
    if config.dev_tls && !pki.exists() {
        pki.create()?;
        done.dev_certs = true;
    }
    if config.dev_tls && !config.policy_file.exists() {
        crate::certs::write_file(
            &config.policy_file,
            Policy::dev_default_text(DEV_CLIENT_ID).as_bytes(),
            false,
        )?;
        done.dev_policy = true;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_password_never_reaches_debug_output() {
        let raw: RawConfig = toml::from_str(
            "[storage]\nbackend = \"postgres\"\npostgres_url = \"host=db user=v password=hunter2\"\n\
             postgres_ca_file = \"db-ca.pem\"\n",
        )
        .expect("parses");
        assert!(!format!("{raw:?}").contains("hunter2"));
        let config = raw.validate().expect("validates");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    fn postgres(extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[storage]\nbackend = \"postgres\"\npostgres_url = \"host=db user=v\"\n{extra}"
        );
        toml::from_str::<RawConfig>(&text)
            .expect("parses")
            .validate()
    }

    fn postgres_tls(extra: &str) -> PgTls {
        match postgres(extra).expect("validates").backend {
            Backend::Postgres { tls, .. } => tls,
            Backend::Sled => panic!("not the PostgreSQL backend"),
        }
    }

    #[test]
    fn postgres_tls_is_verify_full_by_default_and_needs_a_ca_file() {
        let err = postgres("").expect_err("no CA file").to_string();
        assert!(err.contains("storage.postgres_ca_file"), "{err}");
        assert!(err.contains("verify-full"), "{err}");
        assert_eq!(
            postgres_tls("postgres_ca_file = \"ca.pem\""),
            PgTls::VerifyFull {
                ca_file: PathBuf::from("ca.pem")
            }
        );
        assert_eq!(
            postgres_tls("postgres_tls = \"verify-full\"\npostgres_ca_file = \"ca.pem\""),
            PgTls::VerifyFull {
                ca_file: PathBuf::from("ca.pem")
            }
        );
    }

    #[test]
    fn postgres_tls_is_off_only_by_name_and_never_verify_less() {
        assert_eq!(postgres_tls("postgres_tls = \"disable\""), PgTls::Disable);
        for (extra, says) in [
            (
                "postgres_tls = \"disable\"\npostgres_ca_file = \"ca.pem\"",
                "postgres_ca_file is set",
            ),
            (
                "postgres_tls = \"require\"\npostgres_ca_file = \"ca.pem\"",
                "without verifying",
            ),
            ("postgres_tls = \"verify-ca\"", "without verifying"),
            ("postgres_tls = \"on\"", "must be"),
        ] {
            let err = postgres(extra).expect_err(extra).to_string();
            assert!(err.contains(says), "{extra}: {err}");
        }
        let raw: RawConfig =
            toml::from_str("[storage]\npostgres_tls = \"disable\"").expect("parses");
        let err = raw.validate().expect_err("sled with a PostgreSQL key");
        assert!(err.to_string().contains("storage.postgres_tls"), "{err}");
    }

    #[test]
    fn defaults_are_safe() {
        let c = RawConfig::default().validate().expect("defaults validate");
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.vault.limits.max_value_bytes, 64 * 1024);
        assert_eq!(c.vault.audit_retention.as_secs(), 365 * 86_400);
        assert!(c.dev_tls);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn key_settings_feed_the_vault_and_the_epoch_is_capped() {
        let c = RawConfig::default().validate().expect("defaults validate");
        assert_eq!(c.vault.key_epoch_interval, Duration::from_secs(24 * 3600));
        assert_eq!(c.vault.keys.limits.dek, 1 << 30);
        assert_eq!(c.vault.keys.dek_cache_entries, 16_384);
        let raw: RawConfig = toml::from_str(
            "[keys]\nepoch_interval_hours = 720\nmax_encryptions_per_dek = 5\nrewrap_pause_ms = 3\ndek_cache_entries = 0",
        )
        .expect("parses");
        let c = raw.validate().expect("valid");
        assert_eq!(c.vault.keys.dek_cache_entries, 0);
        assert_eq!(c.vault.key_epoch_interval, Duration::from_secs(720 * 3600));
        assert_eq!(c.vault.keys.limits.dek, 5);
        assert_eq!(c.vault.keys.rewrap_pause, Duration::from_millis(3));
        for bad in [
            "epoch_interval_hours = 721",
            "epoch_interval_hours = 0",
            "max_encryptions_per_dek = 4294967296",
            "max_encryptions_per_wrapping_key = 2",
            "dek_cache_entries = 10000001",
        ] {
            let raw: RawConfig = toml::from_str(&format!("[keys]\n{bad}")).expect("parses");
            assert!(raw.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(toml::from_str::<RawConfig>("listne = \"x\"").is_err());
        let raw: RawConfig = toml::from_str("[limits]\nmax_value_bytes = 0").expect("parses");
        assert!(raw.validate().is_err());
        let raw: RawConfig = toml::from_str("[tls]\ncert = \"a.pem\"").expect("parses");
        assert!(raw.validate().is_err());
        let raw: RawConfig = toml::from_str("[metrics]\nlisten = \"nowhere\"").expect("parses");
        assert!(raw.validate().is_err());
    }

    #[test]
    fn metrics_endpoint_is_off_unless_configured() {
        assert!(RawConfig::default()
            .validate()
            .expect("defaults")
            .metrics_listen
            .is_none());
        let raw: RawConfig =
            toml::from_str("[metrics]\nlisten = \"127.0.0.1:9464\"").expect("parses");
        let addr = raw.validate().expect("validates").metrics_listen;
        assert_eq!(addr, Some("127.0.0.1:9464".parse().expect("addr")));
    }
}
