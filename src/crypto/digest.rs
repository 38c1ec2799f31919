//! SHA-256 for checksums of files such as backups. A checksum detects damage, not
//! tampering: anyone can recompute it (tamper evidence needs a key, see `mac`).
//! SHA-384 and SHA-512 only for `certificate_hash`, which TLS channel binding needs.

/// Length of a SHA-256 digest in bytes.
pub const SHA256_LEN: usize = 32;

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; SHA256_LEN] {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finish()
}

/// The hash of a certificate's signature algorithm, as TLS channel binding
/// (`tls-server-end-point`, RFC 5929 section 4.1) computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateHash {
    /// Also for certificates signed with MD5 or SHA-1, as RFC 5929 asks.
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of a DER certificate with `hash`.
pub fn certificate_hash(hash: CertificateHash, der: &[u8]) -> Vec<u8> {
    let algorithm = match hash {
        CertificateHash::Sha256 => &ring::digest::SHA256,
        CertificateHash::Sha384 => &ring::digest::SHA384,
        CertificateHash::Sha512 => &ring::digest::SHA512,
    };
    ring::digest::digest(algorithm, der).as_ref().to_vec()
}

/// SHA-256 over data that arrives in pieces.
pub struct Sha256(ring::digest::Context);

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> [u8; SHA256_LEN] {
        let mut out = [0u8; SHA256_LEN];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(
            hex::encode(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Sha256::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(
            hex::encode(h.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(certificate_hash(CertificateHash::Sha384, b"abc")),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed\
             8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(certificate_hash(CertificateHash::Sha512, b"").len(), 64);
        assert_eq!(
            certificate_hash(CertificateHash::Sha256, b"abc"),
            sha256(b"abc")
        );
    }
}
