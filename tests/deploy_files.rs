//! The files in deploy/ stay true to the code: the example config, the ConfigMap and the
//! PostgreSQL overlay's config parse and validate with the server's own config types, the
//! example sets every key there is, the systemd unit, StatefulSet and Dockerfile keep their
//! hardening, and the root key file sits where rotation can rewrite it and a restart keeps
//! it. Those are text checks that need nothing but Rust.
//!
//! `rendered_manifests_are_valid_and_fit_together` also runs `.ci/deploy-check`, which
//! renders both kustomizations with kubectl and validates them against the Kubernetes
//! schemas (installing its validator into a venv under the target directory), then checks
//! the rendered objects against each other and against the config: ports, selectors,
//! volumes. Without kubectl or python3 it skips, saying why, unless `CI` is set: then it
//! fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use pii_vault::config::{
    Config, RawAudit, RawAuthz, RawBackup, RawConfig, RawKeys, RawLimits, RawMetrics,
    RawObservability, RawStorage, RawTls, RawTokens,
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
        tls:
            RawTls {
                cert,
                key,
                client_ca,
                client_crl,
            },
        keys:
            RawKeys {
                root_key_file,
                root,
                erasure_ledger,
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
                requests_per_second,
                request_burst,
                denied_per_second,
                denied_burst,
                max_connections,
                max_streams_per_connection,
                refusal_delay_ms,
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
                syslog_address,
                syslog_tls,
                syslog_ca_file,
                syslog_facility,
                syslog_enterprise_number,
                denial_events_per_window,
                denial_window_secs,
            },
        metrics: RawMetrics {
            listen: metrics_listen,
        },
        observability: RawObservability { trace_propagation },
        tokens:
            RawTokens {
                deterministic_tenants,
                card_shaped_tenants,
            },
        authz:
            RawAuthz {
                policy_file,
                legal_obligation_purposes,
                consent_purposes,
            },
        backup: RawBackup {
            retention_days: backup_retention_days,
        },
    } = raw;
    let set = [
        ("listen", listen.is_some()),
        ("data_dir", data_dir.is_some()),
        ("tls.cert", cert.is_some()),
        ("tls.key", key.is_some()),
        ("tls.client_ca", client_ca.is_some()),
        ("tls.client_crl", client_crl.is_some()),
        ("keys.root_key_file", root_key_file.is_some()),
        ("keys.root", root.is_some()),
        ("keys.erasure_ledger", erasure_ledger.is_some()),
        ("backup.retention_days", backup_retention_days.is_some()),
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
        ("limits.requests_per_second", requests_per_second.is_some()),
        ("limits.request_burst", request_burst.is_some()),
        ("limits.denied_per_second", denied_per_second.is_some()),
        ("limits.denied_burst", denied_burst.is_some()),
        ("limits.max_connections", max_connections.is_some()),
        (
            "limits.max_streams_per_connection",
            max_streams_per_connection.is_some(),
        ),
        ("limits.refusal_delay_ms", refusal_delay_ms.is_some()),
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
        // The example has no syslog collector: these stay unset and are documented in
        // comments (checked by `the_example_config_documents_the_syslog_settings`).
        ("audit.syslog_address", syslog_address.is_none()),
        ("audit.syslog_tls", syslog_tls.is_none()),
        ("audit.syslog_ca_file", syslog_ca_file.is_none()),
        ("audit.syslog_facility", syslog_facility.is_none()),
        (
            "audit.syslog_enterprise_number",
            syslog_enterprise_number.is_none(),
        ),
        (
            "audit.denial_events_per_window",
            denial_events_per_window.is_some(),
        ),
        ("audit.denial_window_secs", denial_window_secs.is_some()),
        ("authz.policy_file", policy_file.is_some()),
        ("metrics.listen", metrics_listen.is_some()),
        (
            "observability.trace_propagation",
            trace_propagation.is_some(),
        ),
        (
            "tokens.deterministic_tenants",
            deterministic_tenants.is_some(),
        ),
        ("tokens.card_shaped_tenants", card_shaped_tenants.is_some()),
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

/// The syslog settings are shown commented out, and set as shown they validate.
#[test]
fn the_example_config_documents_the_syslog_settings() {
    let text = read("deploy/pii-vault.example.toml");
    let keys = [
        "syslog_address",
        "syslog_tls",
        "syslog_ca_file",
        "syslog_facility",
        "syslog_enterprise_number",
    ];
    let mut shown = Vec::new();
    for key in keys {
        let line = text
            .lines()
            .map(str::trim_start)
            .find(|l| l.starts_with(&format!("# {key} = ")))
            .unwrap_or_else(|| panic!("the example config does not show {key:?}"));
        shown.push(line.trim_start_matches("# ").to_owned());
    }
    let audit = format!("[audit]\n{}\n", shown.join("\n"));
    let config = config_of("the example's syslog lines", &audit);
    let syslog = config.vault.audit_syslog.expect("a syslog mirror");
    assert!(syslog.tls_ca_file.is_some(), "the example shows TLS");
}

#[test]
fn the_example_policy_parses() {
    let text = read("deploy/policy.example.toml");
    pii_vault::authz::Policy::parse(&text).expect("the example policy parses");
}

/// Parses and validates a config file of deploy/ with the server's own two phases.
fn config_of(relative: &str, text: &str) -> Config {
    let raw = RawConfig::parse(text, relative).unwrap_or_else(|e| panic!("{e}"));
    raw.validate()
        .unwrap_or_else(|e| panic!("{relative} does not validate: {e}"))
}

/// Metrics and the audit mirror are on, on the ports and paths the manifests use.
fn assert_metrics_and_audit_sink_on(origin: &str, config: &Config, audit_dir: &str) {
    let metrics = config
        .metrics_listen
        .unwrap_or_else(|| panic!("{origin}: [metrics] listen is not set"));
    assert_eq!(metrics.port(), 9464, "{origin}: metrics port");
    let sink = config
        .vault
        .audit_sink
        .as_ref()
        .unwrap_or_else(|| panic!("{origin}: [audit] jsonl_path is not set"));
    assert!(
        sink.path.starts_with(audit_dir),
        "{origin}: audit mirror {} is not under {audit_dir}",
        sink.path.display()
    );
}

#[test]
fn the_example_config_sets_every_key_and_validates() {
    let origin = "deploy/pii-vault.example.toml";
    let text = read(origin);
    let raw = RawConfig::parse(&text, origin).expect("the example parses as RawConfig");
    assert_every_key_set(&raw);
    let config = raw.validate().expect("the example validates");
    assert!(!config.dev_tls, "the example must not fall back to dev TLS");
    assert_eq!(config.listen.port(), 7443);
    assert_eq!(config.data_dir, Path::new("/var/lib/pii-vault"));
    // The paths the systemd unit makes writable and starts with.
    let unit = read("deploy/systemd/pii-vault.service");
    assert!(active_lines(&unit).contains(&"ReadWritePaths=/var/lib/pii-vault"));
    assert!(unit.contains("serve --config /etc/pii-vault/pii-vault.toml"));
}

/// The directories the unit's `StateDirectory=` lines create, as absolute paths.
fn state_directories(unit: &str) -> Vec<PathBuf> {
    active_lines(unit)
        .iter()
        .filter_map(|l| l.strip_prefix("StateDirectory="))
        .flat_map(str::split_whitespace)
        .map(|d| Path::new("/var/lib").join(d))
        .collect()
}

#[test]
fn the_systemd_unit_keeps_the_root_key_where_rotation_can_rewrite_it() {
    // The unit runs with the example config (see its install notes).
    let config = config_of(
        "deploy/pii-vault.example.toml",
        &read("deploy/pii-vault.example.toml"),
    );
    let unit = read("deploy/systemd/pii-vault.service");
    let lines = active_lines(&unit);
    let states = state_directories(&unit);
    let writable = |dir: &Path| {
        states.iter().any(|s| s == dir)
            && lines.contains(&format!("ReadWritePaths={}", dir.display()).as_str())
    };
    // Root rotation and key epochs rewrite the file through a temporary file beside it:
    // its directory must be writable under ProtectSystem=strict and survive restarts,
    // which is what a StateDirectory= is.
    let key_dir = config
        .root_key_file
        .parent()
        .expect("key file has a directory");
    assert!(
        writable(key_dir),
        "root key file {} is not in a writable StateDirectory= of the unit",
        config.root_key_file.display()
    );
    assert!(
        !config.root_key_file.starts_with("/etc"),
        "read-only under ProtectSystem"
    );
    // Its own directory, so that a file backup of the data leaves the key out.
    assert!(
        !config.root_key_file.starts_with(&config.data_dir),
        "the root key file is inside data_dir"
    );
    assert!(
        writable(&config.data_dir),
        "data_dir is not a writable StateDirectory="
    );
    // The erasure ledger is appended to at every erasure and read by every restore: kept
    // with the key, out of the data, where it survives restarts.
    let ledger = config
        .vault
        .erasure_ledger
        .as_ref()
        .expect("an erasure ledger");
    assert!(
        writable(ledger.parent().expect("ledger directory")),
        "erasure ledger {} is not in a writable StateDirectory= of the unit",
        ledger.display()
    );
    assert!(
        !ledger.starts_with(&config.data_dir),
        "the ledger is inside data_dir"
    );
    assert_metrics_and_audit_sink_on("example config", &config, "/var/lib/pii-vault");
    assert!(lines.contains(&"StateDirectoryMode=0700"));
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

fn configmap_config() -> Config {
    let cm = read("deploy/kubernetes/configmap.yaml");
    config_of("deploy/kubernetes/configmap.yaml", &configmap_toml(&cm))
}

const POSTGRES_CONFIG: &str = "deploy/kubernetes-postgres/pii-vault.toml";

#[test]
fn the_configmap_config_validates_and_matches_the_mounts() {
    let config = configmap_config();
    assert!(!config.dev_tls);
    assert_eq!(config.data_dir, Path::new("/data"));
    assert_eq!(config.listen.port(), 7443);
    assert_metrics_and_audit_sink_on("ConfigMap", &config, "/data/");

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
    // The init container prepares the root key where the config reads it.
    let key = config.root_key_file.display().to_string();
    assert!(
        sts.contains(&format!("key={key}\n")),
        "init container target {key}"
    );
}

#[test]
fn the_postgres_overlay_config_validates() {
    let config = config_of(POSTGRES_CONFIG, &read(POSTGRES_CONFIG));
    let base = configmap_config();
    assert!(matches!(
        config.backend,
        pii_vault::config::Backend::Postgres {
            tls: pii_vault::storage::PgTls::VerifyFull { .. },
            ..
        }
    ));
    // The same pod layout as the base: only [storage] differs.
    assert_eq!(config.listen, base.listen);
    assert_eq!(config.metrics_listen, base.metrics_listen);
    assert_eq!(config.data_dir, base.data_dir);
    assert_eq!(config.root_key_file, base.root_key_file);
    assert_eq!(config.policy_file, base.policy_file);
    assert_metrics_and_audit_sink_on(POSTGRES_CONFIG, &config, "/data/");
}

#[test]
fn the_stale_deploy_comments_are_gone() {
    let stale = [
        // The PostgreSQL backend and root rotation exist.
        "networked storage backend the design plans",
        "until then, do not raise replicas",
        "not implemented yet",
        "will need a durable, writable key source",
        // The authorization policy exists.
        "until the authorization policy exists",
        // The key is no longer pre-made under /etc or copied into memory.
        "must exist before the first start",
        "/etc/pii-vault/root.key",
        "/run/pii-vault/keys",
        "never touches the node's disk",
    ];
    for file in [
        "deploy/kubernetes/statefulset.yaml",
        "deploy/kubernetes/configmap.yaml",
        "deploy/kubernetes/service.yaml",
        "deploy/kubernetes/secret-example.yaml",
        "deploy/systemd/pii-vault.service",
        "deploy/pii-vault.example.toml",
        "deploy/Dockerfile",
    ] {
        let text = read(file).to_lowercase();
        for phrase in stale {
            assert!(!text.contains(phrase), "{file} still says {phrase:?}");
        }
    }
    // No memory-backed key volume in the manifest (comments may say why not).
    let sts = read("deploy/kubernetes/statefulset.yaml");
    let lines = active_lines(&sts);
    assert!(!lines.contains(&"emptyDir:") && !lines.contains(&"medium: Memory"));
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
        "ReadWritePaths=/var/lib/pii-vault-keys",
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
    // The probes ask the vault's own health endpoints on the metrics port.
    for probe in ["readinessProbe:", "livenessProbe:"] {
        let at = sts.find(probe).unwrap_or_else(|| panic!("no {probe}"));
        let block: Vec<&str> = sts[at..].lines().skip(1).take(3).map(str::trim).collect();
        let path = if probe.starts_with("readiness") {
            "path: /readyz"
        } else {
            "path: /livez"
        };
        assert_eq!(block, ["httpGet:", path, "port: metrics"], "{probe}");
    }
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

/// The rendered checks cannot run here: a skip saying why, or a failure when `CI` is set.
fn cannot_check(reason: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "CI is set and the deploy files cannot be rendered here: {reason}"
    );
    // Straight to the process's stderr: the test harness would swallow eprintln! output
    // of a passing test.
    let line = format!("skipping the rendered deploy checks (CI would fail): {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Runs `.ci/deploy-check` (render, schema validation); its rendered objects by source, or
/// `None` when it cannot run here.
fn deploy_check() -> Option<Value> {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-check");
    let json = work.join("rendered.json");
    let _ = std::fs::remove_file(&json);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/deploy-check");
    let run = Command::new("python3")
        .arg(&script)
        .arg("--work")
        .arg(&work)
        .arg("--json")
        .arg(&json)
        .output();
    let out = match run {
        Ok(out) => out,
        Err(e) => {
            cannot_check(&format!("python3 does not run: {e}"));
            return None;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{stderr}");
    match out.status.code() {
        Some(0) => {}
        Some(2) => {
            cannot_check(stderr.trim());
            return None;
        }
        _ => panic!(
            ".ci/deploy-check found problems ({}):\n{stderr}",
            out.status
        ),
    }
    let text = std::fs::read_to_string(&json).expect("deploy-check wrote its JSON");
    Some(serde_json::from_str(&text).expect("deploy-check's JSON parses"))
}

/// The objects one kustomization renders to.
struct Render<'a> {
    source: &'a str,
    objects: &'a [Value],
}

impl<'a> Render<'a> {
    fn all(&self, kind: &str) -> Vec<&'a Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str, name: &str) -> &'a Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind}/{name}", self.source))
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// A non-empty `matchLabels` map all of whose labels `labels` carries.
fn selects(match_labels: &Value, labels: &Value) -> bool {
    match_labels
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// (port, protocol) of each entry of a NetworkPolicy rule's `ports`; numeric ports only.
fn rule_ports(rule: &Value) -> Vec<(u64, String)> {
    list(&rule["ports"])
        .iter()
        .map(|p| {
            let port = p["port"].as_u64().expect("NetworkPolicy ports are numbers");
            (port, p["protocol"].as_str().unwrap_or("TCP").to_owned())
        })
        .collect()
}

/// Ports agree from the config to the Service, ServiceMonitor and NetworkPolicy.
fn check_ports(r: &Render, config: &Config, pod_labels: &Value, container: &Value) {
    let src = r.source;
    let grpc = u64::from(config.listen.port());
    let metrics = u64::from(config.metrics_listen.expect("metrics on").port());
    let port_of = |name: &str| {
        list(&container["ports"])
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{src}: the container has no port {name}"))
    };
    assert_eq!(port_of("grpc-tls"), grpc, "{src}: gRPC port vs listen");
    assert_eq!(
        port_of("metrics"),
        metrics,
        "{src}: metrics port vs [metrics] listen"
    );
    let target = |p: &Value| match &p["targetPort"] {
        Value::String(name) => port_of(name),
        other => other.as_u64().expect("targetPort"),
    };

    let mut metrics_service = None;
    for svc in r.all("Service") {
        let name = text(&svc["metadata"]["name"]);
        assert!(
            selects(&svc["spec"]["selector"], pod_labels),
            "{src}: {name} selector"
        );
        let ports = list(&svc["spec"]["ports"]);
        let reached: Vec<u64> = ports.iter().map(target).collect();
        for p in ports {
            assert_eq!(
                p["port"].as_u64(),
                Some(target(p)),
                "{src}: {name} renumbers"
            );
        }
        if reached.contains(&metrics) {
            assert_eq!(reached, [metrics], "{src}: {name} mixes metrics with gRPC");
            assert!(
                metrics_service.replace(svc).is_none(),
                "{src}: two metrics Services"
            );
        } else {
            assert_eq!(reached, [grpc], "{src}: {name} exposes other ports");
        }
    }
    let metrics_service = metrics_service.expect("a Service for the metrics port");

    let sm = r.one("ServiceMonitor", "pii-vault");
    let picked: Vec<&Value> = r
        .all("Service")
        .into_iter()
        .filter(|s| {
            selects(
                &sm["spec"]["selector"]["matchLabels"],
                &s["metadata"]["labels"],
            )
        })
        .collect();
    assert_eq!(
        picked,
        [metrics_service],
        "{src}: the ServiceMonitor's Services"
    );
    let endpoints = list(&sm["spec"]["endpoints"]);
    assert!(!endpoints.is_empty());
    for ep in endpoints {
        let port = list(&metrics_service["spec"]["ports"])
            .iter()
            .find(|p| p["name"] == ep["port"])
            .unwrap_or_else(|| {
                panic!(
                    "{src}: ServiceMonitor port {} not on the Service",
                    ep["port"]
                )
            });
        assert_eq!(
            target(port),
            metrics,
            "{src}: ServiceMonitor scrapes another port"
        );
        assert_eq!(
            ep["scheme"], "http",
            "{src}: the metrics endpoint is plain HTTP"
        );
        assert_eq!(ep["path"], "/metrics");
    }

    let np = r.one("NetworkPolicy", "pii-vault");
    assert!(selects(
        &np["spec"]["podSelector"]["matchLabels"],
        pod_labels
    ));
    assert_eq!(
        np["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    let mut admitted = Vec::new();
    for rule in list(&np["spec"]["ingress"]) {
        let peers = list(&rule["from"]);
        let ports = rule_ports(rule);
        assert!(!peers.is_empty(), "{src}: an ingress rule from anywhere");
        assert_eq!(ports.len(), 1, "{src}: one port per ingress rule");
        let (port, protocol) = &ports[0];
        assert_eq!(protocol, "TCP");
        for peer in peers {
            let ns = &peer["namespaceSelector"]["matchLabels"];
            let pods = &peer["podSelector"]["matchLabels"];
            if *port == grpc {
                let client = serde_json::json!({"pii-vault/client": "true"});
                assert!(
                    selects(pods, &client),
                    "{src}: gRPC peer {peer} is not labelled"
                );
                assert!(peer.get("namespaceSelector").is_none() || selects(ns, &client));
            } else if *port == metrics {
                let monitoring = serde_json::json!({"kubernetes.io/metadata.name": "monitoring"});
                // A podSelector may narrow it further, to the Prometheus pods.
                assert_eq!(ns, &monitoring, "{src}: metrics peer {peer}");
            } else {
                panic!("{src}: ingress to port {port}");
            }
            assert!(peer.get("ipBlock").is_none(), "{src}: ingress by address");
        }
        admitted.push(*port);
    }
    admitted.sort_unstable();
    assert_eq!(
        admitted,
        [grpc.min(metrics), grpc.max(metrics)],
        "{src}: ingress ports"
    );
    let mut egress = Vec::new();
    for rule in list(&np["spec"]["egress"]) {
        assert!(
            !list(&rule["to"]).is_empty(),
            "{src}: an egress rule to anywhere"
        );
        egress.extend(rule_ports(rule));
    }
    let mut expected = vec![(53, "UDP".to_owned()), (53, "TCP".to_owned())];
    if matches!(config.backend, pii_vault::config::Backend::Postgres { .. }) {
        expected.push((5432, "TCP".to_owned()));
    }
    assert_eq!(
        egress, expected,
        "{src}: egress is DNS (and PostgreSQL) only"
    );
}

/// The root key, the store and the audit mirror are on volumes that outlive the pod; the
/// key on a writable one of its own; every file the config reads is projected.
fn check_volumes(r: &Render, config: &Config, pod: &Value, container: &Value) {
    let src = r.source;
    let sts = r.one("StatefulSet", "pii-vault");
    let claims: Vec<&str> = list(&sts["spec"]["volumeClaimTemplates"])
        .iter()
        .map(|c| text(&c["metadata"]["name"]))
        .collect();
    let volume = |name: &str| {
        list(&pod["spec"]["volumes"])
            .iter()
            .find(|v| v["name"] == name)
    };
    let durable = |name: &str| {
        claims.contains(&name)
            || volume(name).is_some_and(|v| v["persistentVolumeClaim"].is_object())
    };
    // The mount a path is on: the longest mountPath that contains it.
    let mount_of = |c: &'_ Value, path: &Path| -> Value {
        list(&c["volumeMounts"])
            .iter()
            .filter(|m| path.starts_with(text(&m["mountPath"])))
            .max_by_key(|m| text(&m["mountPath"]).len())
            .cloned()
            .unwrap_or_else(|| panic!("{src}: nothing mounted at {}", path.display()))
    };
    let writable = |m: &Value| m["readOnly"] != true;

    let key_dir = config.root_key_file.parent().expect("key directory");
    let key_mount = mount_of(container, key_dir);
    let key_volume = text(&key_mount["name"]);
    assert!(
        durable(key_volume),
        "{src}: the root key is not on a PersistentVolumeClaim"
    );
    assert!(
        writable(&key_mount),
        "{src}: rotation cannot rewrite the root key file"
    );
    let data_mount = mount_of(container, &config.data_dir);
    assert!(
        durable(text(&data_mount["name"])) && writable(&data_mount),
        "{src}: data"
    );
    assert_ne!(
        key_volume, data_mount["name"],
        "{src}: data snapshots would hold the key"
    );
    if let Some(ledger) = &config.vault.erasure_ledger {
        let ledger_mount = mount_of(container, ledger.parent().expect("ledger directory"));
        assert!(
            durable(text(&ledger_mount["name"])) && writable(&ledger_mount),
            "{src}: the erasure ledger is not on a writable PersistentVolumeClaim"
        );
        assert_ne!(
            ledger_mount["name"], data_mount["name"],
            "{src}: data snapshots would hold the erasure ledger"
        );
    }
    let sink = config.vault.audit_sink.as_ref().expect("audit mirror on");
    let sink_mount = mount_of(container, &sink.path);
    assert!(
        durable(text(&sink_mount["name"])) && writable(&sink_mount),
        "{src}: mirror"
    );

    // The init container prepares the file on the same volume, at the same path.
    let init = &list(&pod["spec"]["initContainers"])[0];
    assert_eq!(
        mount_of(init, key_dir),
        key_mount,
        "{src}: init container's key mount"
    );
    let script = list(&init["command"])
        .iter()
        .map(text)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(script.contains(&format!("key={}\n", config.root_key_file.display())));

    if let Some(claim) = volume(key_volume).map(|v| &v["persistentVolumeClaim"]["claimName"]) {
        // One claim for every node: it must be mountable by all of them.
        let pvc = r.one("PersistentVolumeClaim", text(claim));
        let modes = list(&pvc["spec"]["accessModes"]);
        assert!(
            modes.contains(&Value::from("ReadWriteMany")),
            "{src}: shared key volume"
        );
    }

    // Everything the config reads from /etc/pii-vault is projected there, read-only.
    let config_file = Path::new("/etc/pii-vault/pii-vault.toml");
    let config_mount = mount_of(container, config_file);
    assert_eq!(config_mount["readOnly"], true);
    let projected = &volume(text(&config_mount["name"])).expect("config volume")["projected"];
    let mut files = vec![
        config_file,
        &config.tls.cert,
        &config.tls.key,
        &config.tls.client_ca,
        &config.policy_file,
    ];
    if let pii_vault::config::Backend::Postgres {
        tls: pii_vault::storage::PgTls::VerifyFull { ca_file },
        ..
    } = &config.backend
    {
        files.push(ca_file);
    }
    let base = Path::new(text(&config_mount["mountPath"]));
    for file in files {
        let rel = file.strip_prefix(base).expect("under the config mount");
        let source = list(&projected["sources"])
            .iter()
            .find(|s| {
                let items = s
                    .as_object()
                    .and_then(|m| m.values().next())
                    .map(|k| &k["items"]);
                items.is_some_and(|i| list(i).iter().any(|i| i["path"] == text_of(rel)))
            })
            .unwrap_or_else(|| panic!("{src}: {} is not projected", file.display()));
        // A ConfigMap source must be in the render, with the key; Secrets are the operator's.
        if let Some(cm) = source.get("configMap") {
            let item = list(&cm["items"])
                .iter()
                .find(|i| i["path"] == text_of(rel));
            let key = text(&item.expect("item")["key"]);
            let map = r.one("ConfigMap", text(&cm["name"]));
            assert!(map["data"][key].is_string(), "{src}: ConfigMap lacks {key}");
        }
    }
}

fn text_of(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn check_render(r: &Render, config: &Config, several_nodes: bool) {
    let sts = r.one("StatefulSet", "pii-vault");
    let pod = &sts["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert!(selects(&sts["spec"]["selector"]["matchLabels"], pod_labels));
    assert_eq!(sts["spec"]["serviceName"], "pii-vault-headless");
    r.one("Service", "pii-vault-headless");
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas");
    if several_nodes {
        assert!(replicas > 1, "{}: one replica", r.source);
    } else {
        assert_eq!(replicas, 1, "{}: sled has one writer", r.source);
    }
    assert!(
        r.all("Secret").is_empty(),
        "{}: Secrets are the operator's",
        r.source
    );
    let container = list(&pod["spec"]["containers"])
        .iter()
        .find(|c| c["name"] == "pii-vault")
        .expect("the pii-vault container");
    check_ports(r, config, pod_labels, container);
    check_volumes(r, config, pod, container);
}

#[test]
fn rendered_manifests_are_valid_and_fit_together() {
    let Some(rendered) = deploy_check() else {
        return;
    };
    let objects = &rendered["objects"];
    let base = Render {
        source: "deploy/kubernetes",
        objects: list(&objects["deploy/kubernetes"]),
    };
    let cm = base.one("ConfigMap", "pii-vault-config");
    let config = config_of("rendered ConfigMap", text(&cm["data"]["pii-vault.toml"]));
    assert_eq!(config.root_key_file, configmap_config().root_key_file);
    check_render(&base, &config, false);

    let postgres = Render {
        source: "deploy/kubernetes-postgres",
        objects: list(&objects["deploy/kubernetes-postgres"]),
    };
    let cm = postgres.one("ConfigMap", "pii-vault-config");
    assert!(
        cm["data"]["pii-vault.toml"].is_null(),
        "the sled config is dropped"
    );
    let config = config_of(POSTGRES_CONFIG, &read(POSTGRES_CONFIG));
    check_render(&postgres, &config, true);
}
