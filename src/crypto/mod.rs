//! Cryptographic primitives of the vault: secret key types by role, the sealed envelope
//! with its associated data, keyed hashes, checksums. The only module that touches
//! `ring` and `zeroize` (and, in its tests, `aes-gcm`, the implementation used before).
//!
//! Every encryption and decryption goes through one AEAD primitive, `AeadKey` (AES-256-GCM
//! from ring); `Key::seal`, `Key::open`, key wrapping and `aead_seal` / `aead_open` are
//! built on it, under the key's purpose subkey for sealing (`subkey.rs`: every use of a
//! key runs under an HKDF-SHA-256 subkey for that use; keys written before keep their
//! legacy derivation until rotation replaces them).
//!
//! Errors are deliberately opaque: a failed open never says whether the key, the nonce,
//! the context or the ciphertext was wrong.

mod aead;
mod digest;
mod envelope;
mod key;
mod mac;
mod subkey;

/// The single AEAD primitive (AES-256-GCM) under every seal and open in the vault.
pub use aead::{aead_open, aead_seal, AeadKey, NONCE_LEN, TAG_LEN};
pub use digest::{certificate_hash, sha256, CertificateHash, Sha256, SHA256_LEN};
pub use envelope::{
    external_check, external_check_matches, unwrap_external, wrap_external, Aad, ExternalKey,
    Sealed,
};
pub use key::{fill_random, Audit, Dek, Index, Kek, Key, KeyRole, RecordMac, Root, KEY_LEN};
pub use mac::{mac_eq, MAC_LEN};
pub use subkey::{Derivation, Subkey};
pub use zeroize::{Zeroize, Zeroizing};

/// Something cryptographic failed. Deliberately says nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cryptographic operation failed")]
pub struct CryptoError;

/// The crypto provider of every rustls endpoint the vault opens (the gRPC server, its
/// connections to PostgreSQL): rustls over ring, the same primitives as the rest of the
/// vault. Built here, once, so that no TLS setup picks a provider of its own.
pub fn tls_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests;
