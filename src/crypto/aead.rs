//! The single AEAD primitive of the vault: AES-256-GCM with a 96-bit nonce and a 128-bit tag,
//! from the `aes-gcm` crate.
//!
//! Every ciphertext the vault writes or reads goes through [`aead_seal`] and [`aead_open`]:
//! `Key::seal` and `Key::open` (and so key wrapping) call them and nothing else. Keeping the
//! primitive in two free functions over raw bytes lets known-answer vectors (Wycheproof, in
//! `tests/wycheproof.rs`) and benchmarks exercise exactly the code path the vault uses.
//!
//! These functions know nothing of key roles, versions or envelopes; callers that hold a
//! `Key<R>` should use its methods, which add the vault's context binding on top.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use zeroize::Zeroizing;

use super::key::KEY_LEN;
use super::CryptoError;

/// Length of an AES-GCM nonce in the vault: 96 bits.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM authentication tag appended to every ciphertext: 128 bits.
pub const TAG_LEN: usize = 16;

/// Encrypts `plaintext` under `key` and `nonce`, authenticating `aad` too.
///
/// Returns the ciphertext followed by the 16-byte tag. The caller must never reuse a
/// `(key, nonce)` pair; the vault draws nonces at random and bounds encryptions per key.
pub fn aead_seal(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    // With aes-gcm's `zeroize` feature the expanded key schedule is cleared on drop.
    Aes256Gcm::new(key.into())
        .encrypt(
            nonce.into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError)
}

/// Checks the tag of `ciphertext_and_tag` under `key`, `nonce` and `aad`, and decrypts it.
///
/// Any failure (wrong key, nonce or AAD, a modified byte, input shorter than a tag) gives
/// the same opaque error. The plaintext is returned in memory that is zeroized on drop.
pub fn aead_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    Aes256Gcm::new(key.into())
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext_and_tag,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError)
}
