//! Who is calling: the identity taken from a verified client certificate.
//!
//! The identity is the certificate's first URI SAN (a SPIFFE id such as
//! `spiffe://acme/billing`), else its first DNS SAN, else its subject CN. It is computed
//! once per connection, after rustls has verified the chain.

use std::fmt;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The verified identity of a caller.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity(Arc<str>);

impl PeerIdentity {
    /// Extracts the identity from a DER certificate, or `None` if it names nobody.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let sans = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default();
        let uri = sans.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
        let dns = sans.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        });
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok());
        uri.or(dns)
            .or(cn)
            .filter(|s| !s.is_empty())
            .map(|s| Self(Arc::from(s)))
    }

    /// An identity given directly (tests, offline tools).
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
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
