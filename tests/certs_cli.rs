//! `pii-vault certs`, run as the real binary: a CA, a server certificate and a client
//! certificate issued by the command work together for mutual TLS, name the identities
//! asked for, keep their keys at mode 0600, and nothing is overwritten without --force.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pii_vault::authz::PeerIdentity;
use pii_vault::client::{connect, ClientCerts};
use pii_vault::config::{RawConfig, RawTls};
use pii_vault::dev::{bootstrap, StartMode};
use pii_vault::proto::v1 as pb;
use pii_vault::proto::v1::tenant_service_client::TenantServiceClient;
use tempfile::TempDir;
use tokio::net::TcpListener;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const SPIFFE_ID: &str = "spiffe://example.org/billing";
const DAY_SECS: i64 = 24 * 3600;

fn pii_vault(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pii-vault"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run pii-vault")
}

/// Runs the command, expects success, and checks that no key material was printed.
fn certs_ok(args: &[&str], cwd: &Path) -> String {
    let out = pii_vault(args, cwd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    assert!(
        !stdout.contains("PRIVATE KEY") && !stderr.contains("PRIVATE KEY"),
        "{args:?} printed a private key"
    );
    stdout
}

fn der_of(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("read certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM certificate");
    pem.contents
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .expect("SAN extension parses")
        .expect("SAN extension present")
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("uri:{u}"),
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[cfg(unix)]
fn assert_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "{} has mode {:o}",
        path.display(),
        mode
    );
}

#[cfg(not(unix))]
fn assert_private(path: &Path) {
    assert!(path.exists());
}

/// Issues a CA into `ca/`, a server certificate into `server/` and a client certificate
/// into `client/` under `root`.
fn issue_all(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let out = certs_ok(
        &[
            "certs", "ca", "--out", "ca", "--name", "Test CA", "--days", "30",
        ],
        root,
    );
    assert!(out.contains("ca.pem") && out.contains("ca.key"), "{out}");
    let out = certs_ok(
        &[
            "certs",
            "server",
            "--ca-dir",
            "ca",
            "--out",
            "server",
            "--name",
            "vault",
            "--san",
            "localhost",
            "--san",
            "127.0.0.1",
            "--days",
            "10",
        ],
        root,
    );
    assert!(
        out.contains("server.pem") && out.contains("server.key"),
        "{out}"
    );
    let out = certs_ok(
        &[
            "certs", "client", "--ca-dir", "ca", "--out", "client", "--name", "billing", "--uri",
            SPIFFE_ID, "--days", "7",
        ],
        root,
    );
    assert!(
        out.contains("client.pem") && out.contains("client.key"),
        "{out}"
    );
    assert!(out.contains(SPIFFE_ID), "prints the caller identity: {out}");
    (root.join("ca"), root.join("server"), root.join("client"))
}

#[tokio::test]
async fn issued_certificates_name_their_identities_and_work_for_mutual_tls() {
    let tmp = TempDir::new().expect("temp dir");
    let (ca, server, client) = issue_all(tmp.path());
    for file in [
        ca.join("ca.pem"),
        server.join("server.pem"),
        client.join("client.pem"),
    ] {
        assert!(file.is_file(), "{} missing", file.display());
    }
    for key in [
        ca.join("ca.key"),
        server.join("server.key"),
        client.join("client.key"),
    ] {
        assert_private(&key);
    }

    // The client certificate: the URI SAN asked for, 7 days of validity (plus the
    // 5-minute clock-skew allowance before now), and the identity the vault will see.
    let der = der_of(&client.join("client.pem"));
    let (_, cert) = X509Certificate::from_der(&der).expect("client certificate parses");
    assert_eq!(sans(&cert), vec![format!("uri:{SPIFFE_ID}")]);
    let validity = cert.validity();
    let secs = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert!(
        (7 * DAY_SECS..=7 * DAY_SECS + 600).contains(&secs),
        "client certificate valid for {secs} s"
    );
    let identity = PeerIdentity::from_certificate(&der).expect("names an identity");
    assert_eq!(identity.as_str(), format!("uri:{SPIFFE_ID}"), "typed");

    // The server certificate names both the DNS name and the IP address.
    let der = der_of(&server.join("server.pem"));
    let (_, cert) = X509Certificate::from_der(&der).expect("server certificate parses");
    let names = sans(&cert);
    assert!(names.contains(&"dns:localhost".to_owned()), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("ip:")), "{names:?}");

    // And they work: a vault serving the server certificate and trusting the CA accepts
    // the client certificate, reached by IP and by name.
    let data = tmp.path().join("data");
    let raw = RawConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data),
        tls: RawTls {
            cert: Some(server.join("server.pem")),
            key: Some(server.join("server.key")),
            client_ca: Some(ca.join("ca.pem")),
            ..RawTls::default()
        },
        ..RawConfig::default()
    };
    let config = raw.validate().expect("config validates");
    assert!(!config.dev_tls);
    bootstrap(&config, StartMode::Dev).expect("bootstrap");
    // Outside dev mode nothing writes a policy: without one the vault refuses to start.
    std::fs::write(
        &config.policy_file,
        format!(
            "[[rules]]\nname = \"ops\"\nwho = [\"uri:{SPIFFE_ID}\"]\nactions = [\"tenant_admin\"]\n"
        ),
    )
    .expect("policy");
    let listener = TcpListener::bind(config.listen).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(pii_vault::server::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let certs = ClientCerts {
        ca: ca.join("ca.pem"),
        cert: client.join("client.pem"),
        key: client.join("client.key"),
    };
    for host in ["127.0.0.1", "localhost"] {
        let channel = connect(&format!("{host}:{port}"), &certs)
            .await
            .expect("connect with the issued client certificate");
        TenantServiceClient::new(channel)
            .list_tenants(pb::ListTenantsRequest::default())
            .await
            .expect("an authenticated call succeeds");
    }
    let _ = stop.send(());
    task.await
        .expect("server task")
        .expect("server stopped cleanly");
}

#[test]
fn a_second_ca_in_the_same_directory_needs_force() {
    let tmp = TempDir::new().expect("temp dir");
    let dir = tmp.path();
    certs_ok(&["certs", "ca", "--out", "ca"], dir);
    let first = std::fs::read(dir.join("ca/ca.key")).expect("key");

    let out = pii_vault(&["certs", "ca", "--out", "ca"], dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already exist") && stderr.contains("--force"),
        "unclear refusal: {stderr}"
    );
    assert!(
        stderr.contains("ca.pem") && stderr.contains("ca.key"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.join("ca/ca.key")).expect("key"), first);

    // --force replaces both, and a key file that had a looser mode comes back 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("ca/ca.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
    }
    certs_ok(&["certs", "ca", "--out", "ca", "--force"], dir);
    assert_ne!(std::fs::read(dir.join("ca/ca.key")).expect("key"), first);
    assert_private(&dir.join("ca/ca.key"));
}

#[test]
fn leaves_are_refused_when_they_cannot_be_right() {
    let tmp = TempDir::new().expect("temp dir");
    let dir = tmp.path();
    let refused = |args: &[&str], expected: &str| {
        let out = pii_vault(args, dir);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    refused(
        &[
            "certs", "client", "--ca-dir", "ca", "--out", "c", "--name", "x",
        ],
        "certs ca",
    );
    certs_ok(&["certs", "ca", "--out", "ca", "--days", "5"], dir);
    refused(
        &[
            "certs",
            "server",
            "--ca-dir",
            "ca",
            "--out",
            "s",
            "--name",
            "v",
            "--san",
            "localhost",
            "--days",
            "30",
        ],
        "outlive",
    );
    refused(
        &[
            "certs",
            "client",
            "--ca-dir",
            "ca",
            "--out",
            "c",
            "--name",
            "x",
            "--uri",
            "not a uri",
        ],
        "absolute URI",
    );
    refused(
        &["certs", "ca", "--out", "other", "--days", "0"],
        "between 1 and",
    );
    assert!(!dir.join("s").exists() && !dir.join("c").exists() && !dir.join("other").exists());
}
