//! Issues the certificates the vault and its clients use: a CA, server certificates for
//! chosen names, client certificates for chosen identities. The dev default at first start
//! and `pii-vault certs` run the same code.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
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
    /// An existing CA certificate and key that cannot sign: not a CA, or not a pair.
    #[error("unusable CA: {0}")]
    BadCa(&'static str),
}

/// A certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    /// The certificate in DER, to read back what was issued (e.g. the caller identity).
    pub cert_der: Vec<u8>,
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
    /// End of the CA's validity: a certificate it signs should not outlive it.
    not_after: time::OffsetDateTime,
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
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and key, checking that the certificate is a CA
    /// and that the key is its own (rcgen would otherwise sign certificates nobody can
    /// verify).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|_| CertError::BadCa("the certificate file holds no PEM certificate"))?;
        let cert = pem
            .parse_x509()
            .map_err(|_| CertError::BadCa("the certificate cannot be parsed"))?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CertError::BadCa("the certificate is not a CA certificate"));
        }
        let key = KeyPair::from_pem(key_pem)?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(CertError::BadCa(
                "the private key does not belong to the certificate",
            ));
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            not_after,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> time::OffsetDateTime {
        self.not_after
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
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Authority {
    /// A certificate revocation list (PEM) signed by this CA, numbered `number` (a later list
    /// has a higher number), revoking the certificates `revoked` (DER, as issued), valid for
    /// `lifetime` from now. For `tls.client_crl`.
    pub fn revocation_list(
        &self, revoked: &[&[u8]], number: u64, lifetime: Duration,
    ) -> Result<String, CertError> {
        let now = time::OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .map(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(der)
                    .map_err(|_| CertError::BadCa("a certificate to revoke cannot be parsed"))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(cert.raw_serial()),
                    revocation_time: now,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CertError>>()?;
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now
                + time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(7)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
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

/// Writes a file, with mode 0600 when it holds a private key (also when it replaces an
/// existing file that had a looser mode: the mode given to `open` applies only to new files).
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
    let mut file = opts.open(path).map_err(io)?;
    // Tighten before the first byte is written; the file is empty until then.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn client_spec() -> LeafSpec {
        LeafSpec {
            common_name: "billing".into(),
            names: vec![],
            uris: vec!["spiffe://acme/billing".into()],
            usage: Usage::Client,
            lifetime: DAY,
            not_before_offset_secs: 0,
        }
    }

    #[test]
    fn a_loaded_ca_signs_like_the_original() {
        let ca = Authority::generate("test CA", 10 * DAY).expect("ca");
        let loaded = Authority::from_pem(&ca.cert_pem, &ca.key_pem).expect("load");
        assert_eq!(
            loaded.not_after().unix_timestamp(),
            ca.not_after().unix_timestamp()
        );
        let leaf = loaded.issue(&client_spec()).expect("issue");
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert_der).expect("parse");
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).expect("pem");
        let ca_cert = pem.parse_x509().expect("ca parses");
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the CA key");
    }

    #[test]
    fn a_ca_with_a_foreign_key_or_a_leaf_is_refused() {
        let ca = Authority::generate("test CA", DAY).expect("ca");
        let other = Authority::generate("other CA", DAY).expect("ca");
        let err = Authority::from_pem(&ca.cert_pem, &other.key_pem).expect_err("mismatch");
        assert!(err.to_string().contains("does not belong"), "{err}");
        let leaf = ca.issue(&client_spec()).expect("leaf");
        let err = Authority::from_pem(&leaf.cert_pem, &leaf.key_pem).expect_err("not a CA");
        assert!(err.to_string().contains("not a CA"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600_even_when_replacing_a_looser_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("k.key");
        fs::write(&path, "old").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_file(&path, b"new", true).expect("write_file");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read(&path).expect("read"), b"new");
    }
}
