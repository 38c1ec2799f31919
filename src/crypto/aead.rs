//! The single AEAD primitive of the vault: AES-256-GCM with a 96-bit nonce and a 128-bit tag,
//! from `ring`.
//!
//! Every ciphertext the vault writes or reads goes through [`AeadKey::seal`] and
//! [`AeadKey::open`]: `Key::seal` and `Key::open` (and so key wrapping) use a prepared
//! `AeadKey` that each `Key` builds once, and [`aead_seal`] / [`aead_open`] prepare one per
//! call over raw bytes, so that known-answer vectors (Wycheproof, in `tests/wycheproof.rs`)
//! and benchmarks exercise exactly the code path the vault uses.
//!
//! Why `ring` and not the `aes-gcm` crate, which the vault used before: measured on the
//! vault's machine (`benches/aead.rs`), ring's AES-GCM is several times faster from 4 KiB up,
//! and with the key schedule prepared once (what the DEK cache keeps) it is also faster at
//! field sizes. Both are standard AES-256-GCM: the bytes on disk are the same, and
//! `crypto::tests` checks that each opens what the other sealed.
//!
//! ring does not clear its key schedules when they are dropped (a deliberate choice of its
//! maintainer, briansmith/ring#15). `AeadKey` keeps the schedule in a box of its own and, on
//! drop, overwrites it in place with the schedule of a public all-zero key, so an evicted or
//! destroyed key leaves no expanded key material behind in the heap. (Copies made on the
//! stack while ring builds the schedule are not reachable from here, as with any library.)

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use super::key::KEY_LEN;
use super::CryptoError;

/// Length of an AES-GCM nonce in the vault: 96 bits.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM authentication tag appended to every ciphertext: 128 bits.
pub const TAG_LEN: usize = 16;

/// A key ready to seal and open: the AES-256 key schedule and GHASH key, computed once.
///
/// No `Clone`; `Debug` prints `[secret]`; the schedule is overwritten on drop.
pub struct AeadKey(Box<LessSafeKey>);

impl AeadKey {
    /// Prepares `key` (expands the AES key schedule and derives the GHASH key).
    pub fn new(key: &[u8; KEY_LEN]) -> Result<Self, CryptoError> {
        Ok(Self(Box::new(ring_key(key)?)))
    }

    /// Encrypts `plaintext` under `nonce`, authenticating `aad` too.
    ///
    /// Returns the ciphertext followed by the 16-byte tag. The caller must never reuse a
    /// `(key, nonce)` pair; the vault draws nonces at random and bounds encryptions per key.
    pub fn seal(
        &self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut out,
            )
            .map_err(|_| CryptoError)?;
        Ok(out)
    }

    /// Checks the tag of `ciphertext_and_tag` under `nonce` and `aad`, and decrypts it.
    ///
    /// Any failure (wrong key, nonce or AAD, a modified byte, input shorter than a tag) gives
    /// the same opaque error. The plaintext is returned in memory that is zeroized on drop.
    pub fn open(
        &self, nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext_and_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut buf = Zeroizing::new(ciphertext_and_tag.to_vec());
        let len = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut buf[..],
            )
            .map_err(|_| CryptoError)?
            .len();
        // The bytes past `len` are the tag, which is public; `Zeroizing` clears them all.
        buf.truncate(len);
        Ok(buf)
    }
}

fn ring_key(key: &[u8; KEY_LEN]) -> Result<LessSafeKey, CryptoError> {
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError)?,
    ))
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        // ring has no zeroization (see the module comment). Assigning writes the new value
        // over the old one in the box's own memory; `black_box` makes the write observable,
        // so the compiler cannot drop it as a dead store before the box is freed.
        if let Ok(public) = ring_key(&[0u8; KEY_LEN]) {
            *self.0 = public;
        }
        std::hint::black_box(&*self.0);
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AeadKey([secret])")
    }
}

/// Encrypts `plaintext` under `key` and `nonce`, authenticating `aad` too: [`AeadKey::seal`]
/// with the key prepared for this one call.
pub fn aead_seal(
    key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    AeadKey::new(key)?.seal(nonce, aad, plaintext)
}

/// Checks and decrypts `ciphertext_and_tag` under `key`, `nonce` and `aad`: [`AeadKey::open`]
/// with the key prepared for this one call.
pub fn aead_open(
    key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext_and_tag: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    AeadKey::new(key)?.open(nonce, aad, ciphertext_and_tag)
}
