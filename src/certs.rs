//! Issues the certificates the vault and its clients use: a CA, server certificates for
//! chosen names, client certificates for chosen identities. The dev default at first start
//! and `pii-vault certs` run the same code.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Something went wrong issuing or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuedCert([private key])")
    }
}

/// A certificate authority that can sign server and client certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority([private key])")
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration, not_before_offset: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before =
        now + time::Duration::seconds(not_before_offset) - time::Duration::minutes(5);
    params.not_after = now
        + time::Duration::seconds(not_before_offset)
        + time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(365));
}

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pii-vault");
    dn.push(DnType::CommonName, cn);
    dn
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// Options for one leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub common_name: String,
    /// DNS names and IP addresses (servers), or DNS names (clients).
    pub names: Vec<String>,
    /// URI SANs, such as a SPIFFE id (clients).
    pub uris: Vec<String>,
    pub usage: Usage,
    pub lifetime: Duration,
    /// Seconds to shift the validity window by (negative: already expired; tests only).
    pub not_before_offset_secs: i64,
}

impl Authority {
    /// A new self-signed CA.
    pub fn generate(common_name: &str, lifetime: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = named(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, lifetime, 0);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// Issues a server or client certificate.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(spec.names.clone())?;
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.clone().try_into()?));
        }
        params.distinguished_name = named(&spec.common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match spec.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, spec.lifetime, spec.not_before_offset_secs);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Paths of the development PKI inside a directory.
#[derive(Clone, Debug)]
pub struct DevPki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Identity of the client certificate the dev default issues.
pub const DEV_CLIENT_ID: &str = "spiffe://pii-vault.local/dev-admin";

impl DevPki {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    /// True when every file exists.
    pub fn exists(&self) -> bool {
        [
            &self.ca_cert,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
        ]
        .iter()
        .all(|p| p.exists())
    }

    /// Creates a CA, a server certificate for localhost and a client certificate.
    pub fn create(&self) -> Result<(), CertError> {
        let year = Duration::from_secs(365 * 24 * 3600);
        let ca = Authority::generate("pii-vault dev CA", year)?;
        let server = ca.issue(&LeafSpec {
            common_name: "localhost".into(),
            names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            uris: vec![],
            usage: Usage::Server,
            lifetime: year,
            not_before_offset_secs: 0,
        })?;
        let client = ca.issue(&LeafSpec {
            common_name: "dev-admin".into(),
            names: vec![],
            uris: vec![DEV_CLIENT_ID.into()],
            usage: Usage::Client,
            lifetime: year,
            not_before_offset_secs: 0,
        })?;
        write_file(&self.ca_cert, ca.cert_pem.as_bytes(), false)?;
        write_file(&self.ca_key, ca.key_pem.as_bytes(), true)?;
        write_file(&self.server_cert, server.cert_pem.as_bytes(), false)?;
        write_file(&self.server_key, server.key_pem.as_bytes(), true)?;
        write_file(&self.client_cert, client.cert_pem.as_bytes(), false)?;
        write_file(&self.client_key, client.key_pem.as_bytes(), true)
    }
}

/// Writes a file, with mode 0600 when it holds a private key.
pub fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(io)
}
