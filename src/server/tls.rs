//! Mutual TLS: the rustls server configuration and the stream of verified connections.
//!
//! Only TLS 1.3 is offered, and a client certificate chaining to the configured CA is
//! required: rustls rejects the handshake otherwise, so no unauthenticated byte reaches
//! a handler. Failed handshakes are logged with the peer address and the reason, and
//! counted by a small fixed set of reasons (`failure_reason`). The expiry of every
//! certificate loaded is exposed in the metrics, at start and after each reload.
//!
//! The configuration is reloadable (`ReloadableTls`, read again on SIGHUP) and the number
//! of open connections is capped.
//!
//! Every connection can be cut: once the shutdown grace period is over, its reads and
//! writes fail, so the connection ends even if a call on it never finishes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use crate::authz::{Caller, IdentityError, PeerIdentity};
use crate::config::TlsPaths;
use crate::metrics::{CertRole, Metrics, TlsFailure};

use super::ServerError;

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let pem = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "{}: no certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn private_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| ServerError::Tls(format!("{}: no private key in it", path.display())))
}

/// The revocation lists in a PEM file (at least one).
fn crls(path: &std::path::Path) -> Result<Vec<CertificateRevocationListDer<'static>>, ServerError> {
    let pem = read_pem(path)?;
    let crls = rustls_pemfile::crls(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))?;
    if crls.is_empty() {
        return Err(ServerError::Tls(format!(
            "{}: no certificate revocation list in it",
            path.display()
        )));
    }
    Ok(crls)
}

/// The server's rustls configuration: TLS 1.3, client certificates required (and checked
/// against the revocation lists of `tls.client_crl`, if set), ALPN h2.
pub fn server_config(paths: &TlsPaths) -> Result<rustls::ServerConfig, ServerError> {
    let provider = crate::crypto::tls_provider();
    let mut roots = RootCertStore::empty();
    for ca in certs(&paths.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| ServerError::Tls(format!("{}: {e}", paths.client_ca.display())))?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = &paths.client_crl {
        builder = builder.with_crls(crls(crl)?);
    }
    let verifier = builder
        .build()
        .map_err(|e| ServerError::Tls(format!("client CA or CRL: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&paths.cert)?, private_key(&paths.key)?)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", paths.cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server's TLS configuration, read again on SIGHUP (new revocation lists, a renewed
/// certificate); each accepted connection is handshaken with the configuration current
/// then, so a reload never touches a connection already open.
pub struct ReloadableTls {
    paths: TlsPaths,
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// Where the certificates' expiry goes, each time they are read.
    metrics: Metrics,
}

impl ReloadableTls {
    pub fn load(paths: &TlsPaths, metrics: Metrics) -> Result<Arc<Self>, ServerError> {
        let tls = Self {
            current: RwLock::new(Arc::new(server_config(paths)?)),
            paths: paths.clone(),
            metrics,
        };
        tls.record_expiry();
        Ok(Arc::new(tls))
    }

    /// Reads the files again; on an error the previous configuration stays in force.
    pub fn reload(&self) -> Result<(), ServerError> {
        let fresh = Arc::new(server_config(&self.paths)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.record_expiry();
        Ok(())
    }

    /// Exposes when the certificates just loaded expire: the server's own, the earliest
    /// CA of its chain (if the file has one), the earliest client CA.
    fn record_expiry(&self) {
        // Read moments ago by `server_config`; a file changed since is read next reload.
        let expiries = |path: &std::path::Path| -> Vec<i64> {
            certs(path)
                .map(|chain| chain.iter().filter_map(not_after).collect())
                .unwrap_or_default()
        };
        if let Some((leaf, chain)) = expiries(&self.paths.cert).split_first() {
            self.metrics.certificate_expiry(CertRole::Server, *leaf);
            if let Some(earliest) = chain.iter().min() {
                self.metrics.certificate_expiry(CertRole::Ca, *earliest);
            }
        }
        if let Some(earliest) = expiries(&self.paths.client_ca).into_iter().min() {
            self.metrics
                .certificate_expiry(CertRole::ClientCa, earliest);
        }
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// When a certificate expires (its `notAfter`), in seconds since the Unix epoch.
fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The class of a failed handshake, from the error tokio-rustls returned (a rustls error
/// inside an `io::Error`, or the connection's own I/O error).
fn failure_reason(e: &io::Error) -> TlsFailure {
    use rustls::{CertificateError as Cert, Error};
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => TlsFailure::Closed,
            _ => TlsFailure::Other,
        };
    };
    match tls {
        Error::NoCertificatesPresented => TlsFailure::NoClientCert,
        Error::InvalidCertificate(cert) => match cert {
            Cert::UnknownIssuer => TlsFailure::UnknownCa,
            Cert::Expired
            | Cert::ExpiredContext { .. }
            | Cert::NotValidYet
            | Cert::NotValidYetContext { .. } => TlsFailure::Expired,
            Cert::Revoked => TlsFailure::Revoked,
            // Bad signatures, usages, encodings, unknown revocation status, and whatever
            // rustls adds later (the enum is non-exhaustive).
            _ => TlsFailure::BadCertificate,
        },
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => TlsFailure::ProtocolVersion,
        Error::AlertReceived(_) => TlsFailure::PeerAlert,
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::PeerSentOversizedRecord => TlsFailure::Malformed,
        _ => TlsFailure::Other,
    }
}

/// A TLS connection whose client certificate was verified, with the caller it names.
pub struct VerifiedStream {
    inner: TlsStream<TcpStream>,
    caller: Caller,
    /// Holds one of the server's connection slots until the connection ends.
    _slot: OwnedSemaphorePermit,
    /// Completes when the server stops waiting for this connection to drain.
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl VerifiedStream {
    /// An error once the connection is cut; also registers the task to be woken then.
    fn cut(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.cut.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "shutdown grace period over",
            )
        })
    }
}

impl Connected for VerifiedStream {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for VerifiedStream {
    fn poll_read(
        self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for VerifiedStream {
    fn poll_write(
        self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections, runs each handshake in its own task (bounded by `timeout`), and
/// yields only connections with a verified client certificate that names an identity.
/// At most `max_connections` are open at once (handshakes included): a connection over
/// the cap is closed as soon as it is accepted. Cancelling `cut` cuts every connection
/// yielded.
pub fn incoming(
    listener: TcpListener, tls: Arc<ReloadableTls>, timeout: Duration, max_connections: usize,
    cut: CancellationToken,
) -> mpsc::Receiver<io::Result<VerifiedStream>> {
    let metrics = tls.metrics.clone();
    let slots = Arc::new(Semaphore::new(max_connections));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => break,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%remote, max_connections, "too many open connections; closing");
                drop(tcp);
                continue;
            };
            let acceptor = TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            let cut = cut.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        let reason = failure_reason(&e);
                        metrics.tls_handshake_failure(reason);
                        tracing::warn!(%remote, reason = reason.label(), error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics.tls_handshake_failure(TlsFailure::Timeout);
                        tracing::warn!(%remote, reason = TlsFailure::Timeout.label(), "TLS handshake timed out");
                        return;
                    }
                };
                // Typed by where it came from (`uri:`, `dns:`, `cn:` only without any SAN);
                // a SAN that does not parse is refused, never replaced by the CN.
                let identity = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    Some(leaf) => PeerIdentity::from_certificate(leaf),
                    None => Err(IdentityError::Nameless),
                };
                let identity = match identity {
                    Ok(identity) => identity,
                    Err(e) => {
                        // Verified, but it names no identity the vault accepts.
                        metrics.tls_handshake_failure(TlsFailure::BadCertificate);
                        tracing::warn!(%remote, error = %e, "client certificate refused; closing");
                        return;
                    }
                };
                tracing::debug!(%remote, %identity, "client connected");
                let caller = Caller {
                    identity,
                    remote: Some(remote),
                };
                let stream = VerifiedStream {
                    inner: tls,
                    caller,
                    _slot: slot,
                    cut: Box::pin(cut.cancelled_owned()),
                };
                let _ = tx.send(Ok(stream)).await;
            });
        }
    });
    rx
}
