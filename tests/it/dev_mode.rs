//! Dev mode is explicit: only `serve --dev` makes dev certificates, an allow-all policy and
//! a root key beside the data, it warns at every start and marks its directory; a start
//! without `--dev` needs a configuration, real TLS paths and a directory that is not a dev
//! one; `--dev` refuses a directory that holds a vault it did not make.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::process::VaultProcess;
use crate::util::free_port;

/// `pii-vault serve ARGS` on a free loopback port, which must exit by itself.
fn serve(args: &[&str], data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pii-vault"))
        .arg("serve")
        .args(args)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run pii-vault serve")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn config_file(dir: &Path, tls: &str) -> String {
    let path = dir.join("vault.toml");
    std::fs::write(&path, tls).expect("write the config");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_serve_dev_makes_dev_keys_certificates_and_policy_and_it_says_so() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let data = dir.path().join("data");

    // No --dev, no configuration: refused before anything is created.
    let out = serve(&[], &data);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("--dev") && said.contains("deploy/pii-vault.example.toml"),
        "{said}"
    );
    assert!(!data.exists(), "a refused start creates nothing");

    // A configuration without TLS paths is not a real deployment's.
    let bare = config_file(dir.path(), "");
    let out = serve(&["--config", &bare], &data);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no TLS certificates are configured"),
        "{}",
        stderr(&out)
    );
    assert!(!data.join("tls").exists(), "no dev certificates made");
    assert!(
        !data.join("policy.toml").exists(),
        "no allow-all policy made"
    );

    // --dev: warns at every start and marks the directory.
    let log = dir.path().join("vault.log");
    for _ in 0..2 {
        let vault = VaultProcess::start(&data, &log, &[]).await;
        vault.terminate();
        assert!(vault.wait_exit(Duration::from_secs(30)).await.success());
    }
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        text.matches("DEVELOPMENT MODE").count(),
        4,
        "a warning log line and the banner, at each of two starts:\n{text}"
    );
    assert!(data.join(pii_vault::dev::DEV_MARK).exists());

    // The dev directory under a real configuration (TLS files that exist): refused.
    let tls = data.join("tls");
    let real = config_file(
        dir.path(),
        &format!(
            "[tls]\ncert = \"{0}/server.pem\"\nkey = \"{0}/server.key\"\nclient_ca = \"{0}/ca.pem\"\n",
            tls.display()
        ),
    );
    let out = serve(&["--config", &real], &data);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a dev data directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_dev_refuses_a_directory_holding_a_vault_it_did_not_make() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("store")).expect("a store directory");
    let out = serve(&["--dev"], &data);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not made by `serve --dev`"),
        "{}",
        stderr(&out)
    );
    assert!(
        !data.join("policy.toml").exists(),
        "no allow-all policy made"
    );
    assert!(!data.join("tls").exists(), "no dev certificates made");
    assert!(!data.join(pii_vault::dev::DEV_MARK).exists());
}

#[test]
fn get_without_a_purpose_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_pii-vault"))
        .args(["get", "acme", "alice"])
        .output()
        .expect("run pii-vault get");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--purpose"), "{}", stderr(&out));
}
