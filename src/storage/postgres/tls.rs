//! TLS for the connections to PostgreSQL: how they are protected (`PgTls`), the session
//! settings derived from the connection string and that choice, and a rustls connector for
//! tokio-postgres.
//!
//! There is no mode that encrypts without checking whom it talks to (libpq's `require`): with
//! TLS on, the server certificate must chain to the configured CA and name the host of the
//! connection string, or the connection is not made. The handshake offers TLS 1.3 and 1.2
//! (PostgreSQL's own minimum since version 12) and rustls's ring provider.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::crypto::{certificate_hash, CertificateHash};
use crate::storage::{StoreError, StoreResult};

/// How the connections to PostgreSQL are protected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgTls {
    /// Plain TCP: every record, and the password of a password login, crosses the network
    /// readable. Only for a database reached over a link that is private by itself
    /// (loopback, a Unix socket, a tunnel); logged as a warning at every start.
    Disable,
    /// TLS, with the server certificate verified against the CA certificates in `ca_file`
    /// (PEM) and against the host named in the connection string (libpq's `verify-full`).
    VerifyFull { ca_file: PathBuf },
}

/// The connector of a session: none, or rustls.
#[derive(Clone)]
pub(super) enum Connector {
    Plain,
    Tls(MakeRustls),
}

/// The parsed connection string with the TLS choice applied, and the connector that goes
/// with it. The connection string may hold a password: tokio-postgres' `Debug` redacts it,
/// and nothing here prints the string or its parts.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) config: tokio_postgres::Config,
    pub(super) connector: Connector,
}

impl Session {
    /// Reads `url` and makes its TLS setting agree with `tls`, refusing a connection string
    /// that asks for the opposite (`sslmode=disable` with TLS on, `sslmode=require` with TLS
    /// off). `sslmode=prefer` is tokio-postgres' default, so it cannot be told from no
    /// `sslmode` at all: `tls` decides then.
    pub(super) fn new(url: &str, tls: &PgTls) -> StoreResult<Self> {
        let mut config: tokio_postgres::Config = url.parse().map_err(invalid_url)?;
        match tls {
            PgTls::Disable => {
                if config.get_ssl_mode() == SslMode::Require {
                    return Err(StoreError::Backend(
                        "the PostgreSQL connection string says sslmode=require, but TLS to \
                         PostgreSQL is off (storage.postgres_tls = \"disable\"); set \
                         storage.postgres_tls = \"verify-full\" with storage.postgres_ca_file"
                            .into(),
                    ));
                }
                config.ssl_mode(SslMode::Disable);
                Ok(Self {
                    config,
                    connector: Connector::Plain,
                })
            }
            PgTls::VerifyFull { ca_file } => {
                if config.get_ssl_mode() == SslMode::Disable {
                    return Err(StoreError::Backend(
                        "the PostgreSQL connection string says sslmode=disable, but TLS to \
                         PostgreSQL is required (storage.postgres_tls = \"verify-full\"); \
                         remove sslmode from the connection string"
                            .into(),
                    ));
                }
                if config
                    .get_hosts()
                    .iter()
                    .any(|h| matches!(h, Host::Unix(_)))
                {
                    return Err(StoreError::Backend(
                        "the PostgreSQL connection string names a Unix socket, which \
                         PostgreSQL does not serve over TLS; use a TCP host, or set \
                         storage.postgres_tls = \"disable\" for the local socket"
                            .into(),
                    ));
                }
                config.ssl_mode(SslMode::Require);
                Ok(Self {
                    config,
                    connector: Connector::Tls(MakeRustls::from_ca_file(ca_file)?),
                })
            }
        }
    }
}

/// A connection string tokio-postgres cannot read. Its text is never shown (it may hold a
/// password); only an invalid value's option name is, such as libpq's `sslmode=verify-full`,
/// which tokio-postgres does not know (`storage.postgres_tls` is the vault's way to say it).
fn invalid_url(e: tokio_postgres::Error) -> StoreError {
    let option = StdError::source(&e)
        .map(|cause| cause.to_string())
        .filter(|cause| cause.starts_with("invalid value for option"));
    let mut message = String::from("the PostgreSQL connection string is invalid");
    if let Some(option) = option {
        message.push_str(": ");
        message.push_str(&option);
    }
    if message.contains("`sslmode`") {
        message.push_str(
            " (it may be absent, disable, prefer or require; storage.postgres_tls decides \
             whether and how TLS is used)",
        );
    }
    StoreError::Backend(message)
}

/// Makes rustls connections for tokio-postgres, one per connection attempt. Exported with the
/// `testing` feature for the load generator's PostgreSQL peer (`benches/load/pgcrypto.rs`),
/// so that it connects the way the vault's own store does.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    /// A connector that trusts the CA certificates of the PEM file at `path`, and only them.
    pub fn from_ca_file(path: &Path) -> StoreResult<Self> {
        let problem = |what: String| {
            StoreError::Backend(format!(
                "PostgreSQL CA file {} (storage.postgres_ca_file): {what}",
                path.display()
            ))
        };
        let pem = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<CertificateDer<'static>>, _>>()
            .map_err(|e| problem(e.to_string()))?;
        if certs.is_empty() {
            return Err(problem("no PEM certificate in it".into()));
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| problem(e.to_string()))?;
        }
        let provider = crate::crypto::tls_provider();
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| problem(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // What PostgreSQL 17 asks for with direct TLS negotiation; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsError;

    /// `host` is the host of the connection string (also with `hostaddr`): the name the
    /// certificate must carry, a DNS name or an IP address.
    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, TlsError> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            TlsError(
                "the PostgreSQL host is not a DNS name or IP address a certificate can name".into(),
            )
        })?;
        Ok(RustlsConnect {
            name,
            connector: TlsConnector::from(self.config.clone()),
        })
    }
}

/// One TLS handshake to come.
pub struct RustlsConnect {
    name: ServerName<'static>,
    connector: TlsConnector,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            self.connector
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
                .map_err(|e| TlsError::from_handshake(&e))
        })
    }
}

/// Why a TLS connection to PostgreSQL was not made, in words an operator can act on.
#[derive(Debug)]
pub struct TlsError(String);

impl TlsError {
    /// A failed handshake: a refused certificate says so, and where to look.
    fn from_handshake(e: &io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(cert)) => Self(format!(
                "the PostgreSQL server's certificate is not trusted ({cert}); check that \
                 storage.postgres_ca_file holds the CA that signed it and that it names the \
                 host of the connection string"
            )),
            Some(tls) => Self(format!("TLS handshake with PostgreSQL failed: {tls}")),
            None => Self(format!("TLS handshake with PostgreSQL failed: {e}")),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for TlsError {}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream<S>(TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// `tls-server-end-point` (RFC 5929): the hash of the server certificate, which SCRAM
    /// authentication mixes in, so a password login cannot be relayed through another TLS
    /// connection. None for signature algorithms the RFC gives no hash for (Ed25519, PSS).
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|leaf| end_point_hash(leaf).map(|hash| certificate_hash(hash, leaf.as_ref())))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// The hash `tls-server-end-point` uses for a certificate: its signature's, SHA-256 for MD5
/// and SHA-1.
fn end_point_hash(der: &[u8]) -> Option<CertificateHash> {
    use x509_parser::oid_registry as oid;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let alg = &cert.signature_algorithm.algorithm;
    if [
        oid::OID_PKCS1_MD5WITHRSAENC,
        oid::OID_PKCS1_SHA1WITHRSA,
        oid::OID_PKCS1_SHA256WITHRSA,
        oid::OID_SIG_ECDSA_WITH_SHA256,
    ]
    .contains(alg)
    {
        Some(CertificateHash::Sha256)
    } else if [oid::OID_PKCS1_SHA384WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA384].contains(alg) {
        Some(CertificateHash::Sha384)
    } else if [oid::OID_PKCS1_SHA512WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA512].contains(alg) {
        Some(CertificateHash::Sha512)
    } else {
        None
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str, tls: &PgTls) -> String {
        match Session::new(url, tls) {
            Ok(_) => panic!("accepted: {tls:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn ca(path: &str) -> PgTls {
        PgTls::VerifyFull {
            ca_file: path.into(),
        }
    }

    const SECRET: &str = "password=hunter2";

    #[test]
    fn the_setting_decides_unless_the_connection_string_contradicts_it() {
        let plain = Session::new(&format!("host=db {SECRET}"), &PgTls::Disable).expect("plain");
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Disable);
        let prefer = Session::new(&format!("host=db sslmode=prefer {SECRET}"), &PgTls::Disable)
            .expect("prefer is the default");
        assert_eq!(prefer.config.get_ssl_mode(), SslMode::Disable);

        let err = refused(&format!("host=db sslmode=disable {SECRET}"), &ca("ca.pem"));
        assert!(err.contains("sslmode=disable"), "{err}");
        let err = refused(
            "postgresql://v:hunter2@db/vault?sslmode=require",
            &PgTls::Disable,
        );
        assert!(err.contains("sslmode=require"), "{err}");
        let err = refused(&format!("host=/run/postgresql {SECRET}"), &ca("ca.pem"));
        assert!(err.contains("Unix socket"), "{err}");
        let err = refused(
            &format!("host=db sslmode=verify-full {SECRET}"),
            &PgTls::Disable,
        );
        assert!(err.contains("`sslmode`"), "{err}");
        let err = refused(
            &format!("host=db {SECRET} sslmode=prefer"),
            &ca("/no/such/ca.pem"),
        );
        assert!(err.contains("/no/such/ca.pem"), "{err}");
        assert!(err.contains("storage.postgres_ca_file"), "{err}");
        let err = refused(&format!("host=db hunter2 {SECRET}"), &PgTls::Disable);
        assert!(err.contains("invalid"), "{err}");
        for url in ["host=db password=hunter2 sslmode=disable", "x hunter2"] {
            let err = refused(url, &ca("ca.pem"));
            assert!(!err.contains("hunter2"), "the password leaked: {err}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = match MakeRustls::from_ca_file(&path) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn channel_binding_hashes_follow_the_signature_algorithm() {
        let ca =
            crate::certs::Authority::generate("t", std::time::Duration::from_secs(60)).expect("CA");
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).expect("pem");
        // rcgen signs with ECDSA P-256 and SHA-256 by default.
        assert_eq!(end_point_hash(&pem.contents), Some(CertificateHash::Sha256));
        assert_eq!(end_point_hash(b"not DER"), None);
    }
}
