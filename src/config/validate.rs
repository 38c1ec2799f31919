//! Validation of the raw configuration into `Config`: every bound checked, every default
//! filled in, one function per section so each rule is easy to find.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::authz::PurposeRules;
use crate::certs::DevPki;
use crate::domain::{Purpose, TenantId};
use crate::keyring::KeyLimits;
use crate::service::{
    syslog_host, DenialSettings, KeySettings, Limits, SinkConfig, SyslogConfig, TokenSettings,
    VaultSettings,
};
use crate::storage::PgTls;

use super::raw::{RawAudit, RawAuthz, RawKeys, RawLimits, RawStorage, RawTls, RawTokens};
use super::{
    bounded, bounded_usize, AbuseLimits, Backend, Config, ConfigError, RawConfig, TlsPaths,
    DEFAULT_DATA_DIR, DEFAULT_LISTEN, MAX_EPOCH_HOURS,
};

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
            backup_window: defaults.backup_window,
        };
        Ok((Duration::from_secs(hours * 3600), keys))
    }
}

impl RawConfig {
    /// Checks every setting and fills in defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen_text = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::Invalid(format!("listen address {listen_text:?} is not host:port"))
        })?;
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let (tls, dev_tls) = self.tls.paths(&DevPki::in_dir(&data_dir.join("tls")))?;
        let metrics_listen = match self.metrics.listen.as_deref() {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                ConfigError::Invalid(format!("metrics.listen {text:?} is not host:port"))
            })?),
        };
        let (limits, max_message_bytes) = self.limits.request_limits()?;
        let (key_epoch_interval, mut keys) = self.keys.settings()?;
        keys.backup_window = self.backup.window()?;
        let backend = self.storage.backend()?;
        let (root_key_file, root_source) = self.keys.root_source(&data_dir)?;
        let erasure_ledger = self.keys.erasure_ledger(
            &root_source,
            &data_dir,
            matches!(backend, Backend::Postgres { .. }),
        );
        let l = &self.limits;
        Ok(Config {
            policy_file: self
                .authz
                .policy_file
                .clone()
                .unwrap_or_else(|| data_dir.join("policy.toml")),
            purposes: self.authz.purposes()?,
            listen,
            metrics_listen,
            trace_propagation: self.observability.trace_propagation.unwrap_or(false),
            root_key_file,
            root_source,
            data_dir,
            tls,
            dev_tls,
            vault: VaultSettings {
                limits,
                key_epoch_interval,
                keys,
                tokens: self.tokens.settings()?,
                erasure_ledger,
                ..self.audit.settings()?
            },
            max_message_bytes,
            request_timeout: millis(
                "limits.request_timeout_ms",
                l.request_timeout_ms,
                30_000,
                10,
                3_600_000,
            )?,
            handshake_timeout: millis(
                "limits.handshake_timeout_ms",
                l.handshake_timeout_ms,
                10_000,
                10,
                600_000,
            )?,
            shutdown_grace: millis(
                "limits.shutdown_grace_ms",
                l.shutdown_grace_ms,
                10_000,
                0,
                3_600_000,
            )?,
            cache_capacity_bytes: bounded(
                "storage.cache_capacity_bytes",
                self.storage.cache_capacity_bytes.unwrap_or(256 << 20),
                1 << 20,
                1 << 40,
            )?,
            abuse: l.abuse()?,
            backend,
        })
    }
}

/// A duration setting in milliseconds: `default` when absent, else within `min..=max`.
fn millis(
    name: &str, value: Option<u64>, default: u64, min: u64, max: u64,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(bounded(
        name,
        value.unwrap_or(default),
        min,
        max,
    )?))
}

impl RawTls {
    /// The server's TLS paths, and whether they are the dev defaults (all three unset).
    fn paths(&self, dev: &DevPki) -> Result<(TlsPaths, bool), ConfigError> {
        let dev_tls = self.cert.is_none() && self.key.is_none() && self.client_ca.is_none();
        if !dev_tls && (self.cert.is_none() || self.key.is_none() || self.client_ca.is_none()) {
            return Err(ConfigError::Invalid(
                "tls.cert, tls.key and tls.client_ca must be set together".into(),
            ));
        }
        let tls = TlsPaths {
            cert: self.cert.clone().unwrap_or_else(|| dev.server_cert.clone()),
            key: self.key.clone().unwrap_or_else(|| dev.server_key.clone()),
            client_ca: self
                .client_ca
                .clone()
                .unwrap_or_else(|| dev.ca_cert.clone()),
            client_crl: self.client_crl.clone(),
        };
        Ok((tls, dev_tls))
    }
}

impl RawLimits {
    /// What one request may carry, and the largest message the server decodes.
    fn request_limits(&self) -> Result<(Limits, usize), ConfigError> {
        let max_value_bytes = bounded_usize(
            "limits.max_value_bytes",
            self.max_value_bytes.unwrap_or(64 * 1024),
            1,
            16 << 20,
        )?;
        let max_message_bytes = bounded_usize(
            "limits.max_message_bytes",
            self.max_message_bytes.unwrap_or(4 << 20),
            1024,
            256 << 20,
        )?;
        if max_message_bytes < max_value_bytes {
            return Err(ConfigError::Invalid(
                "limits.max_message_bytes must be at least limits.max_value_bytes".into(),
            ));
        }
        let limits = Limits {
            max_value_bytes,
            max_fields_per_request: bounded_usize(
                "limits.max_fields_per_request",
                self.max_fields_per_request.unwrap_or(1000),
                1,
                100_000,
            )?,
        };
        Ok((limits, max_message_bytes))
    }
}

impl RawLimits {
    /// The per-identity rate limits and the connection and stream caps.
    fn abuse(&self) -> Result<AbuseLimits, ConfigError> {
        let setting = |name: &str, value: Option<u32>, default: u32, max: u32| {
            bounded(name, u64::from(value.unwrap_or(default)), 1, u64::from(max))
                .map(|v| u32::try_from(v).unwrap_or(default))
        };
        let limits = AbuseLimits {
            requests_per_second: setting(
                "limits.requests_per_second",
                self.requests_per_second,
                2000,
                1_000_000,
            )?,
            request_burst: setting("limits.request_burst", self.request_burst, 4000, 1_000_000)?,
            denied_per_second: setting(
                "limits.denied_per_second",
                self.denied_per_second,
                5,
                1_000_000,
            )?,
            denied_burst: setting("limits.denied_burst", self.denied_burst, 50, 1_000_000)?,
            max_connections: setting(
                "limits.max_connections",
                self.max_connections,
                1024,
                1 << 20,
            )?,
            max_streams_per_connection: setting(
                "limits.max_streams_per_connection",
                self.max_streams_per_connection,
                128,
                1 << 16,
            )?,
            refusal_delay: Duration::from_millis(bounded(
                "limits.refusal_delay_ms",
                self.refusal_delay_ms.unwrap_or(50),
                0,
                10_000,
            )?),
        };
        Ok(limits)
    }
}

impl RawTokens {
    fn settings(&self) -> Result<TokenSettings, ConfigError> {
        let parse = |key: &str, list: &Option<Vec<String>>| {
            list.iter()
                .flatten()
                .map(|t| {
                    TenantId::parse(t)
                        .map_err(|e| ConfigError::Invalid(format!("tokens.{key}: {e}")))
                })
                .collect::<Result<BTreeSet<_>, _>>()
        };
        Ok(TokenSettings {
            deterministic: parse("deterministic_tenants", &self.deterministic_tenants)?,
            card_shaped: parse("card_shaped_tenants", &self.card_shaped_tenants)?,
        })
    }
}

impl RawAuthz {
    /// The purposes with special rules: readable while restricted, needing consent.
    fn purposes(&self) -> Result<PurposeRules, ConfigError> {
        let parse = |key: &str, list: &Option<Vec<String>>, default: Vec<Purpose>| match list {
            None => Ok(default),
            Some(items) => items
                .iter()
                .map(|p| {
                    Purpose::parse(p).map_err(|e| ConfigError::Invalid(format!("authz.{key}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>(),
        };
        let defaults = PurposeRules::default();
        Ok(PurposeRules {
            legal_obligation: parse(
                "legal_obligation_purposes",
                &self.legal_obligation_purposes,
                defaults.legal_obligation,
            )?,
            need_consent: parse(
                "consent_purposes",
                &self.consent_purposes,
                defaults.need_consent,
            )?,
        })
    }
}

impl RawAudit {
    /// The audit settings of the use cases; the other settings are their defaults.
    fn settings(&self) -> Result<VaultSettings, ConfigError> {
        let days = bounded(
            "audit.retention_days",
            u64::from(self.retention_days.unwrap_or(365)),
            1,
            36_500,
        )?;
        let audit_sink = match &self.jsonl_path {
            None => None,
            Some(path) => Some(SinkConfig {
                path: path.clone(),
                max_bytes: bounded(
                    "audit.jsonl_max_bytes",
                    self.jsonl_max_bytes.unwrap_or(64 << 20),
                    4096,
                    1 << 40,
                )?,
                keep: u32::try_from(bounded(
                    "audit.jsonl_keep",
                    u64::from(self.jsonl_keep.unwrap_or(5)),
                    0,
                    1000,
                )?)
                .unwrap_or(5),
            }),
        };
        Ok(VaultSettings {
            audit_timeout: millis("audit.timeout_ms", self.timeout_ms, 2000, 10, 600_000)?,
            audit_retention: Duration::from_secs(86_400 * days),
            audit_sink,
            audit_syslog: self.syslog()?,
            denials: DenialSettings {
                window: Duration::from_secs(bounded(
                    "audit.denial_window_secs",
                    self.denial_window_secs.unwrap_or(60),
                    1,
                    86_400,
                )?),
                events_per_window: u32::try_from(bounded(
                    "audit.denial_events_per_window",
                    u64::from(self.denial_events_per_window.unwrap_or(10)),
                    0,
                    1_000_000,
                )?)
                .unwrap_or(10),
            },
            retention: crate::service::RetentionRules::default(),
            ..VaultSettings::default()
        })
    }
}

impl RawAudit {
    /// The syslog mirror: TLS unless turned off by name, as for PostgreSQL.
    fn syslog(&self) -> Result<Option<SyslogConfig>, ConfigError> {
        let Some(address) = &self.syslog_address else {
            let set = [
                ("syslog_tls", self.syslog_tls.is_some()),
                ("syslog_ca_file", self.syslog_ca_file.is_some()),
                ("syslog_facility", self.syslog_facility.is_some()),
                (
                    "syslog_enterprise_number",
                    self.syslog_enterprise_number.is_some(),
                ),
            ];
            return match set.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(ConfigError::Invalid(format!(
                    "audit.{key} is set but audit.syslog_address is not"
                ))),
                None => Ok(None),
            };
        };
        if syslog_host(address).is_none() {
            return Err(ConfigError::Invalid(format!(
                "audit.syslog_address {address:?} is not host:port"
            )));
        }
        let tls_ca_file = match (
            self.syslog_tls.as_deref().unwrap_or("verify-full"),
            &self.syslog_ca_file,
        ) {
            ("verify-full", Some(ca)) => Some(ca.clone()),
            ("verify-full", None) => {
                return Err(ConfigError::Invalid(
                    "audit.syslog_tls is \"verify-full\" (the default), which needs \
                     audit.syslog_ca_file: the PEM file of the CA that signed the collector's \
                     certificate; only for a collector on a private link, set \
                     audit.syslog_tls = \"disable\""
                        .into(),
                ))
            }
            ("disable", None) => None,
            ("disable", Some(_)) => {
                return Err(ConfigError::Invalid(
                    "audit.syslog_ca_file is set but audit.syslog_tls is \"disable\"".into(),
                ))
            }
            (other, _) => {
                return Err(ConfigError::Invalid(format!(
                    "audit.syslog_tls is {other:?}; it must be \"verify-full\" or \"disable\""
                )))
            }
        };
        let facility = bounded(
            "audit.syslog_facility",
            u64::from(self.syslog_facility.unwrap_or(13)),
            0,
            23,
        )?;
        Ok(Some(SyslogConfig {
            address: address.clone(),
            tls_ca_file,
            facility: u8::try_from(facility).unwrap_or(13),
            enterprise_number: u32::try_from(bounded(
                "audit.syslog_enterprise_number",
                u64::from(self.syslog_enterprise_number.unwrap_or(32473)),
                1,
                u64::from(u32::MAX),
            )?)
            .unwrap_or(32473),
        }))
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
