//! The fixed label values of the vault's labelled series that are not tenant ids or RPC
//! names: each is an enum, so a caller cannot put anything else (a subject id, a message
//! text) into a label.

/// A background key job whose last success and failure are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyJob {
    /// A key epoch (scheduled, or asked for with `RunKeyEpoch`).
    Epoch,
    /// A tenant's subject key re-wrap after a rotation, run to completion.
    Rewrap,
    /// Completing a root key rotation left half-done.
    RootRotation,
}

impl KeyJob {
    pub const ALL: [KeyJob; 3] = [KeyJob::Epoch, KeyJob::Rewrap, KeyJob::RootRotation];

    pub fn label(self) -> &'static str {
        match self {
            KeyJob::Epoch => "key_epoch",
            KeyJob::Rewrap => "rewrap",
            KeyJob::RootRotation => "root_rotation",
        }
    }
}

/// Why a TLS handshake on the gRPC port failed, in as few classes as an operator needs to
/// tell a misconfigured client from a scanner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsFailure {
    /// The client sent no certificate.
    NoClientCert,
    /// The client certificate does not chain to the client CA.
    UnknownCa,
    /// The client certificate is expired or not valid yet.
    Expired,
    /// The client certificate is on a revocation list.
    Revoked,
    /// Any other problem with the client certificate (bad signature, wrong usage, a name
    /// the vault refuses).
    BadCertificate,
    /// No TLS version, cipher suite or protocol (ALPN) in common.
    ProtocolVersion,
    /// The client refused the vault (an alert it sent, e.g. it does not trust the server).
    PeerAlert,
    /// Bytes that are not a TLS handshake (plain HTTP, a port scanner).
    Malformed,
    /// The handshake did not finish within `limits.handshake_timeout_ms`.
    Timeout,
    /// The connection closed or failed before the handshake finished.
    Closed,
    /// Anything else.
    Other,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 11] = [
        TlsFailure::NoClientCert,
        TlsFailure::UnknownCa,
        TlsFailure::Expired,
        TlsFailure::Revoked,
        TlsFailure::BadCertificate,
        TlsFailure::ProtocolVersion,
        TlsFailure::PeerAlert,
        TlsFailure::Malformed,
        TlsFailure::Timeout,
        TlsFailure::Closed,
        TlsFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::NoClientCert => "no_client_cert",
            TlsFailure::UnknownCa => "unknown_ca",
            TlsFailure::Expired => "expired",
            TlsFailure::Revoked => "revoked",
            TlsFailure::BadCertificate => "bad_certificate",
            TlsFailure::ProtocolVersion => "protocol_version",
            TlsFailure::PeerAlert => "peer_alert",
            TlsFailure::Malformed => "malformed",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Closed => "closed",
            TlsFailure::Other => "other",
        }
    }
}

/// A certificate the server loads, whose expiry is exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// The server's own certificate (the leaf of `tls.cert`).
    Server,
    /// The CA certificates of the server's chain (the rest of `tls.cert`), the earliest.
    Ca,
    /// The CA client certificates must chain to (`tls.client_ca`), the earliest if several.
    ClientCa,
}

impl CertRole {
    pub fn label(self) -> &'static str {
        match self {
            CertRole::Server => "server",
            CertRole::Ca => "ca",
            CertRole::ClientCa => "client_ca",
        }
    }
}
