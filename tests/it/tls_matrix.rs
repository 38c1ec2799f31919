//! The TLS negative matrix: every way of arriving without acceptable credentials fails in
//! the handshake (or, since a TLS 1.3 client finishes before the server has judged its
//! certificate, at the latest on the first call), no request reaches a handler (the audit
//! log gains no event), and the server logs "TLS handshake failed" with the peer address.
//!
//! Every client goes through the same connector, which records the local address of each
//! TCP connection it opens, so a log line can be tied to the attempt that caused it. A
//! control row with the valid dev certificate proves that connector and the event count.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use pii_vault::certs::{Authority, IssuedCert, LeafSpec, Usage, DEV_CLIENT_ID};
use pii_vault::proto::v1 as pb;
use pii_vault::proto::v1::record_service_client::RecordServiceClient;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::util::{create_tenant, put, request_events, text, TestVault};

const DAY: Duration = Duration::from_secs(86_400);
const LOGGED: &str = "TLS handshake failed";
static ONLY_TLS13: [&SupportedProtocolVersion; 1] = [&TLS13];
static ONLY_TLS12: [&SupportedProtocolVersion; 1] = [&TLS12];

/// What the server logs while the test runs.
#[derive(Clone, Default)]
struct LogLines(Arc<Mutex<Vec<u8>>>);

impl Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogLines {
    /// Routes this thread's tracing events here until the guard drops. The test runs on a
    /// current-thread runtime, so the server's accept and handshake tasks log through it.
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let lines = Self::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (lines, tracing::subscriber::set_default(subscriber))
    }

    /// The handshake failure line naming one of `peers`. The server may log it a moment
    /// after the client saw the failure, so this waits a little for it.
    async fn handshake_failure(&self, peers: &[SocketAddr]) -> Option<String> {
        let give_up = Instant::now() + Duration::from_secs(3);
        loop {
            let text = String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned();
            let line = text.lines().find(|line| {
                line.contains(LOGGED)
                    && peers.iter().any(|p| line.contains(&format!("remote={p} ")))
            });
            if let Some(line) = line {
                return Some(line.to_owned());
            }
            if Instant::now() > give_up {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How a matrix client talks to the vault's port.
enum Client {
    /// TLS limited to `versions`, presenting `cert` (or no certificate).
    Tls {
        versions: &'static [&'static SupportedProtocolVersion],
        cert: Option<IssuedCert>,
    },
    /// Plain HTTP/2 (h2c): the HTTP/2 preface where a TLS ClientHello belongs.
    Plaintext,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A rustls client that trusts the vault's CA and speaks only `versions`.
fn client_config(
    vault: &TestVault, versions: &[&'static SupportedProtocolVersion], cert: Option<&IssuedCert>,
) -> ClientConfig {
    let ca = std::fs::read(vault.certs().ca).expect("vault CA");
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some(cert) => {
            let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
                .expect("key PEM")
                .expect("a private key");
            builder
                .with_client_auth_cert(vec![CertificateDer::from(cert.cert_der.clone())], key)
                .expect("client certificate")
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// Opens a channel to the vault through `client`, recording in `peers` the local address
/// of every TCP connection made for it (the address the server logs).
async fn open(
    vault: &TestVault, client: &Client, peers: Arc<Mutex<Vec<SocketAddr>>>,
) -> Result<Channel, tonic::transport::Error> {
    let tls = match client {
        Client::Tls { versions, cert } => Some(TlsConnector::from(Arc::new(client_config(
            vault,
            versions,
            cert.as_ref(),
        )))),
        Client::Plaintext => None,
    };
    let addr = vault.addr;
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, peers) = (tls.clone(), peers.clone());
        async move {
            let tcp = TcpStream::connect(addr).await?;
            peers.lock().expect("peers").push(tcp.local_addr()?);
            let stream: Box<dyn Stream> = match tls {
                Some(tls) => {
                    let name = ServerName::try_from("localhost").expect("server name");
                    Box::new(tls.connect(name, tcp).await?)
                }
                None => Box::new(tcp),
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
}

/// Reads the seed subject through `channel`: the request a refused client must never get
/// answered.
async fn read_seed(channel: Channel) -> Result<usize, tonic::Status> {
    RecordServiceClient::new(channel)
        .get_fields(pb::GetFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: "seed".into(),
            field_names: vec![],
            purpose: "support".into(),
        })
        .await
        .map(|r| r.into_inner().fields.len())
}

/// How one attempt ended.
enum Attempt {
    /// The channel never opened: the handshake failed.
    RefusedAtHandshake(String),
    /// The channel opened (the client finished its side of TLS 1.3) but the call failed.
    RefusedAtCall(tonic::Status),
    /// The call was answered.
    Answered(usize),
}

async fn attempt(
    vault: &TestVault, client: &Client, peers: Arc<Mutex<Vec<SocketAddr>>>,
) -> Attempt {
    match open(vault, client, peers).await {
        Err(e) => Attempt::RefusedAtHandshake(innermost(&e)),
        Ok(channel) => match read_seed(channel).await {
            Ok(n) => Attempt::Answered(n),
            Err(status) => Attempt::RefusedAtCall(status),
        },
    }
}

/// The innermost cause of an error: what the TLS layer said.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// A client certificate for the dev admin identity (the most privileged caller) from `ca`,
/// with its validity window moved by `offset_secs`.
fn admin_cert(ca: &Authority, usage: Usage, offset_secs: i64, lifetime: Duration) -> IssuedCert {
    ca.issue(&LeafSpec {
        common_name: "dev-admin".into(),
        names: vec![],
        uris: vec![DEV_CLIENT_ID.into()],
        usage,
        lifetime,
        not_before_offset_secs: offset_secs,
    })
    .expect("issue certificate")
}

/// The part of a log line after `error=`: the reason the server gave.
fn reason(line: &str) -> &str {
    line.split_once("error=").map_or("", |(_, r)| r.trim())
}

#[tokio::test(flavor = "current_thread")]
async fn every_bad_client_is_refused_before_any_call_and_logged() {
    let (logs, _guard) = LogLines::capture();
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    put(
        &mut vault.records().await,
        "acme",
        "seed",
        vec![text("email", pb::Category::Account, "seed@example.com")],
    )
    .await
    .expect("seed");

    let pki = vault.config.dev_pki();
    let vault_ca = Authority::from_pem(
        &std::fs::read_to_string(&pki.ca_cert).expect("CA cert"),
        &std::fs::read_to_string(&pki.ca_key).expect("CA key"),
    )
    .expect("the vault's CA");
    let rogue_ca = Authority::generate("rogue CA", 365 * DAY).expect("rogue CA");
    let day = DAY.as_secs() as i64;
    let dev_cert = IssuedCert {
        cert_pem: std::fs::read_to_string(&pki.client_cert).expect("dev cert"),
        cert_der: rustls_pemfile::certs(
            &mut std::fs::read(&pki.client_cert)
                .expect("dev cert")
                .as_slice(),
        )
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec(),
        key_pem: std::fs::read_to_string(&pki.client_key).expect("dev key"),
    };
    let tls13 = |cert| Client::Tls {
        versions: &ONLY_TLS13,
        cert,
    };
    let cases: Vec<(&str, Client)> = vec![
        ("no client certificate", tls13(None)),
        (
            "certificate from another CA",
            tls13(Some(admin_cert(&rogue_ca, Usage::Client, 0, 365 * DAY))),
        ),
        (
            "expired certificate",
            tls13(Some(admin_cert(&vault_ca, Usage::Client, -2 * day, DAY))),
        ),
        (
            "not yet valid certificate",
            tls13(Some(admin_cert(&vault_ca, Usage::Client, day, DAY))),
        ),
        (
            "server-auth-only certificate (wrong key usage)",
            tls13(Some(admin_cert(&vault_ca, Usage::Server, 0, 365 * DAY))),
        ),
        (
            "TLS 1.2-only client (valid certificate)",
            Client::Tls {
                versions: &ONLY_TLS12,
                cert: Some(admin_cert(&vault_ca, Usage::Client, 0, 365 * DAY)),
            },
        ),
        ("plaintext HTTP/2 (h2c)", Client::Plaintext),
    ];

    // Control: the valid dev certificate through the same connector is answered, and its
    // read raises the event count by exactly one. Without this row a broken connector or
    // count would make every refusal below look right.
    let before = request_events(&vault).await;
    let peers = Arc::new(Mutex::new(Vec::new()));
    match attempt(&vault, &tls13(Some(dev_cert)), peers).await {
        Attempt::Answered(1) => {}
        Attempt::Answered(n) => panic!("control: read {n} fields, expected 1"),
        Attempt::RefusedAtHandshake(e) => panic!("control refused at handshake: {e}"),
        Attempt::RefusedAtCall(s) => panic!("control refused at call: {s:?}"),
    }
    assert_eq!(
        request_events(&vault).await,
        before + 1,
        "control: one read, one event"
    );

    let mut rows = Vec::new();
    for (case, client) in &cases {
        let before = request_events(&vault).await;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (refused_at, client_saw) = match attempt(&vault, client, peers.clone()).await {
            Attempt::RefusedAtHandshake(e) => ("handshake", e),
            Attempt::RefusedAtCall(s) => ("first call", format!("{:?}: {}", s.code(), s.message())),
            Attempt::Answered(n) => panic!("{case}: the vault answered with {n} fields"),
        };
        let after = request_events(&vault).await;
        let peers = peers.lock().expect("peers").clone();
        assert!(!peers.is_empty(), "{case}: no connection was made");
        let line = logs.handshake_failure(&peers).await;
        rows.push((
            *case,
            refused_at,
            client_saw,
            line.as_deref()
                .map(reason)
                .unwrap_or("NOT LOGGED")
                .to_owned(),
            before,
            after,
        ));
    }

    println!("\nTLS negative matrix (control: dev certificate answered, 1 event)");
    println!(
        "| case | refused at | client saw | server log reason | request events before -> after |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (case, at, saw, reason, before, after) in &rows {
        println!("| {case} | {at} | {saw} | {reason} | {before} -> {after} |");
    }
    let expected = rows
        .iter()
        .filter(|(_, _, _, reason, before, after)| reason != "NOT LOGGED" && before == after)
        .count();
    println!(
        "cases run: {}, refused without a call and logged: {expected}\n",
        rows.len()
    );
    for (case, _, _, reason, before, after) in &rows {
        assert_eq!(before, after, "{case}: a request reached a handler");
        assert_ne!(
            reason, "NOT LOGGED",
            "{case}: no \"{LOGGED}\" line for its peer"
        );
    }
    assert_eq!(expected, cases.len());
    vault.stop().await;
}
