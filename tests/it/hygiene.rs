//! Key and file hygiene: root rotation refuses a key directory others can write and a
//! planted `root.tmp` (changing nothing), the data directory and the store are created
//! 0700 whatever the umask, and a revoked client certificate is refused once the CRL is
//! reloaded.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use std::time::Duration;

use pb::key_service_client::KeyServiceClient;
use pii_vault::certs::{Authority, DEV_CLIENT_ID};
use pii_vault::client::connect;
use pii_vault::keyring::RootKeys;
use pii_vault::proto::v1 as pb;
use tempfile::TempDir;
use tonic::Code;

use crate::util::{assert_reason, channel_as, client_for, test_config, TestVault};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Rotates the root key and expects FAILED_PRECONDITION naming `problem` and `path`, with
/// the key file unchanged.
async fn rotation_refuses(vault: &TestVault, path: &Path, problem: &str) {
    let before = std::fs::read(&vault.config.root_key_file).expect("root key file");
    let mut keys = KeyServiceClient::new(vault.channel().await);
    let status = keys
        .rotate_root_key(pb::RotateRootKeyRequest {})
        .await
        .expect_err("rotation must refuse");
    assert_reason(&status, Code::FailedPrecondition, "KEY_OPERATION_BLOCKED");
    let message = status.message();
    assert!(message.contains(problem), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(!message.contains("key = "), "{message}");
    assert_eq!(
        std::fs::read(&vault.config.root_key_file).expect("root key file"),
        before,
        "nothing may change"
    );
    let keys = RootKeys::load(&vault.config.root_key_file).expect("still loads");
    assert_eq!(keys.version_numbers(), vec![1]);
}

#[tokio::test]
async fn a_planted_root_tmp_hard_link_makes_rotation_refuse() {
    let vault = TestVault::start().await;
    let dir = vault.data_dir();
    // The attack on the old fixed name: a hard link from root.tmp to a file the attacker
    // can read, which a rewrite through root.tmp would have filled with every key.
    let bait = dir.join("bait");
    std::fs::write(&bait, b"").expect("bait");
    let planted = vault.config.root_key_file.with_extension("tmp");
    std::fs::hard_link(&bait, &planted).expect("plant the link");
    rotation_refuses(&vault, &planted, "remove it").await;
    assert_eq!(
        std::fs::read(&bait).expect("bait"),
        b"",
        "no key reached the link"
    );

    // Once removed, rotation goes through.
    std::fs::remove_file(&planted).expect("remove");
    KeyServiceClient::new(vault.channel().await)
        .rotate_root_key(pb::RotateRootKeyRequest {})
        .await
        .expect("rotation after the fix");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".new") || n.ends_with(".tmp")),
        "no temporary file is left: {names:?}"
    );
    assert_eq!(mode(&vault.config.root_key_file), 0o600);
}

#[tokio::test]
async fn a_group_writable_key_directory_makes_rotation_refuse() {
    let vault = TestVault::start().await;
    let dir = vault.data_dir();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).expect("chmod");
    rotation_refuses(&vault, &dir, "group and others must not be able to write").await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

#[tokio::test]
async fn a_hard_linked_root_key_file_makes_rotation_refuse() {
    let vault = TestVault::start().await;
    let link = vault.data_dir().join("copy-of-root");
    std::fs::hard_link(&vault.config.root_key_file, &link).expect("link");
    rotation_refuses(&vault, &vault.config.root_key_file, "other hard links").await;
}

#[tokio::test]
async fn the_data_directory_and_store_are_created_0700() {
    let parent = TempDir::new().expect("temp dir");
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = parent.path().join("vault-data");
    let config = test_config(&data, |_| {});
    let vault = TestVault::start_on(parent, config, None).await;
    let _ = vault.tenants().await;
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&data.join("store")), 0o700, "store directory");
    assert_eq!(mode(&vault.config.root_key_file), 0o600, "root key file");
}

/// The DER of the certificate in a PEM file.
fn der_of(pem_file: &Path) -> Vec<u8> {
    let pem = std::fs::read(pem_file).expect("certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM certificate");
    pem.contents
}

/// Postmortem: client certificates were never checked against a revocation list. With
/// `tls.client_crl`, a certificate revoked in a list reloaded on SIGHUP is refused at the
/// handshake, even one that names an identity with every grant; others are still served.
#[tokio::test]
async fn a_revoked_client_certificate_is_refused_once_the_crl_is_reloaded() {
    let dir = TempDir::new().expect("temp dir");
    let crl = dir.path().join("client-crl.pem");
    let config = test_config(dir.path(), |raw| raw.tls.client_crl = Some(crl.clone()));
    // The dev CA exists now (bootstrap): a first list revoking nothing.
    let tls = dir.path().join("tls");
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).expect("dev CA file");
    let ca = Authority::from_pem(&read("ca.pem"), &read("ca.key")).expect("dev CA");
    let day = Duration::from_secs(86_400);
    std::fs::write(&crl, ca.revocation_list(&[], 1, day).expect("CRL")).expect("write CRL");
    let vault = TestVault::start_on(dir, config, None).await;

    let stolen = client_for(&vault, "stolen", DEV_CLIENT_ID);
    let list = |c: tonic::transport::Channel| async move {
        pb::tenant_service_client::TenantServiceClient::new(c)
            .list_tenants(pb::ListTenantsRequest::default())
            .await
    };
    list(channel_as(&vault, &stolen).await)
        .await
        .expect("served before its revocation");

    let listed = ca
        .revocation_list(&[&der_of(&stolen.cert)], 2, day)
        .expect("CRL");
    std::fs::write(&crl, listed).expect("write CRL");
    // SIGHUP to this test process: the vault's handler is installed (it started above),
    // so the signal reloads its TLS configuration and does not end the process.
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = match connect(&vault.addr.to_string(), &stolen).await {
            Err(_) => true,
            Ok(c) => list(c).await.is_err(),
        };
        if refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still served after the reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    list(vault.channel().await)
        .await
        .expect("a certificate not in the list is still served");
}
