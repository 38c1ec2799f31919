//! Mutual TLS: a client without a certificate, or with one from another CA, never gets an
//! RPC through.

use std::time::Duration;

use pii_vault::certs::{Authority, LeafSpec, Usage};
use pii_vault::client::{connect, ClientCerts};
use pii_vault::proto::v1 as pb;
use pii_vault::proto::v1::tenant_service_client::TenantServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::util::TestVault;

async fn list_tenants(channel: Channel) -> Result<(), tonic::Status> {
    TenantServiceClient::new(channel)
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test]
async fn the_dev_client_certificate_works() {
    let vault = TestVault::start().await;
    list_tenants(vault.channel().await)
        .await
        .expect("authenticated call");
}

#[tokio::test]
async fn a_client_without_a_certificate_cannot_call() {
    let vault = TestVault::start().await;
    let ca = std::fs::read(vault.certs().ca).expect("ca");
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    let endpoint = Channel::from_shared(format!("https://{}", vault.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .timeout(Duration::from_secs(5));
    // Depending on timing the failure shows at connect or at the first call; either way
    // no RPC may succeed.
    if let Ok(channel) = endpoint.connect().await {
        let err = list_tenants(channel)
            .await
            .expect_err("call without a certificate");
        assert_ne!(err.code(), tonic::Code::Ok);
    }
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_cannot_call() {
    let vault = TestVault::start().await;
    let year = Duration::from_secs(365 * 24 * 3600);
    let rogue = Authority::generate("rogue CA", year).expect("ca");
    let cert = rogue
        .issue(&LeafSpec {
            common_name: "intruder".into(),
            names: vec![],
            uris: vec!["spiffe://pii-vault.local/dev-admin".into()],
            usage: Usage::Client,
            lifetime: year,
            not_before_offset_secs: 0,
        })
        .expect("leaf");
    let dir = tempfile::TempDir::new().expect("dir");
    let cert_path = dir.path().join("c.pem");
    let key_path = dir.path().join("c.key");
    std::fs::write(&cert_path, cert.cert_pem).expect("write");
    std::fs::write(&key_path, cert.key_pem).expect("write");
    let certs = ClientCerts {
        ca: vault.certs().ca,
        cert: cert_path,
        key: key_path,
    };
    if let Ok(channel) = connect(&vault.addr.to_string(), &certs).await {
        let err = list_tenants(channel)
            .await
            .expect_err("call with a rogue certificate");
        assert_ne!(err.code(), tonic::Code::Ok);
    }
}

/// `notAfter` of the first certificate in a PEM file, in Unix seconds.
fn pem_not_after(path: &std::path::Path) -> f64 {
    let pem = std::fs::read(path).expect("pem");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("a PEM certificate");
    let cert = pem.parse_x509().expect("a certificate");
    cert.validity().not_after.timestamp() as f64
}

/// Failed handshakes are counted by reason (a client without a certificate, one from
/// another CA, bytes that are not TLS, a connection closed at once, one that never speaks),
/// and the expiry of the certificates the server loaded is exposed.
#[tokio::test]
async fn handshake_failures_are_counted_by_reason_and_certificate_expiry_is_exposed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::metrics::{http_get, sample};

    let port = crate::util::free_port();
    let vault = TestVault::start_with(|raw| {
        raw.metrics.listen = Some(format!("127.0.0.1:{port}"));
        raw.limits.handshake_timeout_ms = Some(300);
    })
    .await;
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let failures =
        |reason: &str| format!(r#"piivault_tls_handshake_failures_total{{reason="{reason}"}}"#);
    let (_, before) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(sample(&before, &failures("no_client_cert")), 0.0);

    // No certificate.
    let ca = std::fs::read(vault.certs().ca).expect("ca");
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    let endpoint = Channel::from_shared(format!("https://{}", vault.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .timeout(Duration::from_secs(5));
    if let Ok(channel) = endpoint.connect().await {
        let _ = list_tenants(channel).await;
    }
    // A certificate of another CA.
    let year = Duration::from_secs(365 * 24 * 3600);
    let rogue = Authority::generate("rogue CA", year).expect("ca");
    let cert = rogue
        .issue(&LeafSpec {
            common_name: "intruder".into(),
            names: vec![],
            uris: vec!["spiffe://pii-vault.local/dev-admin".into()],
            usage: Usage::Client,
            lifetime: year,
            not_before_offset_secs: 0,
        })
        .expect("leaf");
    let dir = tempfile::TempDir::new().expect("dir");
    std::fs::write(dir.path().join("c.pem"), cert.cert_pem).expect("write");
    std::fs::write(dir.path().join("c.key"), cert.key_pem).expect("write");
    let certs = ClientCerts {
        ca: vault.certs().ca,
        cert: dir.path().join("c.pem"),
        key: dir.path().join("c.key"),
    };
    if let Ok(channel) = connect(&vault.addr.to_string(), &certs).await {
        let _ = list_tenants(channel).await;
    }
    // Plain HTTP to the TLS port: refused, and the connection closed.
    let mut plain = tokio::net::TcpStream::connect(vault.addr)
        .await
        .expect("tcp");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: vault\r\n\r\n")
        .await
        .expect("send");
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest).await;
    // Closed before saying anything.
    drop(
        tokio::net::TcpStream::connect(vault.addr)
            .await
            .expect("tcp"),
    );
    // Connected, then silent past the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(vault.addr)
        .await
        .expect("tcp");
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    let mut text = String::new();
    for _ in 0..100 {
        text = http_get(metrics_addr, "/metrics").await.1;
        if sample(&text, &failures("closed")) >= 1.0 && sample(&text, &failures("timeout")) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sample(&text, &failures("no_client_cert")) >= 1.0, "{text}");
    assert!(sample(&text, &failures("unknown_ca")) >= 1.0, "{text}");
    assert_eq!(sample(&text, &failures("malformed")), 1.0, "{text}");
    assert_eq!(sample(&text, &failures("closed")), 1.0, "{text}");
    assert_eq!(sample(&text, &failures("timeout")), 1.0, "{text}");
    for untouched in ["expired", "revoked", "protocol_version", "other"] {
        assert_eq!(
            sample(&text, &failures(untouched)),
            0.0,
            "{untouched}: {text}"
        );
    }
    // The dev client is still served.
    list_tenants(vault.channel().await)
        .await
        .expect("authenticated call");

    let tls_dir = vault.data_dir().join("tls");
    let expiry = |cert: &str| {
        format!(r#"piivault_tls_certificate_expiry_timestamp_seconds{{cert="{cert}"}}"#)
    };
    assert_eq!(
        sample(&text, &expiry("server")),
        pem_not_after(&tls_dir.join("server.pem"))
    );
    assert_eq!(
        sample(&text, &expiry("client_ca")),
        pem_not_after(&tls_dir.join("ca.pem"))
    );
    assert!(sample(&text, &expiry("server")) > 1.7e9, "{text}");
}
