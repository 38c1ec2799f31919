//! Who is calling: the identity taken from a verified client certificate, typed by where it
//! came from.
//!
//! An identity is `uri:` + the certificate's first URI SAN (a SPIFFE id such as
//! `uri:spiffe://acme/billing`), else `dns:` + its first DNS SAN, else `cn:` + its subject CN,
//! but only when the certificate has no SAN extension at all: a certificate with a SAN is
//! never named by its CN, and one whose SAN extension does not parse is refused. The three
//! kinds share no names, so `CN=spiffe://…` is `cn:spiffe://…`, never the URI identity.
//!
//! The vault's own jobs act as `job:` identities, which `from_certificate` can never
//! produce, and which the policy refuses to name (see `policy`): jobs do not go through it.

use std::fmt;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Where an identity came from; its name in the policy and the audit log is `kind:name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// A URI SAN (SPIFFE id).
    Uri,
    /// A DNS SAN.
    Dns,
    /// The subject CN of a certificate without any SAN.
    Cn,
    /// One of the vault's own jobs; no certificate can carry it.
    Job,
}

impl IdentityKind {
    /// The kinds a certificate may name, in the policy syntax.
    pub const CERTIFICATE: [IdentityKind; 3] =
        [IdentityKind::Uri, IdentityKind::Dns, IdentityKind::Cn];

    pub fn prefix(self) -> &'static str {
        match self {
            IdentityKind::Uri => "uri:",
            IdentityKind::Dns => "dns:",
            IdentityKind::Cn => "cn:",
            IdentityKind::Job => "job:",
        }
    }
}

/// Why a verified certificate names no usable identity. Never says what it contained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate does not parse")]
    Certificate,
    #[error("the client certificate's subject alternative name extension does not parse")]
    SubjectAltName,
    #[error("the client certificate names no identity (no URI or DNS SAN, and no CN)")]
    Nameless,
}

/// The verified identity of a caller, in its typed form (`uri:…`, `dns:…`, `cn:…`, `job:…`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity(Arc<str>);

impl PeerIdentity {
    /// Extracts the identity from a DER certificate (already verified by rustls).
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Certificate)?;
        let san = cert
            .subject_alternative_name()
            .map_err(|_| IdentityError::SubjectAltName)?;
        let Some(san) = san else {
            // No SAN extension at all: the CN names the caller.
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .map(|cn| cn.as_str().map_err(|_| IdentityError::Certificate))
                .transpose()?;
            return Self::typed(IdentityKind::Cn, cn.unwrap_or_default());
        };
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
        if let Some(uri) = uri {
            return Self::typed(IdentityKind::Uri, uri);
        }
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        });
        // A SAN without a URI or DNS name (an IP, an email) names nobody; never the CN.
        Self::typed(IdentityKind::Dns, dns.unwrap_or_default())
    }

    fn typed(kind: IdentityKind, name: &str) -> Result<Self, IdentityError> {
        if name.is_empty() {
            return Err(IdentityError::Nameless);
        }
        Ok(Self(Arc::from(format!("{}{name}", kind.prefix()))))
    }

    /// The identity of one of the vault's own jobs (`job:NAME`): no certificate yields it and
    /// no policy may name it.
    pub fn job(name: &str) -> Self {
        Self(Arc::from(format!("{}{name}", IdentityKind::Job.prefix())))
    }

    /// An identity given directly in its typed form (tests, offline tools), e.g.
    /// `uri:spiffe://acme/billing`; `None` if it has no `uri:`, `dns:` or `cn:` prefix.
    /// A `job:` name is not parsed: only `job` makes a job identity.
    pub fn parse(typed: &str) -> Option<Self> {
        let kind = Self::kind_of(typed).filter(|k| IdentityKind::CERTIFICATE.contains(k))?;
        let name = &typed[kind.prefix().len()..];
        (!name.is_empty()).then(|| Self(Arc::from(typed)))
    }

    /// The kind a typed identity string names, if any.
    pub fn kind_of(typed: &str) -> Option<IdentityKind> {
        [
            IdentityKind::Uri,
            IdentityKind::Dns,
            IdentityKind::Cn,
            IdentityKind::Job,
        ]
        .into_iter()
        .find(|k| typed.starts_with(k.prefix()))
    }

    pub fn kind(&self) -> IdentityKind {
        // Every constructor above gives a prefixed name.
        Self::kind_of(&self.0).unwrap_or(IdentityKind::Job)
    }

    /// Whether this is one of the vault's own jobs.
    pub fn is_job(&self) -> bool {
        self.kind() == IdentityKind::Job
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerIdentity({:?})", self.0)
    }
}

/// What the server knows about a connection, attached to every request on it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: PeerIdentity,
    pub remote: Option<std::net::SocketAddr>,
}
