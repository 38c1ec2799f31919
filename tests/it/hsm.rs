//! The root key in a PKCS#11 token (SoftHSM2), through the real binary: the vault creates
//! its first root key version in the token, rotates and retires versions there, and no key
//! file, no PIN and no key line ever reaches the data directory or the logs; a start with a
//! wrong PIN, a missing module or a token without the data directory's root key version is
//! refused, saying which.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pb::key_service_client::KeyServiceClient;
use pii_vault::keyring::{PinSource, Pkcs11Settings, RootSource};
use pii_vault::proto::v1 as pb;
use tempfile::TempDir;

use crate::process::VaultProcess;
use crate::softhsm::{self, TestToken};
use crate::util::{bytes_occur_below, files_below, text};

/// A configuration file naming the token (and the PIN file or module given).
fn config_file(dir: &Path, name: &str, module: &Path, label: &str, pin_file: &Path) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "[keys]\nroot = {{ kind = \"pkcs11\", module = \"{}\", token_label = \"{label}\", \
         pin_file = \"{}\" }}\n",
        module.display(),
        pin_file.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn pin_file(token: &TestToken) -> PathBuf {
    match &token.settings.pin {
        PinSource::File(f) => f.clone(),
        PinSource::Env(_) => unreachable!("the harness writes PIN files"),
    }
}

fn token_label(settings: &Pkcs11Settings) -> String {
    match &settings.token {
        pii_vault::keyring::TokenSelector::Label(l) => l.clone(),
        pii_vault::keyring::TokenSelector::Slot(_) => unreachable!("the harness names tokens"),
    }
}

/// Starts `serve --dev --config CONFIG` on `data` and waits for it to exit by itself.
async fn refused_start(data: &Path, log: &Path, config: &Path) -> String {
    let mut vault = VaultProcess::spawn(
        data,
        log,
        &["--config", &config.display().to_string()],
        "debug",
    );
    match vault.ready_or_exit(Duration::from_secs(30)).await {
        Err(Some(status)) => assert!(!status.success(), "{status}"),
        Ok(()) => panic!("the vault started:\n{}", vault.log_text()),
        Err(None) => panic!(
            "the vault neither started nor exited:\n{}",
            vault.log_text()
        ),
    }
    vault.log_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_root_key_in_a_token_no_key_and_no_pin_reach_the_data_directory_or_the_logs() {
    let Some(token) = softhsm::token("hsm::no_key_in_files") else {
        return;
    };
    let dir = TempDir::new().expect("dir");
    let data = dir.path().join("data");
    let log = dir.path().join("vault.log");
    let config = config_file(
        dir.path(),
        "vault.toml",
        &token.settings.module,
        &token_label(&token.settings),
        &pin_file(&token),
    );
    let vault =
        VaultProcess::start(&data, &log, &["--config", &config.display().to_string()]).await;
    let channel = vault.channel().await;
    pb::tenant_service_client::TenantServiceClient::new(channel.clone())
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .expect("tenant");
    let mut records = pb::record_service_client::RecordServiceClient::new(channel.clone());
    crate::util::put(
        &mut records,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "alice@example.com")],
    )
    .await
    .expect("put");
    let mut keys = KeyServiceClient::new(channel.clone());
    let rotated = keys
        .rotate_root_key(pb::RotateRootKeyRequest {})
        .await
        .expect("rotate the root key in the token")
        .into_inner();
    assert_eq!(
        (rotated.current_version, rotated.retired_versions),
        (2, vec![1])
    );
    let read = crate::util::get(&mut records, "acme", "alice", &[])
        .await
        .expect("reads after the rotation");
    assert_eq!(crate::util::text_of(&read[0]), "alice@example.com");
    drop((records, keys, channel));
    vault.terminate();
    assert!(vault.wait_exit(Duration::from_secs(30)).await.success());

    // The token holds the versions, the retired one marked there.
    let root = RootSource::Pkcs11(token.settings.clone())
        .load()
        .expect("the token's versions");
    assert_eq!(root.version_numbers(), [1, 2]);
    assert_eq!(root.retired().len(), 1);
    assert!(
        root.current().secret_file_key().is_none(),
        "no key bytes here"
    );

    let files = files_below(&data);
    assert!(!files.is_empty());
    assert!(
        !files
            .iter()
            .any(|f| f.file_name().is_some_and(|n| n == "root.key")),
        "no root key file in the data directory: {files:?}"
    );
    for needle in [token.pin.as_bytes(), b"pii-vault root key file".as_slice()] {
        assert!(
            !bytes_occur_below(&data, needle),
            "{:?} found in the data directory",
            String::from_utf8_lossy(needle)
        );
    }
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(
        logged.contains("created root key version 1 in the token"),
        "{logged}"
    );
    assert!(!logged.contains(&token.pin), "the PIN is in the log");
    assert!(!logged.contains("key = \""), "a key line is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_a_wrong_pin_a_missing_module_or_another_token_is_refused_saying_which() {
    let (Some(token), Some(other)) = (
        softhsm::token("hsm::refusals"),
        softhsm::token("hsm::refusals (other)"),
    ) else {
        return;
    };
    let dir = TempDir::new().expect("dir");
    let data = dir.path().join("data");
    let log = dir.path().join("vault.log");
    let label = token_label(&token.settings);
    let good = config_file(
        dir.path(),
        "good.toml",
        &token.settings.module,
        &label,
        &pin_file(&token),
    );
    let vault = VaultProcess::start(&data, &log, &["--config", &good.display().to_string()]).await;
    vault.terminate();
    assert!(vault.wait_exit(Duration::from_secs(30)).await.success());

    let wrong_pin = dir.path().join("wrong.pin");
    softhsm::write_private(&wrong_pin, "wrong-pin-7Hq2xZ");
    let cases = [
        (
            config_file(
                dir.path(),
                "pin.toml",
                &token.settings.module,
                &label,
                &wrong_pin,
            ),
            "refused the PIN",
        ),
        (
            config_file(
                dir.path(),
                "module.toml",
                Path::new("/nonexistent/libpkcs11.so"),
                &label,
                &pin_file(&token),
            ),
            "/nonexistent/libpkcs11.so: no such file",
        ),
        (
            config_file(
                dir.path(),
                "other.toml",
                &other.settings.module,
                &token_label(&other.settings),
                &pin_file(&other),
            ),
            "holds no root key version labelled pii-vault-root-v*, but this data directory \
             is bound to root key version 1",
        ),
    ];
    for (config, says) in cases {
        let case_log = dir.path().join(format!(
            "{}.log",
            config
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("case")
        ));
        let logged = refused_start(&data, &case_log, &config).await;
        assert!(logged.contains(says), "expected {says:?} in:\n{logged}");
        for pin in ["wrong-pin-7Hq2xZ", token.pin.as_str(), other.pin.as_str()] {
            assert!(!logged.contains(pin), "a PIN is in the log:\n{logged}");
        }
    }
    // The refused starts changed nothing: the right token still opens the directory.
    let vault = VaultProcess::start(&data, &log, &["--config", &good.display().to_string()]).await;
    vault.terminate();
    assert!(vault.wait_exit(Duration::from_secs(30)).await.success());
    let other_root = RootSource::Pkcs11(other.settings.clone()).load();
    assert!(
        other_root.is_err(),
        "no version was made in the other token"
    );
}
