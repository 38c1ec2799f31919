//! The files in deploy/ stay true to the code: the example config and the ConfigMap parse
//! and validate with the server's own config types, the example sets every key there is,
//! and the systemd unit, StatefulSet and Dockerfile keep their hardening. Text checks only,
//! so the test needs nothing but Rust.

use std::path::Path;

use pii_vault::config::{
    RawAudit, RawAuthz, RawConfig, RawKeys, RawLimits, RawMetrics, RawStorage, RawTls,
};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lines that are not comments, trimmed.
fn active_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Asserts that the example sets every key `RawConfig` has. The destructuring has no `..`,
/// so a new config key fails to compile here until the example documents it.
fn assert_every_key_set(raw: &RawConfig) {
    let RawConfig {
        listen,
        data_dir,
        tls: RawTls {
            cert,
            key,
            client_ca,
        },
        keys:
            RawKeys {
                root_key_file,
                epoch_interval_hours,
                max_encryptions_per_dek,
                max_encryptions_per_wrapping_key,
                rewrap_batch_size,
                rewrap_pause_ms,
                dek_cache_entries,
            },
        limits:
            RawLimits {
                max_value_bytes,
                max_message_bytes,
                max_fields_per_request,
                request_timeout_ms,
                handshake_timeout_ms,
                shutdown_grace_ms,
            },
        storage:
            RawStorage {
                cache_capacity_bytes,
                backend,
                postgres_url,
                postgres_connections,
                postgres_tls,
                postgres_ca_file,
            },
        audit:
            RawAudit {
                timeout_ms,
                retention_days,
                jsonl_path,
                jsonl_max_bytes,
                jsonl_keep,
            },
        metrics: RawMetrics {
            listen: metrics_listen,
        },
        authz:
            RawAuthz {
                policy_file,
                legal_obligation_purposes,
                consent_purposes,
            },
    } = raw;
    let set = [
        ("listen", listen.is_some()),
        ("data_dir", data_dir.is_some()),
        ("tls.cert", cert.is_some()),
        ("tls.key", key.is_some()),
        ("tls.client_ca", client_ca.is_some()),
        ("keys.root_key_file", root_key_file.is_some()),
        ("keys.epoch_interval_hours", epoch_interval_hours.is_some()),
        (
            "keys.max_encryptions_per_dek",
            max_encryptions_per_dek.is_some(),
        ),
        (
            "keys.max_encryptions_per_wrapping_key",
            max_encryptions_per_wrapping_key.is_some(),
        ),
        ("keys.rewrap_batch_size", rewrap_batch_size.is_some()),
        ("keys.rewrap_pause_ms", rewrap_pause_ms.is_some()),
        ("keys.dek_cache_entries", dek_cache_entries.is_some()),
        ("limits.max_value_bytes", max_value_bytes.is_some()),
        ("limits.max_message_bytes", max_message_bytes.is_some()),
        (
            "limits.max_fields_per_request",
            max_fields_per_request.is_some(),
        ),
        ("limits.request_timeout_ms", request_timeout_ms.is_some()),
        (
            "limits.handshake_timeout_ms",
            handshake_timeout_ms.is_some(),
        ),
        (
            "storage.cache_capacity_bytes",
            cache_capacity_bytes.is_some(),
        ),
        ("storage.backend", backend.is_some()),
        // The example runs on sled, where these must stay unset: they are documented in
        // comments instead (checked by `the_example_config_documents_the_postgres_settings`).
        ("storage.postgres_url", postgres_url.is_none()),
        (
            "storage.postgres_connections",
            postgres_connections.is_none(),
        ),
        ("storage.postgres_tls", postgres_tls.is_none()),
        ("storage.postgres_ca_file", postgres_ca_file.is_none()),
        ("audit.timeout_ms", timeout_ms.is_some()),
        ("audit.retention_days", retention_days.is_some()),
        ("audit.jsonl_path", jsonl_path.is_some()),
        ("audit.jsonl_max_bytes", jsonl_max_bytes.is_some()),
        ("audit.jsonl_keep", jsonl_keep.is_some()),
        ("authz.policy_file", policy_file.is_some()),
        ("metrics.listen", metrics_listen.is_some()),
        ("limits.shutdown_grace_ms", shutdown_grace_ms.is_some()),
        (
            "authz.legal_obligation_purposes",
            legal_obligation_purposes.is_some(),
        ),
        ("authz.consent_purposes", consent_purposes.is_some()),
    ];
    for (name, is_set) in set {
        assert!(is_set, "the example config does not set {name}");
    }
}

#[test]
fn the_example_config_documents_the_postgres_settings() {
    let text = read("deploy/pii-vault.example.toml");
    for key in [
        "# postgres_url = ",
        "# postgres_connections = ",
        "# postgres_tls = ",
        "# postgres_ca_file = ",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(key)),
            "the example config does not show {key:?}"
        );
    }
}

#[test]
fn the_example_policy_parses() {
    let text = read("deploy/policy.example.toml");
    pii_vault::authz::Policy::parse(&text).expect("the example policy parses");
}

#[test]
fn the_example_config_sets_every_key_and_validates() {
    let text = read("deploy/pii-vault.example.toml");
    let raw: RawConfig = toml::from_str(&text).expect("the example parses as RawConfig");
    assert_every_key_set(&raw);
    let config = raw.validate().expect("the example validates");
    assert!(!config.dev_tls, "the example must not fall back to dev TLS");
    assert_eq!(config.listen.port(), 7443);
    assert_eq!(config.data_dir, Path::new("/var/lib/pii-vault"));
    // The paths the systemd unit makes writable and starts with.
    let unit = read("deploy/systemd/pii-vault.service");
    assert!(unit.contains("ReadWritePaths=/var/lib/pii-vault"));
    assert!(unit.contains("serve --config /etc/pii-vault/pii-vault.toml"));
}

/// The block under `pii-vault.toml: |` in the ConfigMap, de-indented.
fn configmap_toml(yaml: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "pii-vault.toml: |");
    lines
        .next()
        .expect("the ConfigMap has a pii-vault.toml key");
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect();
    assert!(!body.is_empty(), "pii-vault.toml is empty");
    body.iter()
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_configmap_config_validates_and_matches_the_mounts() {
    let cm = read("deploy/kubernetes/configmap.yaml");
    let raw: RawConfig = toml::from_str(&configmap_toml(&cm)).expect("ConfigMap TOML parses");
    let config = raw.validate().expect("ConfigMap config validates");
    assert!(!config.dev_tls);
    assert_eq!(config.data_dir, Path::new("/data"));
    assert_eq!(config.listen.port(), 7443);

    let sts = read("deploy/kubernetes/statefulset.yaml");
    let docker = read("deploy/Dockerfile");
    // Where the image looks for its config is where the StatefulSet mounts it.
    assert!(docker.contains(r#""serve", "--config", "/etc/pii-vault/pii-vault.toml""#));
    assert!(sts.contains("mountPath: /etc/pii-vault\n"));
    assert!(sts.contains("path: pii-vault.toml"));
    assert!(sts.contains("mountPath: /data\n"));
    for file in [&config.tls.cert, &config.tls.key, &config.tls.client_ca] {
        let rel = file
            .strip_prefix("/etc/pii-vault/")
            .expect("TLS files live in the projected /etc/pii-vault volume");
        assert!(
            sts.contains(&format!("path: {}", rel.display())),
            "statefulset does not project {}",
            rel.display()
        );
    }
    // The init container writes the root key where the config reads it.
    let key = config.root_key_file.display().to_string();
    assert!(
        sts.contains(&format!("- {key}\n")),
        "init container target {key}"
    );
}

#[test]
fn the_systemd_unit_is_hardened() {
    let unit = read("deploy/systemd/pii-vault.service");
    let lines = active_lines(&unit);
    for directive in [
        "User=pii-vault",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
        "ReadWritePaths=/var/lib/pii-vault",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute=true",
        "LockPersonality=true",
        "RestrictNamespaces=true",
        "SystemCallFilter=@system-service",
        "UMask=0077",
        "KillSignal=SIGTERM",
    ] {
        assert!(lines.contains(&directive), "unit lacks {directive}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("TimeoutStopSec=")),
        "unit lacks TimeoutStopSec"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("User=root") || l.starts_with("AmbientCapabilities=CAP")),
        "unit grants privileges"
    );
}

#[test]
fn the_statefulset_is_hardened() {
    let sts = read("deploy/kubernetes/statefulset.yaml");
    let lines = active_lines(&sts);
    for setting in [
        "replicas: 1",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "allowPrivilegeEscalation: false",
        r#"drop: ["ALL"]"#,
        "automountServiceAccountToken: false",
    ] {
        assert!(lines.contains(&setting), "statefulset lacks {setting}");
    }
    // Every container (init and main) carries the container-level settings.
    for setting in [
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
    ] {
        assert_eq!(
            lines.iter().filter(|l| **l == setting).count(),
            2,
            "{setting} on both containers"
        );
    }
    assert!(sts.contains("volumeClaimTemplates:"));
    // A kubelet `grpc` probe cannot do mutual TLS: on 7443 it would always fail and
    // restart the pod forever (see the comment in the manifest).
    assert!(
        !lines.contains(&"grpc:"),
        "a grpc probe cannot pass the server's mTLS"
    );
}

#[test]
fn the_dockerfile_builds_locked_and_runs_unprivileged() {
    let docker = read("deploy/Dockerfile");
    let lines = active_lines(&docker);
    assert!(docker.contains("cargo build --release --locked"));
    assert!(lines.contains(&"USER 10001:10001"));
    assert!(lines.contains(&r#"VOLUME ["/data"]"#));
    assert!(lines.contains(&"EXPOSE 7443"));
    assert!(
        lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    let ignore = read("deploy/Dockerfile.dockerignore");
    assert_eq!(
        active_lines(&ignore).first(),
        Some(&"*"),
        "the build context is an allow-list"
    );
}
