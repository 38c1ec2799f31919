//! Unit tests of configuration parsing and validation.

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
    let text =
        format!("[storage]\nbackend = \"postgres\"\npostgres_url = \"host=db user=v\"\n{extra}");
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
    let raw: RawConfig = toml::from_str("[storage]\npostgres_tls = \"disable\"").expect("parses");
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
    let raw: RawConfig = toml::from_str("[metrics]\nlisten = \"127.0.0.1:9464\"").expect("parses");
    let addr = raw.validate().expect("validates").metrics_listen;
    assert_eq!(addr, Some("127.0.0.1:9464".parse().expect("addr")));
}

fn audit(text: &str) -> Result<Config, ConfigError> {
    toml::from_str::<RawConfig>(&format!("[audit]\n{text}"))
        .expect("parses")
        .validate()
}

#[test]
fn the_syslog_mirror_is_tls_by_default_and_plain_only_by_name() {
    assert!(audit("").expect("defaults").vault.audit_syslog.is_none());
    let tls = audit("syslog_address = \"siem.internal:6514\"\nsyslog_ca_file = \"ca.pem\"")
        .expect("validates")
        .vault
        .audit_syslog
        .expect("a mirror");
    assert_eq!(
        tls,
        crate::service::SyslogConfig {
            address: "siem.internal:6514".into(),
            tls_ca_file: Some("ca.pem".into()),
            facility: 13,
            enterprise_number: 32473,
        }
    );
    let plain = audit(
        "syslog_address = \"[::1]:514\"\nsyslog_tls = \"disable\"\nsyslog_facility = 16\n\
         syslog_enterprise_number = 99999",
    )
    .expect("validates")
    .vault
    .audit_syslog
    .expect("a mirror");
    assert_eq!(
        (plain.tls_ca_file, plain.facility, plain.enterprise_number),
        (None, 16, 99999)
    );

    for (bad, says) in [
        ("syslog_address = \"siem:6514\"", "syslog_ca_file"),
        (
            "syslog_address = \"siem\"\nsyslog_tls = \"disable\"",
            "host:port",
        ),
        (
            "syslog_address = \"siem:1\"\nsyslog_tls = \"require\"",
            "verify-full",
        ),
        (
            "syslog_address = \"siem:1\"\nsyslog_tls = \"disable\"\nsyslog_ca_file = \"c\"",
            "syslog_ca_file is set",
        ),
        (
            "syslog_address = \"siem:1\"\nsyslog_tls = \"disable\"\nsyslog_facility = 24",
            "syslog_facility",
        ),
        ("syslog_ca_file = \"ca.pem\"", "syslog_address is not"),
    ] {
        let e = audit(bad).expect_err(bad).to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
